"""LOG_FORMAT=json: every record is one JSON object on one line, tracebacks included."""

from __future__ import annotations

import json
import logging

from cutemarkets.logging import JsonFormatter


def record(message: str, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("streaming.gateway.consumer", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_record_is_one_json_object_with_time_level_logger_and_message():
    line = JsonFormatter().format(record("stream closed user=%s code=%s", 7, 1001))
    entry = json.loads(line)
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"]) == ("WARNING", "streaming.gateway.consumer")
    assert entry["message"] == "stream closed user=7 code=1001"
    assert entry["time"].endswith("+00:00")


def test_a_traceback_stays_on_the_same_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as error:
        line = JsonFormatter().format(record("failed", exc_info=(type(error), error, error.__traceback__)))
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]
