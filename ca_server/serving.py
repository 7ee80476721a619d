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
from .core.profile import pem

log = structlog.get_logger("signet.serving")

SERVER_ACTOR = "signet:server"
RENEW_AT_FRACTION = 2 / 3


def split_names(names: list[str] | tuple[str, ...]) -> tuple[list[str], list[IPAddress]]:
    dns: list[str] = []
    ips: list[IPAddress] = []
    for name in ["localhost", "127.0.0.1", *names]:
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
        self._config = grpc.ssl_server_certificate_configuration(
            [(key_pem, (issued.certificate_pem + issued.chain_pem).encode())],
            root_certificates=trust,
        )
        self._current = issued
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

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC calls this at each new handshake: a new configuration, or None to keep the old."""
        if self._ca.clock.now() < self._renew_at:
            return None
        with self._lock:
            if self._ca.clock.now() >= self._renew_at:
                try:
                    self._rotate()
                except Exception:  # keep serving with the current one; retried next handshake
                    log.exception("serving_certificate_rotation_failed")
                    return None
            return self._config

    def credentials(self) -> grpc.ServerCredentials:
        # grpc-stubs types the fetcher as never returning None; gRPC documents None as "no change".
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self.configuration, fetch, require_client_authentication=True
        )
