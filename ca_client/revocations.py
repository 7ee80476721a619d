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
import threading
from dataclasses import dataclass

import grpc

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .follow import StreamFollower
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
        random time up to first_retry, doubling each failure to max_retry (full jitter)."""
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        self._lock = threading.Condition()
        self._revoked: dict[str, Revoked] = {}
        self._sequence = 0
        self._synced = False
        self._follower = StreamFollower(
            "signet-revocations",
            # Resumed from the last event held: nothing missed, nothing sent twice.
            lambda: stub.WatchRevocations(
                ca_pb2.WatchRevocationsRequest(since_sequence=self._sequence)
            ),
            self._apply,
            on_error=self._out_of_range,
            first_retry=first_retry,
            max_retry=max_retry,
        )

    @property
    def last_error(self) -> grpc.RpcError | None:
        return self._follower.last_error

    def start(self, timeout: float = 30.0) -> RevocationSet:
        """Start following, and wait until the set holds everything the CA had at start."""
        self._follower.start()
        with self._lock:
            if not self._lock.wait_for(lambda: self._synced, timeout):
                raise TimeoutError(f"the CA's revocations were not received within {timeout} s")
        return self

    def stop(self) -> None:
        self._follower.stop()

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

    def _out_of_range(self, exc: grpc.RpcError) -> bool:
        """The CA is behind us (restored from a backup): start over, at once."""
        if exc.code() is not grpc.StatusCode.OUT_OF_RANGE:
            return False
        with self._lock:
            self._revoked.clear()
            self._sequence = 0
        return True

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
