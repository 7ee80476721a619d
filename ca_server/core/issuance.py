"""Issuing certificates: from a CSR (sign), for a caller's new key (renew), for the CA itself
(issue_for) and for its delegated OCSP responder. Each is recorded in the store, with the key
id of the intermediate that issued it, before anyone sees it. Every issuance asks which
intermediate issues now: a rotation takes effect at the next certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .clock import Clock, utc_seconds
from .csr import FIELD as CSR_FIELD
from .csr import parse_csr
from .durations import format_duration
from .errors import (
    ErrorReason,
    InvalidRequest,
    LimitExceeded,
    RequestIdReused,
    Unauthenticated,
)
from .idempotency import Call, RequestIds, result
from .names import IPAddress
from .policy import Caller, Policy, RequestedNames, check_request, grantor
from .profile import (
    Issuer,
    LeafRequest,
    PublicUrls,
    build_leaf,
    build_ocsp_responder,
    capped_not_after,
    fingerprint_sha256,
    pem,
    random_serial,
    serial_hex,
)
from .renewal_window import RenewalInfo, renewal_info
from .store import (
    AuditEvent,
    CertificateRecord,
    DuplicateRequest,
    DuplicateSerial,
    Quota,
    QuotaExceeded,
    RequestRecord,
    Store,
)

if TYPE_CHECKING:
    from .issuers import IssuerServices

_CA_ACTOR = "signet:ca"


class TokenSpent(Unauthenticated):
    """The token was good when read and spent by someone else before this attempt stored."""


@dataclass(frozen=True, slots=True)
class IssuanceSettings:
    """The ``[issuance]`` section of config.toml."""

    default_validity: dt.timedelta = dt.timedelta(hours=24)
    max_validity: dt.timedelta = dt.timedelta(days=30)
    min_validity: dt.timedelta = dt.timedelta(minutes=5)
    backdate: dt.timedelta = dt.timedelta(minutes=1)
    crl_validity: dt.timedelta = dt.timedelta(hours=24)
    root_crl_validity: dt.timedelta = dt.timedelta(days=365)
    ocsp_validity: dt.timedelta = dt.timedelta(hours=4)
    # How long a caller's "not revoked" answer is reused before the store is asked again.
    # Revocations by any process sharing the store void it within the revocation poll.
    auth_cache_ttl: dt.timedelta = dt.timedelta(seconds=2)
    public_urls: PublicUrls | None = None
    # OCSP responses signed by a short-lived delegated responder certificate (True) or by the
    # issuing CA itself (False).
    ocsp_delegated: bool = True
    ocsp_signer_validity: dt.timedelta = dt.timedelta(days=3)
    # DNS names + IP addresses on one certificate, and so on one bootstrap token (as Let's
    # Encrypt caps its certificates): 10,000 names made a 256 KB certificate that then failed
    # mTLS, and let one workload fill the store.
    max_names: int = 100
    # Per identity (the SPIFFE ID a certificate is for): at most this many issued within
    # identity_rate_window, and at most identity_live_limit unrevoked and unexpired at once;
    # 0 turns a limit off. Generous: a SPIFFE ID is usually a service, not one of its pods.
    identity_rate_limit: int = 1000
    identity_rate_window: dt.timedelta = dt.timedelta(hours=1)
    identity_live_limit: int = 10_000
    # Certificates expired longer than this are deleted from the store (and so from listings
    # and OCSP, which then answers "unknown"); their audit events stay. None keeps them all.
    retain_expired: dt.timedelta | None = dt.timedelta(days=90)
    # A new intermediate is made (signed by the root, where its key is) once this fraction of
    # the issuing one's life has passed; None: only on demand (ca-server intermediate rotate).
    intermediate_rotate_at: float | None = 2 / 3
    intermediate_validity: dt.timedelta = dt.timedelta(days=1825)


@dataclass(frozen=True, slots=True)
class Issued:
    certificate: x509.Certificate
    chain_pem: str
    serial: str
    fingerprint_sha256: str
    identity: str = ""
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    # When to renew it (see renewal_window): issuing responses carry it, as GetRenewalInfo.
    renewal: RenewalInfo | None = None

    @property
    def certificate_pem(self) -> str:
        return pem(self.certificate)

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class Preview:
    """What a call would issue (validate_only): every check passed; nothing signed or stored."""

    identity: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime


def _seconds(lifetime: dt.timedelta | None) -> float | None:
    return None if lifetime is None else lifetime.total_seconds()


def check_name_count(
    settings: IssuanceSettings, names: RequestedNames, what: str, field: str | None = None
) -> None:
    """LimitExceeded when `names` hold more DNS names and IPs than the CA's cap; field: the
    request field they came in, if they did."""
    count = len(names.dns_names) + len(names.ip_addresses)
    if count > settings.max_names:
        raise LimitExceeded(
            f"{what} asks for {count} DNS names and IP addresses; this CA allows at most "
            f"{settings.max_names} ([issuance] max_names)",
            reason=ErrorReason.TOO_MANY_NAMES,
            field=field,
            metadata={"limit": str(settings.max_names)},
        )


def checked_lifetime(
    settings: IssuanceSettings,
    requested: dt.timedelta | None,
    default: dt.timedelta,
    field: str = "validity",
) -> dt.timedelta:
    """The requested lifetime if within the CA's limits (else InvalidRequest naming `field`),
    or the default."""
    if requested is None:
        return default
    if requested > settings.max_validity:
        raise InvalidRequest(
            f"validity {format_duration(requested)} is longer than this CA's cap of "
            f"{format_duration(settings.max_validity)}",
            reason=ErrorReason.VALIDITY_OUT_OF_RANGE,
            field=field,
            metadata={"max": format_duration(settings.max_validity)},
        )
    if requested < settings.min_validity:
        raise InvalidRequest(
            f"validity {format_duration(requested)} is shorter than the minimum "
            f"{format_duration(settings.min_validity)}",
            reason=ErrorReason.VALIDITY_OUT_OF_RANGE,
            field=field,
            metadata={"min": format_duration(settings.min_validity)},
        )
    return requested


class Issuance:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        active: Callable[[], IssuerServices],
        policy: Policy,
        settings: IssuanceSettings,
        issuer_of: Callable[[str], IssuerServices | None] = lambda key_id: None,
    ) -> None:
        """active(): the issuing intermediate's services, asked at every issuance;
        issuer_of(key id): an intermediate's that still answers (for a replayed answer)."""
        self._store = store
        self._clock = clock
        self._active = active
        self._issuer_of = issuer_of
        self._policy = policy
        self.settings = settings
        self.requests = RequestIds(store=store, clock=clock)

    def sign(
        self,
        caller: Caller,
        csr_pem: str,
        validity: dt.timedelta | None,
        request_id: str | None = None,
        validate_only: bool = False,
    ) -> Issued | Preview:
        """validate_only: every check, nothing signed or stored (nor a request_id recorded)."""
        once = (
            None
            if validate_only
            else Call.of(
                caller.identity, request_id, "SignCertificate", csr_pem, _seconds(validity)
            )
        )
        if (prior := self.requests.prior(once)) is not None:
            return self.replay(prior)
        csr = parse_csr(csr_pem)
        if len(csr.uris) != 1:
            raise InvalidRequest(
                "the CSR must carry exactly one URI SAN, the SPIFFE ID "
                f"spiffe://{self._policy.trust_domain}/<path>; it has {len(csr.uris)}",
                reason=ErrorReason.CSR_IDENTITY_COUNT,
                field=CSR_FIELD,
            )
        names = RequestedNames(csr.uris[0], csr.dns_names, csr.ip_addresses)
        check_name_count(self.settings, names, "the CSR", CSR_FIELD)
        check_request(self._policy, caller, names)
        lifetime = checked_lifetime(self.settings, validity, self.settings.default_validity)
        if validate_only:
            return self.preview(names, lifetime)
        return self.issue(
            public_key=csr.public_key,
            names=names,
            common_name=csr.common_name,
            lifetime=lifetime,
            actor=caller.identity,
            action="issue",
            peer=caller.peer,
            call=once,
        )

    def renew(
        self,
        caller: Caller,
        csr_pem: str,
        validity: dt.timedelta | None,
        request_id: str | None = None,
        validate_only: bool = False,
        revoke_previous: bool = False,
    ) -> Issued | Preview:
        """A new certificate for the caller's identity and names, for the CSR's (new) key.
        revoke_previous only tells calls apart (the authority revokes)."""
        once = (
            None
            if validate_only
            else Call.of(
                caller.identity,
                request_id,
                "RenewCertificate",
                csr_pem,
                _seconds(validity),
                revoke_previous,
            )
        )
        if (prior := self.requests.prior(once)) is not None:
            return self.replay(prior)
        csr = parse_csr(csr_pem)  # only its key counts: names come from the current certificate
        current = self._store.get_certificate(caller.serial)
        if current is None:
            raise Unauthenticated(
                "the certificate you authenticated with is not known to this CA",
                reason=ErrorReason.CALLER_UNKNOWN,
            )
        if current.status == "revoked":
            raise Unauthenticated(
                f"the certificate {caller.serial} you authenticated with is revoked",
                reason=ErrorReason.CALLER_REVOKED,
                metadata={"serial_number": caller.serial},
            )
        old = x509.load_der_x509_certificate(current.der)
        if old.public_key() == csr.public_key:
            raise InvalidRequest(
                "renewal needs a new key: the CSR carries the current one",
                reason=ErrorReason.RENEWAL_KEY_REUSED,
                field=CSR_FIELD,
            )
        names = RequestedNames(
            current.identity,
            current.dns_names,
            tuple(ipaddress.ip_address(ip) for ip in current.ip_addresses),
        )
        # Re-check the names against what their grantor may grant today, so that narrowing
        # policy (or removing an admin) takes effect at the next renewal, not never.
        check_name_count(self.settings, names, "the certificate being renewed")
        check_request(self._policy, grantor(self._policy, current.authorized_by), names)
        cns = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        old_lifetime = current.not_after - current.not_before - self.settings.backdate
        default = min(max(old_lifetime, self.settings.min_validity), self.settings.max_validity)
        lifetime = checked_lifetime(self.settings, validity, default)
        if validate_only:
            return self.preview(names, lifetime)
        return self.issue(
            public_key=csr.public_key,
            names=names,
            common_name=str(cns[0].value) if cns else None,
            lifetime=lifetime,
            actor=caller.identity,
            authorized_by=current.authorized_by,
            action="renew",
            detail=f"renews {caller.serial}",
            peer=caller.peer,
            call=once,
        )

    def preview(self, names: RequestedNames, lifetime: dt.timedelta) -> Preview:
        """What issue() would make of these (checked) names, after the quota check it would
        run: the same times, the same refusal, and nothing signed or written."""
        now = utc_seconds(self._clock.now())
        try:
            self._store.check_quota(names.identity, self._quota(now))
        except QuotaExceeded as exc:
            raise self._over_quota(names.identity, exc, now) from None
        return Preview(
            names.identity,
            names.dns_names,
            tuple(str(ip) for ip in names.ip_addresses),
            now - self.settings.backdate,
            capped_not_after(self._active().issuer, now + lifetime),
        )

    def replay(self, prior: RequestRecord) -> Issued:
        """The certificate an earlier call with the same request_id was answered with."""
        serial = str(result(prior)["serial"])
        record = self._store.get_certificate(serial)
        if record is None:  # pruned: only if retain_expired is shorter than RETENTION
            raise RequestIdReused(
                f"request_id {prior.request_id} was answered with certificate {serial}, which "
                "is no longer stored; send the request with a new request_id",
                reason=ErrorReason.ANSWER_NOT_KEPT,
                field="request_id",
            )
        services = self._issuer_of(record.issuer) or self._active()
        cert = x509.load_der_x509_certificate(record.der)
        return self._issued(cert, record, services.issuer.chain_pem)

    def _issued(self, cert: x509.Certificate, record: CertificateRecord, chain_pem: str) -> Issued:
        return Issued(
            cert,
            chain_pem,
            record.serial,
            record.fingerprint_sha256,
            record.identity,
            record.dns_names,
            record.ip_addresses,
            renewal_info(
                serial=record.serial, issued_at=record.issued_at, not_after=record.not_after
            ),
        )

    def issue_for(
        self,
        *,
        public_key: CertificatePublicKeyTypes,
        identity: str,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[IPAddress] = (),
        lifetime: dt.timedelta,
        actor: str,
        action: str,
    ) -> Issued:
        """Issue without a CSR or policy check: for the CA's own certificates (the serving
        certificate, the admin credentials written by init)."""
        names = RequestedNames(identity, tuple(dns_names), tuple(ip_addresses))
        cn = dns_names[0] if dns_names else None
        return self.issue(
            public_key=public_key,
            names=names,
            common_name=cn,
            lifetime=lifetime,
            actor=actor,
            action=action,
            limited=False,  # the CA's own: never refused for a workload's quota
        )

    def issue(
        self,
        *,
        public_key: CertificatePublicKeyTypes,
        names: RequestedNames,
        common_name: str | None,
        lifetime: dt.timedelta,
        actor: str,
        action: str,
        authorized_by: str = "",
        detail: str = "",
        spend_token: tuple[str, dt.datetime] | None = None,
        peer: str = "",
        limited: bool = True,
        call: Call | None = None,
    ) -> Issued:
        """Build, record and return a leaf for names already checked against policy. With
        spend_token (hash, now), the bootstrap token is spent in the transaction that stores
        the certificate: never a token spent without a certificate, nor the reverse. With
        call, its request record is stored in that transaction too; if a concurrent call with
        the same id stored first, its certificate is the answer (and this one is dropped)."""
        now = utc_seconds(self._clock.now())
        active = self._active()
        for _ in range(5):  # a 128-bit collision is as good as impossible; a loop costs nothing
            serial = random_serial()
            cert = build_leaf(
                active.issuer,
                LeafRequest(
                    public_key=public_key,
                    identity=names.identity,
                    dns_names=names.dns_names,
                    ip_addresses=names.ip_addresses,
                    common_name=common_name,
                    not_before=now - self.settings.backdate,
                    not_after=now + lifetime,
                    serial=serial,
                ),
                self.settings.public_urls,
            )
            active.responder.forget_unknown(serial)
            record = CertificateRecord(
                serial=serial_hex(serial),
                identity=names.identity,
                dns_names=names.dns_names,
                ip_addresses=tuple(str(ip) for ip in names.ip_addresses),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint_sha256=fingerprint_sha256(cert),
                der=cert.public_bytes(Encoding.DER),
                requested_by=actor,
                issued_at=now,
                authorized_by=authorized_by or actor,
                issuer=active.key_id,
                # No OCSP response yet: it is signed when first asked for, then kept and
                # refreshed. Most mTLS peers never ask, so a signature per issuance would be
                # spent on the issuance path (a third of its CPU) for nothing.
            )
            audit = AuditEvent(now, action, actor, record.serial, detail, peer)
            quota = self._quota(now) if limited else None
            request = call.record({"serial": record.serial}, now) if call else None
            try:
                # Stored (durably) before anyone sees it: nothing is handed out unrecorded.
                if spend_token is None:
                    self._store.add_certificate(record, audit, quota, request)
                elif not self._store.add_enrolled_certificate(
                    record, audit, *spend_token, quota, request
                ):
                    raise TokenSpent(
                        "the bootstrap token was used by a concurrent attempt",
                        reason=ErrorReason.TOKEN_INVALID,
                    )
            except DuplicateSerial:
                continue
            except DuplicateRequest:
                assert call is not None
                return self.replay(self.requests.winner(call))
            except QuotaExceeded as exc:
                raise self._over_quota(names.identity, exc, now) from None
            return self._issued(cert, record, active.issuer.chain_pem)
        raise RuntimeError("could not find an unused serial number")

    def _quota(self, now: dt.datetime) -> Quota:
        s = self.settings
        return Quota(
            now - s.identity_rate_window, s.identity_rate_limit, now, s.identity_live_limit
        )

    def _over_quota(self, identity: str, exc: QuotaExceeded, now: dt.datetime) -> LimitExceeded:
        wait = max(1.0, (exc.until - now).total_seconds())
        if exc.kind == "rate":
            what = (
                f"{exc.count} certificates were issued for {identity} within "
                f"{format_duration(self.settings.identity_rate_window)} ([issuance] "
                "identity_rate_limit)"
            )
        else:
            what = (
                f"{identity} holds {exc.count} unrevoked, unexpired certificates ([issuance] "
                "identity_live_limit); revoke the ones no longer used"
            )
        reason = (
            ErrorReason.IDENTITY_RATE_LIMITED
            if exc.kind == "rate"
            else ErrorReason.IDENTITY_LIVE_LIMIT
        )
        return LimitExceeded(
            f"{what}; retry in {format_duration(dt.timedelta(seconds=round(wait)))}",
            wait,
            reason=reason,
            metadata={"identity": identity},
        )

    def issue_ocsp_signer(
        self, issuer: Issuer, public_key: CertificatePublicKeyTypes, lifetime: dt.timedelta
    ) -> x509.Certificate:
        """Issue and record a delegated OCSP responder certificate of `issuer` (no OCSP of its
        own: it carries id-pkix-ocsp-nocheck)."""
        now = utc_seconds(self._clock.now())
        identity = f"spiffe://{self._policy.trust_domain}/signet/ocsp-responder"
        for _ in range(5):
            serial = random_serial()
            cert = build_ocsp_responder(
                issuer, public_key, now - self.settings.backdate, now + lifetime, serial
            )
            record = CertificateRecord(
                serial=serial_hex(serial),
                identity=identity,
                dns_names=(),
                ip_addresses=(),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint_sha256=fingerprint_sha256(cert),
                der=cert.public_bytes(Encoding.DER),
                requested_by=_CA_ACTOR,
                issued_at=now,
                authorized_by=_CA_ACTOR,
                issuer=issuer.certificate.extensions.get_extension_for_class(
                    x509.SubjectKeyIdentifier
                ).value.digest.hex(),
            )
            try:
                self._store.add_certificate(
                    record, AuditEvent(now, "issue-ocsp-signer", _CA_ACTOR, record.serial)
                )
            except DuplicateSerial:
                continue
            return cert
        raise RuntimeError("could not find an unused serial number")
