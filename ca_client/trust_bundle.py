"""The CA's trust bundle, kept current by WatchTrustBundle: for a Python relying party that
builds its own TLS contexts and must trust every root the CA publishes (the union during a
root rollover) and chain through its current intermediates.

    bundle = TrustBundle(identity.channel("ca.internal:50051")).start()
    bundle.on_change.append(lambda b: rebuild_contexts(b.roots_pem))
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
from cryptography import x509

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from .follow import StreamFollower


class TrustBundle:
    def __init__(
        self, channel: grpc.Channel, *, first_retry: float = 0.2, max_retry: float = 30.0
    ) -> None:
        """channel: to the CA's API (mTLS), e.g. Identity.channel(server)."""
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        self._changed = threading.Condition()
        self._message: ca_pb2.GetTrustBundleResponse | None = None
        self.changes = 0  # bundles received after the first
        # Called with this object after each change (not for the first bundle), on the
        # follower's thread: keep them short.
        self.on_change: list[Callable[[TrustBundle], None]] = []
        self._follower = StreamFollower(
            "signet-trust-bundle",
            lambda: stub.WatchTrustBundle(ca_pb2.WatchTrustBundleRequest()),
            self._apply,
            first_retry=first_retry,
            max_retry=max_retry,
        )

    @property
    def last_error(self) -> grpc.RpcError | None:
        return self._follower.last_error

    def start(self, timeout: float = 30.0) -> TrustBundle:
        """Start following, and wait for the CA's current bundle."""
        self._follower.start()
        with self._changed:
            if not self._changed.wait_for(lambda: self._message is not None, timeout):
                raise TimeoutError(f"the CA's trust bundle was not received within {timeout} s")
        return self

    def stop(self) -> None:
        self._follower.stop()

    def __enter__(self) -> TrustBundle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def roots_pem(self) -> str:
        """Every root the CA publishes, PEM: what a relying party trusts."""
        return self._current().root_certificates_pem

    @property
    def intermediates_pem(self) -> str:
        return self._current().intermediate_certificates_pem

    @property
    def spiffe_bundle_json(self) -> str:
        return self._current().spiffe_bundle_json

    @property
    def roots(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.roots_pem.encode())

    def wait_for_change(self, changes: int, timeout: float) -> bool:
        """Wait until at least `changes` bundles have come after the first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.changes >= changes, timeout)

    def _current(self) -> ca_pb2.GetTrustBundleResponse:
        message = self._message
        if message is None:
            raise RuntimeError("no trust bundle yet: call start() first")
        return message

    def _apply(self, message: ca_pb2.GetTrustBundleResponse) -> None:
        with self._changed:
            first = self._message is None
            if message == self._message:
                return  # the same bundle again (a reconnect): nothing changed
            self._message = message
            if not first:
                self.changes += 1
            self._changed.notify_all()
        if not first:
            for callback in list(self.on_change):
                callback(self)
