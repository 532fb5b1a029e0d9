"""Logging: configured once with dictConfig; every record carries the request id and user id."""

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from config import Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
user_id_var: ContextVar[int | None] = ContextVar("user_id", default=None)
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
            record.user_id = user_id_var.get() or state.get("user_id")
        return True


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
            "class": "logging.handlers.RotatingFileHandler",
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
                "format": "%(asctime)s %(levelname)-8s %(name)s [%(request_id)s] %(message)s",
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
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
    logging.config.dictConfig(logging_config(settings))
