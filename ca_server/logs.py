"""structlog set-up: JSON lines in production, readable console output on a terminal.

JSON lines are rendered by orjson and gathered in memory; a small thread writes them out every
FLUSH_INTERVAL seconds (at once for warnings and errors) in whole-line chunks of at most
PIPE_BUF, so that workers sharing one stderr pipe never interleave: one write(2) per RPC to a
pipe was ~15% of a cheap RPC's cost. Nothing is lost at exit (flushed by atexit)."""

from __future__ import annotations

import atexit
import io
import logging
import os
import select
import sys
import threading
import time
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FLUSH_INTERVAL = 0.1
BUFFER_MAX = 64 * 1024  # flushed early when this much is waiting


class BufferedLineLogger:
    """A structlog logger that gathers rendered lines and writes them to a file descriptor in
    chunks of whole lines of at most PIPE_BUF bytes: several workers share one stderr pipe, and
    only writes that small are never interleaved with another process's."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pid = os.getpid()
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message + b"\n")
            self._size += len(message) + 1
            full = self._size >= BUFFER_MAX
        if full:
            self.flush()

    def urgent(self, message: bytes) -> None:
        self.msg(message)
        self.flush()

    debug = info = log = msg
    warn = warning = err = error = critical = exception = fatal = urgent

    def flush(self) -> None:
        # Never in a forked child: the parent's flusher thread may have held the lock at the
        # moment of fork(), and then it stays held here for ever.
        if os.getpid() != self._pid:
            return
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        chunk = b""
        for line in lines:
            if chunk and len(chunk) + len(line) > select.PIPE_BUF:
                self._write(chunk)
                chunk = b""
            chunk += line
        if chunk:
            self._write(chunk)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except InterruptedError:
                continue
            except OSError:  # a closed pipe or a full disk: logging must not stop the CA
                return


class _Factory:
    def __init__(self, logger: BufferedLineLogger) -> None:
        self._logger = logger

    def __call__(self, *args: Any) -> BufferedLineLogger:
        return self._logger


_flusher: threading.Thread | None = None
_current: BufferedLineLogger | None = None


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_INTERVAL)
        if _current is not None:
            _current.flush()


def flush_logs() -> None:
    if _current is not None:
        _current.flush()


atexit.register(flush_logs)


def _descriptor(stream: TextIO) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    stream.flush()
    return fd


def configure_logging(
    level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Call again in a forked worker: the flusher thread does not survive fork()."""
    global _current, _flusher
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    binary = _descriptor(stream) if json else None
    pid = os.getpid()  # which worker said it (configure again after fork)

    def add_pid(_: Any, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        event["pid"] = pid
        return event

    common: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_pid,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    factory: Any
    if binary is not None:
        flush_logs()
        _current = BufferedLineLogger(binary)
        factory = _Factory(_current)
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(
            serializer=orjson.dumps
        )
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(target=_flush_forever, name="log-flush", daemon=True)
            _flusher.start()
    else:
        renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=[*common, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
