"""The certificate authority as the API layer sees it: one object, one call per RPC. It builds
the parts that do the work around one store, clock, hierarchy of CA certificates and policy,
and hands each call to the part that owns it; it knows nothing of gRPC or SQL, and raises only
the errors in ``errors``. A rotation recorded in the store reaches it through reload()."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable

from cryptography import x509

from .audit_log import AuditTrail
from .authentication import Authenticator
from .clock import Clock
from .crl_publisher import CrlPublisher, CrlResult
from .enrollment import Enrollment
from .errors import AlreadyRevoked
from .hierarchy import Hierarchy
from .issuance import Issuance, IssuanceSettings, Issued, Preview
from .issuers import Issuers
from .keys import SigningKey
from .listing import Listing, Page
from .policy import Caller, Policy
from .profile import Issuer, fingerprint_sha256, parse_serial, serial_hex
from .renewal import Renewals, RenewalSelector, RenewNowResult
from .renewal_window import RenewalInfo
from .responder import OcspResponder
from .revocation import Reason
from .revocation_feed import RevocationFeed
from .revoker import Revoker
from .root_documents import RootPublisher
from .spiffe_bundle import spiffe_bundle
from .status import StatusResult, StatusService
from .store import Store

__all__ = [
    "CertificateAuthority",
    "IssuanceSettings",
    "Issued",
    "Page",
    "Preview",
    "RenewNowResult",
    "RenewalInfo",
    "RenewalSelector",
    "StatusResult",
    "parse_serial",
]


class CertificateAuthority:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        policy: Policy,
        issuer: Issuer | None = None,
        root: x509.Certificate | None = None,
        settings: IssuanceSettings | None = None,
        root_key: SigningKey | None = None,
        hierarchy: Hierarchy | None = None,
        load_hierarchy: Callable[[], Hierarchy] | None = None,
    ) -> None:
        """The CA certificates: `hierarchy` (what the store records), or one root and its
        issuing intermediate; load_hierarchy() reads them again (see reload). root_key: when
        at hand (the data directory holds it), the roots' documents (their CRLs, their OCSP
        answers about the intermediates) are re-signed here when due."""
        if hierarchy is None:
            if issuer is None or root is None:
                raise TypeError("give a hierarchy, or an issuer and its root")
            hierarchy = Hierarchy.of(
                root, issuer.certificate, root_key=root_key, intermediate_key=issuer.key
            )
        self.store = store
        self.clock = clock
        self.policy = policy
        self._load_hierarchy = load_hierarchy
        self._hierarchy_listeners: list[Callable[[Hierarchy], None]] = []
        self._settings = settings = settings or IssuanceSettings()
        self._issuance = Issuance(
            store=store, clock=clock, active=lambda: self.issuers.active, policy=policy,
            settings=settings, issuer_of=lambda key_id: self.issuers.get(key_id),
        )  # fmt: skip
        self.issuers = Issuers(
            store=store,
            clock=clock,
            settings=settings,
            hierarchy=hierarchy,
            issue_signer=self._issuance.issue_ocsp_signer,
        )
        self._authenticator = Authenticator(
            store=store,
            clock=clock,
            is_issuer=self.issuers.is_issuer_name,
            policy=policy,
            settings=settings,
        )
        self._enrollment = Enrollment(
            store=store, clock=clock, policy=policy, settings=settings, issuance=self._issuance
        )
        self._revoker = Revoker(
            store=store, clock=clock, issuers=self.issuers, authenticator=self._authenticator
        )
        self.root_documents = RootPublisher(
            store=store,
            clock=clock,
            hierarchy=lambda: self.issuers.hierarchy,
            validity=settings.root_crl_validity,
        )
        self._status = StatusService(
            store=store,
            clock=clock,
            issuers=self.issuers,
            settings=settings,
            root_answer=self.root_documents.ocsp_answer,
        )
        self._listing = Listing(store=store)
        self._audit = AuditTrail(store=store)
        # WatchRevocations wakes for revocations here at once, for others' within a poll.
        self.revocation_feed = RevocationFeed(store)
        self._revoker.on_revocation(self.revocation_feed.changed)
        # And WatchTrustBundle's streams wake when a rotation reaches this process.
        self.on_hierarchy_change(self.revocation_feed.changed)
        self._renewals = Renewals(
            store=store,
            clock=clock,
            ca_certificates=lambda: [e.certificate for e in self.issuers.hierarchy.entries],
        )
        self._elsewhere: list[Callable[[], None]] = []

        # The calls answered by one part alone are that part's methods.
        self.sign = self._issuance.sign
        self.issue_for = self._issuance.issue_for
        self.create_token = self._enrollment.create_token
        self.enroll = self._enrollment.enroll
        self.revoke = self._revoker.revoke
        self.on_revocation = self._revoker.on_revocation
        self.status = self._status.status
        self.ocsp_response = self._status.ocsp_response
        self.ocsp_answer = self._status.ocsp_answer
        self.refresh_ocsp = self._status.refresh_ocsp
        self.wait_for_writebacks = self._status.wait_for_writebacks
        self.list_certificates = self._listing.list_certificates
        self.list_audit_events = self._audit.list_events
        self.authenticate = self._authenticator.authenticate
        self.renewal_info = self._renewals.info
        self.renew_now = self._renewals.renew_now

    # -- the CA's own certificates ---------------------------------------------------------
    @property
    def hierarchy(self) -> Hierarchy:
        return self.issuers.hierarchy

    @property
    def issuer(self) -> Issuer:
        """The issuing intermediate (its certificate, key and chain)."""
        return self.issuers.active.issuer

    @property
    def root(self) -> x509.Certificate:
        """The active root (the newest published one)."""
        return self.hierarchy.active_root.certificate

    @property
    def roots(self) -> list[x509.Certificate]:
        """Every published root, the active one first: what clients trust (their union)."""
        return [e.certificate for e in self.hierarchy.roots]

    @property
    def responder(self) -> OcspResponder:
        """The issuing intermediate's OCSP responder."""
        return self.issuers.active.responder

    @property
    def crls(self) -> CrlPublisher:
        """The issuing intermediate's CRL publisher (each answering one has its own)."""
        return self.issuers.active.crls

    def crl_publishers(self) -> list[CrlPublisher]:
        return [s.crls for s in self.issuers.all()]

    def reload(self) -> bool:
        """Read the CA certificates again (the store's CA generation moved: a rotation by any
        process or command sharing it); True if anything changed here."""
        if self._load_hierarchy is None:
            return False
        fresh = self._load_hierarchy()
        old = self.hierarchy
        same = [(e.record, e.key is None) for e in old.entries] == [
            (e.record, e.key is None) for e in fresh.entries
        ]
        if same:
            return False
        self.issuers.update(fresh)
        self.root_documents.reload()
        self._authenticator.forget_all()
        for listener in list(self._hierarchy_listeners):
            listener(fresh)
        return True

    def on_hierarchy_change(self, listener: Callable[[Hierarchy], None]) -> None:
        """Call listener(hierarchy) after each reload that changed the CA certificates."""
        self._hierarchy_listeners.append(listener)

    @property
    def settings(self) -> IssuanceSettings:
        """Replacing them (as the server does to add its public URLs) reaches every part; the
        OCSP responder and the CRL publisher keep the validities they were built with."""
        return self._settings

    @settings.setter
    def settings(self, settings: IssuanceSettings) -> None:
        self._settings = settings
        self._issuance.settings = settings
        self._enrollment.settings = settings
        self._authenticator.settings = settings
        self._status.settings = settings

    def renew(
        self,
        caller: Caller,
        csr_pem: str,
        validity: dt.timedelta | None,
        revoke_previous: bool = False,
        request_id: str | None = None,
        validate_only: bool = False,
    ) -> Issued | Preview:
        """A new certificate for the caller's identity and names, for the CSR's (new) key;
        with revoke_previous, the caller's certificate is then revoked as superseded (also
        when a retry is answered with the certificate already issued: the caller is still
        authenticated by the previous one, so the first call did not get that far)."""
        issued = self._issuance.renew(
            caller, csr_pem, validity, request_id, validate_only, revoke_previous
        )
        if revoke_previous and isinstance(issued, Issued):
            # A concurrent revocation may get there first: the outcome is the same.
            with contextlib.suppress(AlreadyRevoked):
                self.revoke(caller, caller.serial, Reason.SUPERSEDED)
        return issued

    def revocations_changed(self) -> None:
        """The store's revocation epoch moved (a revocation by any process sharing it): no
        cached "not revoked" answer survives it (OCSP and CRL answers key on the epoch), and
        the CA's own certificates in use here are checked, in case one of them was revoked
        (by another replica: this process's revocations are seen at once)."""
        self._authenticator.forget_all()
        signer = self.responder.signer_serial()
        if signer is not None:
            row = self.store.get_status(serial_hex(signer))
            if row is not None and row.status == "revoked":
                self.responder.drop_signer(signer)
        self.revocation_feed.changed()
        for listener in self._elsewhere:
            listener()

    def on_revocation_elsewhere(self, listener: Callable[[], None]) -> None:
        """Call listener() whenever revocations by any process may have changed something."""
        self._elsewhere.append(listener)

    def crl(self) -> CrlResult:
        """The current CRL (see CrlPublisher: never built on the request path when a
        background publisher runs)."""
        return self.crls.current()

    def trust_bundle(self) -> tuple[str, str]:
        """(every published root, the intermediates: the issuing chain first)."""
        return self.hierarchy.roots_pem, self.hierarchy.intermediates_pem

    def spiffe_bundle(self) -> str:
        """The trust bundle in the SPIFFE bundle format (JSON): every published root."""
        return spiffe_bundle(self.roots, self.hierarchy.generation)

    def root_fingerprint(self) -> str:
        return fingerprint_sha256(self.root)
