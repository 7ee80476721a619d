"""The server's own TLS certificate: issued by the intermediate like any other, short-lived,
and replaced before it expires without a restart (gRPC asks ``fetch`` on every handshake)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Callable
from typing import cast

import grpc
import structlog
from cryptography.hazmat.primitives import serialization

from .core.authority import CertificateAuthority, Issued
from .core.keys import generate_key
from .core.names import IPAddress, normalize_dns_name
from .core.policy import CA_SERVER_NAME
from .core.profile import pem

log = structlog.get_logger("signet.serving")

SERVER_ACTOR = "signet:server"
RENEW_AT_FRACTION = 2 / 3


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
    ) -> None:
        self._ca = authority
        self._dns, self._ips = split_names(server_names)
        self._validity = validity
        self._lock = threading.Lock()
        self._identity = f"spiffe://{authority.policy.trust_domain}/signet/server"
        self._current: Issued | None = None
        self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._config: grpc.ServerCertificateConfiguration | None = None
        self._bootstrap_config: grpc.ServerCertificateConfiguration | None = None
        self._generation = 0
        self._rotate()
        authority.on_revocation(self._on_revocation)

    @property
    def current(self) -> Issued:
        assert self._current is not None
        return self._current

    @property
    def configuration(self) -> grpc.ServerCertificateConfiguration:
        assert self._config is not None
        return self._config

    def _rotate(self) -> None:
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
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Clients are verified against the root and the intermediate, so a client may present
        # its leaf alone or with its chain.
        trust = (pem(self._ca.root) + self._ca.issuer.chain_pem).encode()
        chain = (issued.certificate_pem + issued.chain_pem).encode()
        self._config = grpc.ssl_server_certificate_configuration(
            [(key_pem, chain)], root_certificates=trust
        )
        # The bootstrap listener also sends the root: a client that pins only the root's
        # fingerprint finds it in the handshake, checks it, and only then trusts it.
        self._bootstrap_config = grpc.ssl_server_certificate_configuration(
            [(key_pem, chain + pem(self._ca.root).encode())]
        )
        self._current = issued
        self._generation += 1
        # From the moment of issue, not from not_before: the backdate is not usable lifetime.
        now = self._ca.clock.now()
        self._renew_at = now + (issued.not_after - now) * RENEW_AT_FRACTION
        log.info(
            "serving_certificate_issued",
            serial=issued.serial,
            not_after=issued.not_after.isoformat(),
        )

    def _on_revocation(self, serial: str) -> None:
        """Someone revoked our own certificate: replace it at the next handshake."""
        if serial == self.current.serial:
            log.warning("serving_certificate_revoked", serial=serial)
            self._renew_at = dt.datetime.min.replace(tzinfo=dt.UTC)

    def _maybe_rotate(self) -> None:
        if self._ca.clock.now() < self._renew_at:
            return
        with self._lock:
            if self._ca.clock.now() >= self._renew_at:
                try:
                    self._rotate()
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
