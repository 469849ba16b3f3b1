"""Logging set-up, the same in every process (the engine and its front-ends): text lines or JSON objects, one
per record, through the root logger (uvicorn's own loggers included)."""

from __future__ import annotations

import functools
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
        entry = _json_entry(
            record.created, int(record.msecs), record.levelname, record.name, record.getMessage()
        )
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _json_entry(created: float, msecs: int, level: str, name: str, message: str) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z",
        "level": level,
        "logger": name,
        "message": message,
    }


def configure_logging(level: str, fmt: str = "text") -> None:
    # Neither format reads where a record was made (file, line, function) nor which thread or process made it:
    # not looking those up (the logging HOWTO's own switches) makes a record ~30% cheaper, and the access log
    # makes one a request (25 -> 17 µs a line on a 2-core VM).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _installed[:] = [(handler, fmt == "json")]


# The handler configure_logging installed, and whether it writes JSON: what `log_access` writes to directly.
_installed: list[tuple[logging.StreamHandler[Any], bool]] = []


def log_access(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """The access log's line for a request, at INFO: `message`, and `fields` in a JSON line. Where the record
    would reach nothing but the handler `configure_logging` installed (no handler, filter or level set on the
    way since), the line is formatted here, exactly as that handler would, and written to its stream: through
    `logging` (a LogRecord, the logger's and the handler's calls, the formatter) the line cost a front-end ~30
    µs of CPU a request under load, a fifth of its work for a 16-token text on a 2-core VM, and 16-27 µs this
    way. Otherwise the line goes through `logging`, so whatever was added sees it as before; so does a line
    whose write fails, which `logging` reports without failing the request."""
    direct = _direct(logger)
    if direct is None:
        logger.info("%s", message, extra=fields)
        return
    handler, as_json = direct
    now = time.time_ns()
    created, msecs = now / 1e9, (now % 1_000_000_000) // 1_000_000
    if as_json:
        entry = _json_entry(created, msecs, "INFO", logger.name, message) | fields
        line = json.dumps(entry, default=str)
    else:
        asctime = f"{_local_second(int(created))},{msecs:03d}"  # logging.Formatter's default, to the ms
        line = FORMAT % {"asctime": asctime, "levelname": "INFO", "name": logger.name, "message": message}
    try:
        with handler.lock:  # type: ignore[union-attr]  # an RLock once the handler exists
            handler.stream.write(line + handler.terminator)
            handler.stream.flush()
    except Exception:
        logger.info("%s", message, extra=fields)


def _direct(logger: logging.Logger) -> tuple[logging.StreamHandler[Any], bool] | None:
    """The installed handler, when an INFO record of `logger` would reach it and nothing else."""
    if not _installed or not logger.isEnabledFor(logging.INFO):
        return None
    handler, as_json = _installed[0]
    root = logging.root
    if root.handlers != [handler] or root.filters or handler.filters or handler.level > logging.INFO:
        return None
    node: logging.Logger | None = logger
    while node is not None and node is not root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    return handler, as_json


@functools.lru_cache(maxsize=4)
def _local_second(second: int) -> str:
    """logging.Formatter's asctime to the second (its default converter is local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


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
