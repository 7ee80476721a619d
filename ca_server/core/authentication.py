"""Who is calling: the TLS-verified peer certificate turned into a Caller. The store's "issued
here and not revoked" answer is cached for a moment, because every RPC asks; revocations made
through this process void the cache at once, and a generation counter keeps a store read that
raced one of them from being cached as good."""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from .clock import Clock
from .errors import ErrorReason, Unauthenticated
from .issuance import IssuanceSettings
from .policy import Caller, Policy
from .profile import certificate_names, fingerprint_sha256, serial_hex
from .store import Store

_AUTH_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class _PeerCertificate:
    serial: str
    fingerprint: str
    identity: str | None
    not_after: dt.datetime
    issuer: x509.Name


@functools.lru_cache(maxsize=4096)
def _parse_peer(cert_pem: bytes) -> _PeerCertificate:
    cert = x509.load_pem_x509_certificate(cert_pem)
    identity, _, _ = certificate_names(cert)
    return _PeerCertificate(
        serial_hex(cert.serial_number),
        fingerprint_sha256(cert),
        identity,
        cert.not_valid_after_utc,
        cert.issuer,
    )


class Authenticator:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        is_issuer: Callable[[x509.Name], bool],
        policy: Policy,
        settings: IssuanceSettings,
    ) -> None:
        self._store = store
        self._clock = clock
        self._is_issuer = is_issuer  # one of our intermediates (any answering one)
        self._policy = policy
        self.settings = settings
        # fingerprint -> when the store last said that certificate is ours and not revoked
        self._auth_ok: dict[str, dt.datetime] = {}
        self._auth_generation = 0  # bumped by every revocation this process makes
        self._auth_lock = threading.Lock()

    def authenticate(self, peer_certificate_pem: bytes) -> Caller:
        """Turn the TLS-verified peer certificate into a Caller, or raise Unauthenticated.

        TLS already checked the chain and validity window at the handshake; here we check what
        it cannot: the certificate is one we issued, it is not revoked, and (for long-lived
        connections) it has not expired since.
        """
        try:
            peer = _parse_peer(peer_certificate_pem)
        except ValueError:
            raise Unauthenticated(
                "the client certificate could not be parsed",
                reason=ErrorReason.CLIENT_CERTIFICATE_INVALID,
            ) from None
        if not self._is_issuer(peer.issuer):
            raise Unauthenticated(
                "the client certificate was not issued by this CA",
                reason=ErrorReason.CALLER_UNKNOWN,
            )
        if peer.identity is None:
            raise Unauthenticated(
                "the client certificate carries no SPIFFE ID (URI SAN)",
                reason=ErrorReason.CALLER_WITHOUT_IDENTITY,
            )
        now = self._clock.now()
        if now > peer.not_after:  # RFC 5280: not_after itself is still within validity
            raise Unauthenticated(
                f"the client certificate {peer.serial} has expired",
                reason=ErrorReason.CALLER_EXPIRED,
                metadata={"serial_number": peer.serial},
            )
        if not self._recently_good(peer.fingerprint, now):
            with self._auth_lock:
                generation = self._auth_generation
            record = self._store.get_certificate(peer.serial)
            # The very certificate we stored, not merely one with the same issuer name and serial.
            if record is None or record.fingerprint_sha256 != peer.fingerprint:
                raise Unauthenticated(
                    f"the client certificate {peer.serial} is unknown to this CA",
                    reason=ErrorReason.CALLER_UNKNOWN,
                    metadata={"serial_number": peer.serial},
                )
            if record.status == "revoked":
                raise Unauthenticated(
                    f"the client certificate {peer.serial} has been revoked",
                    reason=ErrorReason.CALLER_REVOKED,
                    metadata={"serial_number": peer.serial},
                )

            with self._auth_lock:
                if generation == self._auth_generation:  # no revocation raced our store read
                    if len(self._auth_ok) >= _AUTH_CACHE_MAX:
                        self._auth_ok.clear()  # cheap to rebuild; memory must stay bounded
                    self._auth_ok[peer.fingerprint] = now
        return Caller(peer.identity, peer.serial, self._policy.is_admin(peer.identity))

    def revoked(self, fingerprint: str) -> None:
        """Forget the certificate this process just revoked, and any store read in flight."""
        with self._auth_lock:
            self._auth_generation += 1  # also voids "good" answers read before this point
            self._auth_ok.pop(fingerprint, None)

    def forget_all(self) -> None:
        """Another process revoked something: ask the store again for every caller."""
        with self._auth_lock:
            self._auth_generation += 1
            self._auth_ok.clear()

    def _recently_good(self, fingerprint: str, now: dt.datetime) -> bool:
        with self._auth_lock:
            checked = self._auth_ok.get(fingerprint)
            if checked is None:
                return False
            if now - checked > self.settings.auth_cache_ttl or now < checked:
                del self._auth_ok[fingerprint]
                return False
            return True
