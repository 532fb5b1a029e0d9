"""The password policy: applied wherever a password is chosen (register, change, reset).

Length (8-128 characters) is checked by the request schemas; this adds what a schema cannot
know: the list of common passwords shipped with the project, and the account's own names.
"""

from functools import lru_cache
from pathlib import Path

from exceptions import WeakPasswordError

COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "common-passwords.txt"


def _normalized(text: str) -> str:
    return text.strip().casefold()


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords, normalized (see the file's header for its source)."""
    with COMMON_PASSWORDS_FILE.open(encoding="utf-8") as lines:
        return frozenset(
            _normalized(line) for line in lines if line.strip() and not line.startswith("#")
        )


def check_password(password: str, *, username: str, email: str, field: str) -> None:
    """Refuse a password anyone could guess first.

    Raises:
        WeakPasswordError: (422 `weak_password`, naming `field`) for a password among the
            most common ones, or equal to the username or e-mail address, in any case.
    """
    candidate = _normalized(password)
    if candidate in common_passwords():
        raise WeakPasswordError(field, "is one of the 10,000 most common passwords")
    if candidate in (_normalized(username), _normalized(email)):
        raise WeakPasswordError(field, "must not be the username or the e-mail address")
