"""A JSON log formatter (``LOG_FORMAT=json``): one object per line, for log shippers that index fields.

Each record becomes ``{"time", "level", "logger", "message"}`` plus ``exception`` when there is a traceback, so a
multi-line traceback still stays on one line. The plain-text format remains the default for people reading a terminal.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
