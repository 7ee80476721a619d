"""Per issuer, what answers for its certificates: an OCSP responder and a CRL publisher for
each intermediate that still answers (the issuing one and those retiring), kept across
reloads of the hierarchy so that their caches survive a rotation elsewhere in it.

The issuing intermediate's responses are signed by the delegated responder certificate it
issues (when configured); a retiring one signs its own, as RFC 6960 4.2.2.2 allows: one shared
responder certificate per data directory stays with the issuing CA."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from .clock import Clock
from .crl_publisher import CrlPublisher
from .hierarchy import CaCert, Hierarchy
from .issuance import IssuanceSettings
from .ocsp import issuer_hashes
from .profile import Issuer
from .responder import OcspResponder, SignerSlot
from .store import Store

# issue_signer(issuer, public_key, lifetime) -> a delegated responder certificate of `issuer`.
IssueSigner = Callable[[Issuer, CertificatePublicKeyTypes, dt.timedelta], x509.Certificate]
_CERT_ID_HASHES = (hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512)


@dataclass(frozen=True, slots=True)
class IssuerServices:
    entry: CaCert
    issuer: Issuer
    responder: OcspResponder
    crls: CrlPublisher
    issuing: bool

    @property
    def key_id(self) -> str:
        return self.entry.key_id


class Issuers:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        settings: IssuanceSettings,
        hierarchy: Hierarchy,
        issue_signer: IssueSigner,
    ) -> None:
        self._store, self._clock, self._settings = store, clock, settings
        self._issue_signer = issue_signer
        self.wanted = threading.Event()  # one for every publisher: one background thread waits
        self._background = self._builder = False
        self._slot: SignerSlot | None = None
        self._observe: Callable[[str, bool], None] = lambda status, cached: None
        self._lock = threading.Lock()
        self._services: dict[str, IssuerServices] = {}
        self._by_hash: dict[tuple[str, bytes, bytes], IssuerServices] = {}
        self.hierarchy = hierarchy
        self.update(hierarchy)

    def update(self, hierarchy: Hierarchy) -> None:
        """Follow a new hierarchy: services for every answering intermediate whose key is
        here, the existing ones kept where nothing about them changed."""
        issuing = hierarchy.issuing
        fresh: dict[str, IssuerServices] = {}
        for entry in hierarchy.intermediates:
            if entry.key is None:
                continue
            issuer = hierarchy.issuer(entry)
            old = self._services.get(entry.key_id)
            is_issuing = entry is issuing or entry.serial == issuing.serial
            if old is not None and old.issuing == is_issuing and old.issuer.chain == issuer.chain:
                fresh[entry.key_id] = old
                continue
            responder = self._responder(issuer, is_issuing)
            crls = (
                old.crls
                if old is not None
                else CrlPublisher(
                    store=self._store,
                    clock=self._clock,
                    issuer=issuer,
                    validity=self._settings.crl_validity,
                    key_id=entry.key_id,
                    wanted=self.wanted,
                )
            )
            crls.background, crls.builder = self._background, self._builder
            fresh[entry.key_id] = IssuerServices(entry, issuer, responder, crls, is_issuing)
        by_hash = {}
        for services in fresh.values():
            for alg in _CERT_ID_HASHES:
                name_hash, key_hash = issuer_hashes(services.issuer.certificate, alg())
                by_hash[(alg.name, name_hash, key_hash)] = services
        with self._lock:
            self._services, self._by_hash, self.hierarchy = fresh, by_hash, hierarchy

    def _responder(self, issuer: Issuer, issuing: bool) -> OcspResponder:
        delegated = issuing and self._settings.ocsp_delegated

        def issue(
            public_key: CertificatePublicKeyTypes, lifetime: dt.timedelta
        ) -> x509.Certificate:
            return self._issue_signer(issuer, public_key, lifetime)

        responder = OcspResponder(
            issuer=issuer,
            clock=self._clock,
            validity=self._settings.ocsp_validity,
            issue_signer=issue if delegated else None,
            signer_validity=self._settings.ocsp_signer_validity,
        )
        responder.observe = self._observe
        if delegated and self._slot is not None:
            responder.share_signer(self._slot)
        return responder

    @property
    def active(self) -> IssuerServices:
        """The issuing intermediate's."""
        with self._lock:
            return self._services[self.hierarchy.issuing.key_id]

    def get(self, key_id: str) -> IssuerServices | None:
        with self._lock:
            return self._services.get(key_id)

    def all(self) -> list[IssuerServices]:
        """The issuing one first."""
        with self._lock:
            return sorted(self._services.values(), key=lambda s: not s.issuing)

    def by_cert_id(
        self, algorithm: str, name_hash: bytes, key_hash: bytes
    ) -> IssuerServices | None:
        """The issuer an OCSP CertID names (RFC 6960 4.1.1: by its name and key hashes)."""
        with self._lock:
            return self._by_hash.get((algorithm, name_hash, key_hash))

    def is_issuer_name(self, name: x509.Name) -> bool:
        """Whether `name` is one of the answering intermediates' (certificates of every one of
        them authenticate until they expire)."""
        return any(e.certificate.subject == name for e in self.hierarchy.intermediates)

    def share_signer(self, slot: SignerSlot) -> None:
        """The issuing intermediate's delegated responder lives in `slot` (shared by workers)."""
        self._slot = slot
        self.active.responder.share_signer(slot)

    def observe(self, fn: Callable[[str, bool], None]) -> None:
        self._observe = fn
        for services in self.all():
            services.responder.observe = fn

    def set_background(
        self, *, background: bool | None = None, builder: bool | None = None
    ) -> None:
        if background is not None:
            self._background = background
        if builder is not None:
            self._builder = builder
        for services in self.all():
            services.crls.background, services.crls.builder = self._background, self._builder
