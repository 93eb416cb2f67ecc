"""Process logging: ``text`` or ``json`` lines, written by a background thread.

Log calls on the serving loop only put the record on a queue; a listener thread formats
and writes it, so a slow terminal or file never stalls the relay.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# attributes every LogRecord has; anything else was passed in ``extra`` and is logged
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with ``extra`` fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [f"{k}={v}" for k, v in record.__dict__.items()
                 if k not in _STANDARD and not k.startswith("_") and v not in (None, "")]
        return f"{text} {' '.join(extra)}" if extra else text


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {LOG_FORMATS}, got {log_format!r}")
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" \
        else TextFormatter(TEXT_FORMAT)
    formatter.converter = time.gmtime
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=False)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    listener.start()
    atexit.register(listener.stop)
