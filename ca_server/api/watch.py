"""Server-streaming RPCs in a thread-per-call server: each open stream holds a thread, so their
number per process is capped, and a stream whose reader stops taking messages (its HTTP/2
window full, the send blocked) is cut off rather than holding its thread for ever."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import structlog

from ..core.errors import ErrorReason, LimitExceeded

log = structlog.get_logger("signet.watch")


class _Stream:
    __slots__ = ("context", "sending_since", "stalled")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.sending_since: float | None = None
        self.stalled = False


class WatchGovernor:
    def __init__(self, limit: int, stall_timeout: float) -> None:
        self._limit = limit
        self._stall = stall_timeout
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._watchdog: threading.Thread | None = None
        self.cut_off = 0  # streams cancelled for a stalled reader, since start

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @contextlib.contextmanager
    def stream(self, context: grpc.ServicerContext) -> Iterator[_Stream]:
        with self._lock:
            if len(self._streams) >= self._limit:
                raise LimitExceeded(
                    f"this server process already serves {self._limit} watch streams "
                    "(max_watchers); retry shortly or on another replica",
                    reason=ErrorReason.WATCHERS_EXHAUSTED,
                    retry_after=5,
                )
            stream = _Stream(context)
            self._streams.add(stream)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="watch-stalls", daemon=True
                )
                self._watchdog.start()
        try:
            yield stream
        finally:
            with self._lock:
                self._streams.discard(stream)

    @staticmethod
    def sending(stream: _Stream) -> None:
        stream.sending_since = time.monotonic()

    @staticmethod
    def sent(stream: _Stream) -> None:
        stream.sending_since = None

    def _watch(self) -> None:
        """Cancel streams whose current message has waited longer than the stall timeout.
        (grpcio sends a streamed message and waits for it to be taken before asking for the
        next, so a send that does not finish is a reader that does not read.)"""
        while True:
            time.sleep(min(1.0, self._stall / 4))
            now = time.monotonic()
            with self._lock:
                stalled = [
                    s
                    for s in self._streams
                    if not s.stalled
                    and s.sending_since is not None
                    and now - s.sending_since > self._stall
                ]
            for s in stalled:
                s.stalled = True
                self.cut_off += 1
                log.warning("watch_reader_stalled", peer=s.context.peer(), seconds=self._stall)
                s.context.cancel()  # type: ignore[no-untyped-call]
