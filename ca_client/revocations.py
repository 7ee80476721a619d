"""A revocation set that keeps itself current: for a Python server that checks its peers'
certificates in-process instead of asking OCSP on every handshake. It follows the CA's
WatchRevocations stream, resumes after a reconnect from the last event it has (so nothing is
missed), and starts over when the CA says its position is out of range (a restored CA).

    with RevocationSet(identity.channel("ca.internal:50051")) as revoked:
        ...
        if revoked.is_revoked(peer_serial): refuse()
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from dataclasses import dataclass
from typing import Any

import grpc

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .serial import canonical_serial


@dataclass(frozen=True, slots=True)
class Revoked:
    serial: str
    reason: int  # RFC 5280 reason code
    revoked_at: dt.datetime
    not_after: dt.datetime


class RevocationSet:
    def __init__(
        self,
        channel: grpc.Channel,
        *,
        first_retry: float = 0.2,
        max_retry: float = 30.0,
    ) -> None:
        """channel: to the CA's API (mTLS), e.g. Identity.channel(server). Reconnects wait a
        random time up to first_retry, doubling each failure to max_retry (full jitter, so a
        fleet that lost the CA together does not come back together)."""
        self._stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        self._first_retry, self._max_retry = first_retry, max_retry
        self._lock = threading.Condition()
        self._revoked: dict[str, Revoked] = {}
        self._sequence = 0
        self._synced = False
        self._stopping = threading.Event()
        self._call: Any = None  # the open stream, to cancel at stop
        self._thread = threading.Thread(target=self._run, name="signet-revocations", daemon=True)
        self.last_error: grpc.RpcError | None = None

    def start(self, timeout: float = 30.0) -> RevocationSet:
        """Start following, and wait until the set holds everything the CA had at start."""
        self._thread.start()
        with self._lock:
            if not self._lock.wait_for(lambda: self._synced, timeout):
                raise TimeoutError(f"the CA's revocations were not received within {timeout} s")
        return self

    def stop(self) -> None:
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> RevocationSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def sequence(self) -> int:
        """The CA's event number this set is current to."""
        return self._sequence

    def is_revoked(self, serial: str) -> bool:
        key = canonical_serial(serial)
        entry = self._revoked.get(key)
        return entry is not None and entry.not_after > dt.datetime.now(dt.UTC)

    def get(self, serial: str) -> Revoked | None:
        return self._revoked.get(canonical_serial(serial))

    def wait_for(self, sequence: int, timeout: float) -> bool:
        """Wait until the set is current to at least `sequence` (e.g. a revocation's)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._sequence >= sequence, timeout)

    # -- the follower thread -------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._follow()
                failures = 0  # the stream ended cleanly (the server closed it): go on
            except grpc.RpcError as exc:
                if self._stopping.is_set():
                    return
                self.last_error = exc
                if exc.code() is grpc.StatusCode.OUT_OF_RANGE:
                    self._reset()  # the CA is behind us (restored): start over
                    continue
                failures += 1
                ceiling = min(self._max_retry, self._first_retry * 2 ** (failures - 1))
                self._stopping.wait(random.uniform(0, ceiling))

    def _follow(self) -> None:
        request = ca_pb2.WatchRevocationsRequest(since_sequence=self._sequence)
        call = self._stub.WatchRevocations(request)
        self._call = call
        if self._stopping.is_set():
            call.cancel()  # type: ignore[no-untyped-call]
        for message in call:
            self._apply(message)

    def _apply(self, message: ca_pb2.WatchRevocationsResponse) -> None:
        with self._lock:
            for e in message.events:
                if e.kind == ca_pb2.RevocationEvent.REVOKED:
                    self._revoked[e.serial_number] = Revoked(
                        e.serial_number,
                        int(e.reason),
                        e.revoked_at.ToDatetime(dt.UTC),
                        e.not_after.ToDatetime(dt.UTC),
                    )
                else:
                    self._revoked.pop(e.serial_number, None)
                self._sequence = e.sequence
            if not message.events:  # a heartbeat: nothing more up to the head
                self._sequence = max(self._sequence, message.head_sequence)
                self._drop_expired()  # (every 15 s at most, not per event)
            if self._sequence >= message.head_sequence:
                self._synced = True
            self._lock.notify_all()

    def _drop_expired(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for serial in [s for s, r in self._revoked.items() if r.not_after <= now]:
            del self._revoked[serial]

    def _reset(self) -> None:
        with self._lock:
            self._revoked.clear()
            self._sequence = 0
