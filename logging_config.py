"""Logging: configured once with dictConfig; every record carries the request id and user id.

A record is one line in the text format whatever a client sent: control characters in the
message and in exception messages are escaped (JSON escapes them by itself). The log file is
readable by its owner only.
"""

import copy
import json
import logging
import logging.config
import logging.handlers
import os
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from config import Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# The request's mutable state (scope["state"]): the user id is stored there once the token is
# checked, possibly in a worker thread whose context changes never flow back, so records read it
# from the shared dict rather than from a context variable.
request_state_var: ContextVar[dict[str, Any] | None] = ContextVar("request_state", default=None)

# uvicorn adds `color_message` (the message with terminal colour codes) to its records.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class RequestContextFilter(logging.Filter):
    """Stamp each record with the request it was logged under (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        state = request_state_var.get() or {}
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get() or state.get("request_id")
        if getattr(record, "user_id", None) is None:
            record.user_id = state.get("user_id")
        return True


# C0 controls, DEL, C1 controls (NEL among them) and the Unicode line and paragraph separators:
# every character a terminal or a line-based log reader could take for a line break or a command.
_CONTROL_CHARACTERS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {
    code: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
        chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )
    for code in _CONTROL_CHARACTERS
}
# Formatted by the text formatter itself, from trusted code: their line breaks are real.
_MULTILINE_FIELDS = {"exc_text", "stack_info"}


_HAS_CONTROL_CHARACTER = re.compile(
    "[" + "".join(re.escape(chr(code)) for code in _CONTROL_CHARACTERS) + "]"
)


def escape_control_characters(text: str) -> str:
    """`text` on one line: each control character written as a visible escape (`\\n`, `\\x1b`)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The human-readable format, in which no client-supplied value can start a line.

    The message (with its arguments: paths, headers, anything a client sent) and every other
    text field are escaped; a traceback keeps its own lines, but the messages of the exceptions
    in it are escaped too, since they may quote client input.
    """

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info and not record.stack_info and not _needs_escaping(record):
            # The common case (an access line): nothing to escape, no copy needed.
            return super().format(record)
        safe = copy.copy(record)
        safe.msg, safe.args = escape_control_characters(record.getMessage()), None
        for name, value in vars(record).items():
            if isinstance(value, str) and name not in _MULTILINE_FIELDS and name != "msg":
                setattr(safe, name, escape_control_characters(value))
        # Never the traceback another formatter cached on the record: it is not escaped.
        safe.exc_text = self.formatException(record.exc_info) if record.exc_info else None
        return super().format(safe)

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        for message in _exception_messages(ei[1]):
            text = text.replace(message, escape_control_characters(message))
        return text


def _needs_escaping(record: logging.LogRecord) -> bool:
    if _HAS_CONTROL_CHARACTER.search(record.getMessage()):
        return True
    return any(
        isinstance(value, str) and _HAS_CONTROL_CHARACTER.search(value)
        for name, value in vars(record).items()
        if name != "msg"
    )


def _exception_messages(error: BaseException | None) -> list[str]:
    """The messages and notes of an exception, its causes, contexts and group members."""
    messages: list[str] = []
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        try:
            text = str(current)
        except Exception:
            text = ""
        notes = getattr(current, "__notes__", None)
        candidates = [text, *(n for n in notes if isinstance(n, str))] if notes else [text]
        messages.extend(c for c in candidates if escape_control_characters(c) != c)
        pending.extend([current.__cause__, current.__context__])
        pending.extend(getattr(current, "exceptions", ()))
    # Longest first: a message that contains another is escaped whole.
    return sorted(messages, key=len, reverse=True)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotated log file readable and writable by its owner only (0600), old files too.

    Rotation renames the file, so rotated files keep the mode; a file left by an earlier
    release with wider permissions is narrowed when opened.
    """

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)
            return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields the caller attached."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "user_id": getattr(record, "user_id", None),
        }
        payload.update(
            {key: value for key, value in record.__dict__.items() if key not in _RESERVED}
        )
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str)


def logging_config(settings: Settings) -> dict[str, Any]:
    """The dictConfig for these settings: one stderr handler, plus a rotated file if LOG_FILE."""
    handlers: dict[str, dict[str, Any]] = {
        "default": {
            "class": "logging.StreamHandler",
            "formatter": settings.log_format,
            "filters": ["request_context"],
        },
    }
    if settings.log_file is not None:
        handlers["file"] = {
            "()": PrivateRotatingFileHandler,
            "filename": str(settings.log_file),
            "maxBytes": settings.log_file_max_bytes,
            "backupCount": settings.log_file_backup_count,
            "encoding": "utf-8",
            "delay": True,
            "formatter": settings.log_format,
            "filters": ["request_context"],
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_context": {"()": RequestContextFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {
                "()": TextFormatter,
                "fmt": "%(asctime)s %(levelname)-8s %(name)s [%(request_id)s] %(message)s",
            },
        },
        "handlers": handlers,
        "root": {"level": settings.log_level, "handlers": list(handlers)},
        "loggers": {
            # uvicorn's own access line would duplicate ours; its errors still propagate.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
            # Statement logging costs a third of throughput and can leak data: never on.
            "sqlalchemy.engine": {"level": "WARNING"},
        },
    }


def configure_logging(settings: Settings) -> None:
    """Install the root handlers in the configured format and level (stderr, optional file)."""
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    logging.config.dictConfig(logging_config(settings))
