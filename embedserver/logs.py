"""Logging set-up, the same in every process (the engine and its front-ends): text lines or JSON objects, one
per record, through the root logger (uvicorn's own loggers included)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=` and goes into the JSON.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the fields passed as `extra`, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    # Neither format reads where a record was made (file, line, function) nor which thread or process made it:
    # not looking those up (the logging HOWTO's own switches) makes a record ~30% cheaper, and the access log
    # makes one a request (25 -> 17 µs a line on a 2-core VM).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class EveryFewSeconds:
    """A warning at most once per `interval` seconds per kind, counting what it held back: a flood of 429s or
    departed clients is one line every few seconds, not one per request."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._held: dict[str, tuple[float, int]] = {}  # kind -> (last line's time, events since)

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last, count = self._held.get(kind, (float("-inf"), 0))
        if now - last < self.interval:
            self._held[kind] = (last, count + 1)
            return
        self._held[kind] = (now, 0)
        suffix = f" ({count} more since the last such line)" if count else ""
        self.logger.warning("%s%s", message, suffix)
