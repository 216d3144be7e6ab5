"""Log lines as JSON (one object a line) or plain text, for sip-router and uvicorn alike.

Structured fields travel in `extra={"fields": {...}}`. Control characters are escaped in
both formats so a caller-supplied value cannot forge or split log lines; in text, a value
with a space, `=`, a quote, a backslash or a control character is written in quotes
(logfmt), so `detail="a b=c"` cannot pass for two fields.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A text value is quoted when it holds any of these, or is empty.
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


def escape_controls(text: str) -> str:
    """`\\x1b`, `\\n`... instead of the raw characters."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def text_value(value: object) -> str:
    """One logfmt value: bare when safe, else in quotes with `\\`, `"` and controls escaped."""
    text = str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    inner = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escape_controls(inner)}"'


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 controls; ensure_ascii escapes the rest that could mislead.
        return json.dumps(entry, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        parts = [f"{when} {record.levelname.lower():7} {record.name}: {record.getMessage()}"]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(
                f"{key}={text_value(value)}" for key, value in fields.items() if value is not None
            )
        line = escape_controls(" ".join(parts))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A dictConfig for the root, sip-router's and uvicorn's loggers in one format."""
    formatter = "json" if log_format == "json" else "text"
    handler = {
        "class": "logging.StreamHandler",
        "formatter": formatter,
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"()": TextFormatter},
        },
        "handlers": {"default": handler},
        "loggers": {
            "sip_router": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            # One line per webhook comes from sip-router itself; access lines would repeat it.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def configure_logging(log_format: str, level: str) -> None:
    """Apply `logging_config` (called by the CLI and the ASGI factory, never at import)."""
    logging.config.dictConfig(logging_config(log_format, level))
