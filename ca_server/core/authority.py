"""The certificate authority as the API layer sees it: one object, one call per RPC. It builds
the parts that do the work around one store, clock, issuing key and policy, and hands each call
to the part that owns it; it knows nothing of gRPC or SQL, and raises only the errors in
``errors``."""

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
from .issuance import Issuance, IssuanceSettings, Issued, Preview
from .keys import SigningKey
from .listing import Listing, Page
from .policy import Caller, Policy
from .profile import Issuer, fingerprint_sha256, parse_serial, pem, serial_hex
from .renewal import Renewals, RenewalSelector, RenewNowResult
from .renewal_window import RenewalInfo
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
        issuer: Issuer,
        root: x509.Certificate,
        policy: Policy,
        settings: IssuanceSettings | None = None,
        root_key: SigningKey | None = None,
    ) -> None:
        """root_key: when at hand (the data directory holds it), the root's documents (its CRL,
        its OCSP answer about the intermediate) are re-signed here when due."""
        self.store = store
        self.clock = clock
        self.issuer = issuer
        self.root = root
        self.policy = policy
        self._settings = settings = settings or IssuanceSettings()
        self._issuance = Issuance(
            store=store, clock=clock, issuer=issuer, policy=policy, settings=settings
        )
        self.responder = self._issuance.responder
        self.crls = CrlPublisher(
            store=store, clock=clock, issuer=issuer, validity=settings.crl_validity
        )
        self._authenticator = Authenticator(
            store=store, clock=clock, issuer=issuer, policy=policy, settings=settings
        )
        self._enrollment = Enrollment(
            store=store, clock=clock, policy=policy, settings=settings, issuance=self._issuance
        )
        self._revoker = Revoker(
            store=store,
            clock=clock,
            responder=self.responder,
            crls=self.crls,
            authenticator=self._authenticator,
        )
        self.root_documents = RootPublisher(
            store=store,
            clock=clock,
            root=root,
            intermediate=issuer.certificate,
            root_key=root_key,
            validity=settings.root_crl_validity,
        )
        self._status = StatusService(
            store=store,
            clock=clock,
            issuer=issuer,
            responder=self.responder,
            settings=settings,
            root_answer=self.root_documents.ocsp_answer,
        )
        self._listing = Listing(store=store)
        self._audit = AuditTrail(store=store)
        # WatchRevocations wakes for revocations here at once, for others' within a poll.
        self.revocation_feed = RevocationFeed(store)
        self._revoker.on_revocation(self.revocation_feed.changed)
        self._renewals = Renewals(
            store=store, clock=clock, ca_certificates=[issuer.certificate, root]
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
        return pem(self.root), self.issuer.chain_pem

    def spiffe_bundle(self) -> str:
        """The trust bundle in the SPIFFE bundle format (JSON)."""
        return spiffe_bundle([self.root])

    def root_fingerprint(self) -> str:
        return fingerprint_sha256(self.root)
