"""Entity tags (RFC 9110 §8.8.3) and how request preconditions compare them (§13.1).

Pure functions, no FastAPI: services use them for the bulk `if_match`, routes for headers.
"""

import hashlib
import re
from datetime import date, datetime
from typing import Protocol

# One entity tag in a list: an optional weakness prefix and a quoted opaque part.
_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


def digest(*parts: object) -> str:
    """A short, stable digest of the parts (not a secret: an opaque name)."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Versioned(Protocol):
    """What a task's tag is made of: an ORM `Task` and its answer (`TaskRead`) both have it."""

    @property
    def id(self) -> int: ...

    @property
    def created_at(self) -> datetime: ...

    @property
    def version(self) -> int: ...


def task_etag(task: Versioned) -> str:
    """The strong tag of a task: changes exactly when its version does.

    The creation time is part of it, so a new task that ever got the id of a deleted one
    never shares a tag with it.
    """
    return f'"{digest("task", task.id, task.created_at.isoformat(), task.version)}"'


def file_etag(sha256: str) -> str:
    """A file's strong tag: its content hash."""
    return f'"{sha256}"'


def collection_etag(
    *, kind: str, user_id: int, counter: int, query_string: bytes, today: date
) -> str:
    """The weak tag of a list or summary of one user's tasks.

    It changes when any of the user's tasks or tags change (the counter), between query
    strings, and with the UTC date (`overdue` filters and counts move at midnight).
    """
    return f'W/"{digest(kind, user_id, counter, query_string.hex(), today.isoformat())}"'


def _listed(header: str) -> list[tuple[bool, str]]:
    """The (weak, opaque) pairs of an If-Match / If-None-Match list; unparseable parts are skipped."""
    tags = []
    position = 0
    while position < len(header):
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            # Skip to the next element: a malformed one matches nothing.
            comma = header.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def _opaque(etag: str) -> tuple[bool, str]:
    weak = etag.startswith("W/")
    return weak, etag.removeprefix("W/").strip('"')


def strong_match(header: str, current: str) -> bool:
    """If-Match: any listed tag equal to `current` by strong comparison, or `*`."""
    if header.strip() == "*":
        return True
    current_weak, current_opaque = _opaque(current)
    if current_weak:
        return False
    return any(not weak and opaque == current_opaque for weak, opaque in _listed(header))


def weak_match(header: str, current: str) -> bool:
    """If-None-Match: any listed tag equal to `current` by weak comparison, or `*`."""
    if header.strip() == "*":
        return True
    _, current_opaque = _opaque(current)
    return any(opaque == current_opaque for _, opaque in _listed(header))
