"""Structured logs: one JSON object per line, to stdout and ``<log_dir>/<service>.log``.

Ids that apply to everything a task logs (jobId, jobType, attempt, workerId) are bound
once in a context variable with :func:`bound` and added to every line.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None)
_service = "jobqueue"


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written in this context (task) until exit."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": _service,
            "event": record.getMessage(),
            "logger": record.name,
        }
        line.update(_context.get() or {})
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


class Log:
    """A thin logger that takes fields as keyword arguments: ``log.info("job.done", ms=3)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log(logging.CRITICAL, event, True, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, True, fields)


def get_log(name: str) -> Log:
    return Log(name)


class _ContextQueueHandler(logging.handlers.QueueHandler):
    """Queues records for the writer thread with the caller's bound fields attached
    (the thread does not see the caller's context variables)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.fields = {**(_context.get() or {}), **getattr(record, "fields", {})}
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def flush_logs() -> None:
    """Write out every queued record (before an exit that skips atexit, ``os._exit``)."""
    if _listener is not None:
        _listener.stop()
        _listener.start()


def setup_logging(service: str, log_dir: Path, level: str = "INFO") -> None:
    """Send every record, ours and our libraries', as JSON lines to stdout and a rotated
    file named after the service.

    NOTE: records are formatted and written by a thread behind a queue, so a slow disk
    or a full pipe never stalls the event loop."""
    global _service, _listener
    _service = service
    formatter = JsonFormatter()
    log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        log_dir / f"{service}.log", maxBytes=20 * 1024 * 1024, backupCount=5, encoding="utf-8")
    stream_handler = logging.StreamHandler(sys.stdout)
    for handler in (file_handler, stream_handler):
        handler.setFormatter(formatter)
    if _listener is not None:
        _listener.stop()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, file_handler, stream_handler)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(_ContextQueueHandler(records))
    root.setLevel(level.upper())
    for noisy in ("pymongo", "httpx", "httpcore", "apscheduler", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
