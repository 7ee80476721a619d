"""Following one of the CA's watch streams for ever: reconnect after a lost stream with
full-jitter backoff (so a fleet that lost the CA together does not come back together), and
stop cleanly. RevocationSet and TrustBundle are built on it."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grpc


class StreamFollower:
    def __init__(
        self,
        name: str,
        open_stream: Callable[[], Any],
        on_message: Callable[[Any], None],
        *,
        on_error: Callable[[grpc.RpcError], bool] | None = None,
        first_retry: float = 0.2,
        max_retry: float = 30.0,
    ) -> None:
        """open_stream(): a new call (a grpc iterator with cancel()); on_message(m) for each
        message; on_error(e) -> True when the error is handled and the stream should be
        opened again at once (e.g. OUT_OF_RANGE after a reset), False to back off."""
        self._open = open_stream
        self._on_message = on_message
        self._on_error = on_error or (lambda exc: False)
        self._first_retry, self._max_retry = first_retry, max_retry
        self._stopping = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.last_error: grpc.RpcError | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                call = self._open()
                self._call = call
                if self._stopping.is_set():
                    call.cancel()
                for message in self._messages(call):
                    self._on_message(message)
                failures = 0  # the stream ended cleanly (the server closed it): go on
            except grpc.RpcError as exc:
                if self._stopping.is_set():
                    return
                self.last_error = exc
                if self._on_error(exc):
                    continue
                failures += 1
                ceiling = min(self._max_retry, self._first_retry * 2 ** (failures - 1))
                self._stopping.wait(random.uniform(0, ceiling))

    @staticmethod
    def _messages(call: Iterable[Any]) -> Iterable[Any]:
        return call
