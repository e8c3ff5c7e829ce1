"""The server's log: one JSON object (or text line) per record, tagged with the call it
belongs to.

Records carry `time`, `level`, `logger` and `message`; while a call is being handled also its
`request_id` and `method`; and any fields passed as `extra={"fields": {...}}`. Log messages
name codes, counts and IDs, never request contents; an exception is logged as its type and the
code lines of its traceback, never its message, which may quote data.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(call)s %(message)s%(field_text)s"


@dataclass(frozen=True)
class CallContext:
    request_id: str
    method: str  # e.g. "Upload"


# The call the current thread is handling, if any.
current_call: ContextVar[CallContext | None] = ContextVar("current_call", default=None)


class CallContextFilter(logging.Filter):
    """Adds the current call's request ID and method to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = current_call.get()
        record.request_id = call.request_id if call else ""
        record.method = call.method if call else ""
        record.call = f" [{call.request_id} {call.method}]" if call else ""
        fields = getattr(record, "fields", None) or {}
        record.field_text = "".join(f" {k}={v}" for k, v in fields.items())
        return True


def exception_summary(exc_info: Any) -> tuple[str, str]:
    """An exception's type name and its traceback's frames (code lines, no values)."""
    kind, _, tb = exc_info
    return kind.__name__, "".join(traceback.format_tb(tb))


class TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        error, stack = exception_summary(ei)
        return f"{stack}{error}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "method"):
            if getattr(record, name, ""):
                document[name] = getattr(record, name)
        document.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            document["error"], document["stack"] = exception_summary(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(log_format: str, level: str) -> None:
    """Send every record to stderr in `log_format` ("json" or "text") from `level` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
