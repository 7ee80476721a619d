"""The server's own TLS certificate: issued by the intermediate like any other, short-lived,
and replaced before it expires without a restart (gRPC asks ``fetch`` on every handshake).
A rotation of the CA's certificates replaces it at the next handshake (from the new
intermediate) and what it trusts (every published root and answering intermediate)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
import time
from collections.abc import Callable
from typing import cast

import grpc
import structlog
from cryptography import x509

from .core.authority import CertificateAuthority, Issued
from .core.keys import generate_key
from .core.names import IPAddress, normalize_dns_name
from .core.policy import CA_SERVER_NAME
from .core.profile import certificate_names, fingerprint_sha256, pem, serial_hex
from .shared_credential import Credential, SharedCredential, credential

log = structlog.get_logger("signet.serving")

SERVER_ACTOR = "signet:server"
RENEW_AT_FRACTION = 2 / 3
SHARED_LOOK_EVERY = 0.25  # seconds between looks at the shared file for another's rotation


def split_names(names: list[str] | tuple[str, ...]) -> tuple[list[str], list[IPAddress]]:
    dns: list[str] = []
    ips: list[IPAddress] = []
    for name in ["localhost", "127.0.0.1", CA_SERVER_NAME, *names]:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            dns.append(normalize_dns_name(name))
        else:
            ips.append(ip)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


class ServingCertificate:
    def __init__(
        self,
        authority: CertificateAuthority,
        server_names: tuple[str, ...],
        validity: dt.timedelta,
        shared: SharedCredential | None = None,
    ) -> None:
        """With `shared`, every worker of the data directory serves the same certificate, and
        only one of them replaces it (see shared_credential)."""
        self._ca = authority
        self._dns, self._ips = split_names(server_names)
        self._validity = validity
        self._shared = shared
        self._lock = threading.Lock()
        self._identity = f"spiffe://{authority.policy.trust_domain}/signet/server"
        self._current: Issued | None = None
        self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._revoked: set[int] = set()
        self._next_look = 0.0
        self._config: grpc.ServerCertificateConfiguration | None = None
        self._bootstrap_config: grpc.ServerCertificateConfiguration | None = None
        self._generation = 0
        self._cred: Credential | None = None
        self._reinstall = False
        self._refresh()
        authority.on_revocation(self._on_revocation)
        authority.on_revocation_elsewhere(self._check_revoked)
        authority.on_hierarchy_change(self._on_hierarchy)

    @property
    def current(self) -> Issued:
        assert self._current is not None
        return self._current

    @property
    def configuration(self) -> grpc.ServerCertificateConfiguration:
        assert self._config is not None
        return self._config

    def _renew_time(self, cert: x509.Certificate) -> dt.datetime:
        # From the moment of issue, not from not_before: the backdate is not usable lifetime.
        issued = cert.not_valid_before_utc + self._ca.settings.backdate
        return issued + (cert.not_valid_after_utc - issued) * RENEW_AT_FRACTION

    def _is_due(self, cred: Credential | None) -> bool:
        if cred is None:
            return True
        cert = cred.certificate
        _, dns, ips = certificate_names(cert)
        return (
            cert.serial_number in self._revoked
            or cert.issuer != self._ca.issuer.certificate.subject
            or tuple(cred.chain[1:]) != self._ca.issuer.chain  # a cross-certificate came or went
            or (list(dns), list(ips)) != (self._dns, [str(i) for i in self._ips])  # names changed
            or self._ca.clock.now() >= self._renew_time(cert)
        )

    def _make(self) -> Credential:
        key = generate_key("ec-p256")
        issued = self._ca.issue_for(
            public_key=key.public_key(),
            identity=self._identity,
            dns_names=self._dns,
            ip_addresses=self._ips,
            lifetime=self._validity,
            actor=SERVER_ACTOR,
            action="issue-server",
        )
        log.info(
            "serving_certificate_issued",
            serial=issued.serial,
            not_after=issued.not_after.isoformat(),
        )
        chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
        return credential(key, (issued.certificate, *chain))

    def _refresh(self) -> None:
        """Take up the shared certificate, replacing it first if it is due."""
        cred = self._shared.load() if self._shared else None
        if self._is_due(cred):
            cred = self._shared.replace(self._is_due, self._make) if self._shared else self._make()
        assert cred is not None
        if (
            self._current is None
            or self._reinstall
            or cred.certificate.serial_number != int(self._current.serial, 16)
        ):
            self._reinstall = False
            self._install(cred)

    def _on_hierarchy(self, _: object) -> None:
        """The CA's certificates changed: a new issuer, new roots to trust. Taken up at the
        next handshake (the check below is cheap until then)."""
        self._reinstall = True
        self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)

    def _install(self, cred: Credential) -> None:
        # Clients are verified against every published root and answering intermediate, so a
        # client may present its leaf alone or with its chain, from before a rotation or after.
        roots, intermediates = self._ca.trust_bundle()
        trust = (roots + intermediates).encode()
        self._config = grpc.ssl_server_certificate_configuration(
            [(cred.key_pem, cred.chain_pem)], root_certificates=trust
        )
        # The bootstrap listener also sends the roots: a client that pins only a root's
        # fingerprint (the old one's too, during a rollover) finds it in the handshake, checks
        # it, and only then trusts it.
        self._bootstrap_config = grpc.ssl_server_certificate_configuration(
            [(cred.key_pem, cred.chain_pem + roots.encode())]
        )
        cert = cred.certificate
        self._current = Issued(
            cert, "".join(pem(c) for c in cred.chain[1:]), serial_hex(cert.serial_number),
            fingerprint_sha256(cert),
        )  # fmt: skip
        self._renew_at = self._renew_time(cert)
        self._generation += 1

    def _on_revocation(self, serial: str) -> None:
        """Someone revoked our own certificate: replace it at the next handshake."""
        if serial == self.current.serial:
            log.warning("serving_certificate_revoked", serial=serial)
            self._revoked.add(int(serial, 16))
            self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)

    def _check_revoked(self) -> None:
        """Revocations happened somewhere (perhaps another replica revoked ours)."""
        serial = self.current.serial
        row = self._ca.store.get_status(serial)
        if row is not None and row.status == "revoked" and int(serial, 16) not in self._revoked:
            self._on_revocation(serial)

    def _maybe_rotate(self) -> None:
        now = time.monotonic()
        look = self._shared is not None and now >= self._next_look
        if not look and self._ca.clock.now() < self._renew_at:
            return
        with self._lock:
            self._next_look = now + SHARED_LOOK_EVERY
            unchanged = self._shared is None or not self._shared.changed()
            if unchanged and self._ca.clock.now() < self._renew_at:
                return
            try:
                self._refresh()
            except Exception:  # keep serving with the current one; retried next handshake
                log.exception("serving_certificate_rotation_failed")

    def _fetcher(self, bootstrap: bool) -> Callable[[], grpc.ServerCertificateConfiguration]:
        """gRPC calls the fetcher at each new handshake of one listener: it returns the new
        configuration once after any rotation (whichever listener's handshake caused it),
        None otherwise (keep the current one)."""
        seen = self._generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            self._maybe_rotate()
            if seen == self._generation:
                return None
            seen = self._generation
            return self._bootstrap_config if bootstrap else self._config

        # grpc-stubs types the fetcher as never returning None; gRPC documents None as "keep".
        return cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)

    def bootstrap_credentials(self) -> grpc.ServerCredentials:
        """Server-authenticated TLS only (gRPC cannot ask for a client certificate without
        requiring one), with the same certificate, rotated the same way."""
        assert self._bootstrap_config is not None
        return grpc.dynamic_ssl_server_credentials(
            self._bootstrap_config, self._fetcher(True), require_client_authentication=False
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration, self._fetcher(False), require_client_authentication=True
        )
