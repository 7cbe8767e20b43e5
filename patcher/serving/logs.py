"""`patcher serve`'s logs: one JSON object per line on stderr (what log shippers parse), or plain text.

  {"ts": "2026-11-28T09:14:03.512Z", "level": "INFO", "logger": "patcher.serving.requests",
   "msg": "POST /predict 200 12.4 ms", "route": "/predict", "status": 200, "ms": 12.4, "inputs": 3, ...}

Fields given with `extra=` become fields of the object; the standard LogRecord attributes do not.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

FORMATS = ("json", "text")
LOGGERS = ("patcher", "uvicorn")      # ours, and the server's own lines (startup, errors): one format on stderr
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# what every record has; anything else on a record came from `extra=`
STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """A record -> one line of JSON: ts (RFC 3339, UTC), level, logger, msg, the record's extras, and the
    traceback as `exc` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in STANDARD and not key.startswith("_"):
                line.setdefault(key, value)       # an extra never overwrites the four fields above
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)       # escapes newlines: one record, one line


def configure(log_format: str = "json", level: int = logging.INFO, stream=None) -> logging.Handler:
    """Sends the `patcher.*` and `uvicorn.*` loggers to `stream` (stderr) in `log_format`, alone: no duplicate
    through a handler some library put on the root logger. For a process that serves; -> the handler."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return handler
