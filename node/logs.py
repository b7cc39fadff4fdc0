"""How a serving node writes its log: plain lines for people, JSON lines for machines.

``--log-format json`` gives one JSON object per line with ``time`` (UTC, ISO
8601), ``level``, ``logger`` and ``message``, plus the structured fields named
in :data:`FIELDS` when a log call supplies them (``log.info(..., extra={...})``).
Only those names are copied: an attribute that happens to ride on a log record
can never carry a record value into the log. The messages themselves are the
ones the text format prints, which by design hold query shapes (kinds, column
names, the public categories or bounds asked about) and never a record value.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Structured fields a log line may carry, in the order they are written.
FIELDS = (
    "event",
    "node_id",
    "address",
    "health_address",
    "hub",
    "query_id",
    "session_id",
    "identity",
    "fingerprint",
    "verified",
    "kind",
    "outcome",
    "charge",
    "duration_ms",
    "reference",
    "dataset_version",
    "records",
    "clients",
)


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback, if any, goes in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format: str, verbose: bool, stream: TextIO | None = None) -> None:
    """Route every log line through one handler in the chosen format (replacing any)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
    )


class Announcer:
    """The lines ``serve`` prints on stdout (serving on ..., reloaded, stopping, stopped).

    In text form they are plain sentences, as scripts that wait for "serving on
    ADDRESS" expect; in JSON form each is an object whose ``message`` is that
    same sentence, so every line of a JSON-logging node is JSON and the same
    scripts still work.
    """

    def __init__(self, log_format: str, stream: TextIO | None = None) -> None:
        self._json = log_format == "json"
        self._stream = stream
        self._formatter = JsonFormatter()

    def __call__(self, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
        stream = self._stream or sys.stdout
        if self._json:
            record = logging.LogRecord("tiaki.node.serve", level, __file__, 0, message, None, None)
            for name, value in fields.items():
                if name not in FIELDS:
                    raise ValueError(f"{name!r} is not a structured log field")
                setattr(record, name, value)
            stream.write(self._formatter.format(record) + "\n")
        else:
            stream.write(message + "\n")
        stream.flush()
