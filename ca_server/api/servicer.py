"""signet.ca.v1.CertificateAuthority: parse the request, one call into the core, build the reply."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import grpc
import structlog
from google.protobuf import duration_pb2, timestamp_pb2

from signet.ca.v1 import ca_pb2, ca_pb2_grpc

from ..core.authority import (
    CertificateAuthority,
    Issued,
    Preview,
    RenewalInfo,
    RenewalSelector,
)
from ..core.errors import (
    ErrorReason,
    InvalidRequest,
    OutOfRange,
    Unauthenticated,
    Unavailable,
)
from ..core.idempotency import parse_request_id
from ..core.ocsp import CertStatus
from ..core.policy import Caller
from ..core.profile import serial_hex
from ..core.renewal_window import RenewalWindow
from ..core.revocation import Reason
from ..core.store import AuditRecord, CertificateRecord, RevocationEvent
from ..metrics import instruments
from .watch import WatchGovernor

HEARTBEAT = 15.0  # seconds between messages of an idle watch stream

_STATUS = {
    CertStatus.GOOD: ca_pb2.GOOD,
    CertStatus.REVOKED: ca_pb2.REVOKED,
    CertStatus.UNKNOWN: ca_pb2.UNKNOWN,
}


def _ts(when: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _validity(has: bool, value: duration_pb2.Duration, name: str) -> dt.timedelta | None:
    """An optional Duration field (named `name` in the request) as a timedelta."""
    if not has:
        return None
    try:
        return value.ToTimedelta()
    except (OverflowError, ValueError):
        reason = (
            ErrorReason.TOKEN_TTL_OUT_OF_RANGE
            if name == "token_ttl"
            else ErrorReason.VALIDITY_OUT_OF_RANGE
        )
        raise InvalidRequest("validity is out of range", reason=reason, field=name) from None


def _when(request: Any, name: str) -> dt.datetime | None:
    """An optional Timestamp field as an aware datetime; out-of-range values are the caller's
    mistake, not an internal error."""
    if not request.HasField(name):
        return None
    try:
        when: dt.datetime = getattr(request, name).ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{name} is not a valid timestamp", reason=ErrorReason.TIMESTAMP_INVALID, field=name
        ) from None
    return when


def _reason(reason: Reason | None) -> ca_pb2.RevocationReason.ValueType:
    return ca_pb2.RevocationReason.ValueType(int(reason) if reason is not None else 0)


def _request_id(request: Any) -> str | None:
    request_id = parse_request_id(request.request_id)
    if request_id is not None:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def _window(window: RenewalWindow) -> ca_pb2.RenewalWindow:
    return ca_pb2.RenewalWindow(start=_ts(window.start), end=_ts(window.end))


def _duration(delta: dt.timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(delta)
    return d


def _issued(issued: Issued | Preview) -> ca_pb2.IssuedCertificate:
    if isinstance(issued, Preview):
        return ca_pb2.IssuedCertificate(
            not_before=_ts(issued.not_before),
            not_after=_ts(issued.not_after),
            identity=issued.identity,
            dns_names=issued.dns_names,
            ip_addresses=issued.ip_addresses,
        )
    structlog.contextvars.bind_contextvars(serial=issued.serial)
    reply = ca_pb2.IssuedCertificate(
        certificate_pem=issued.certificate_pem,
        chain_pem=issued.chain_pem,
        serial_number=issued.serial,
        not_before=_ts(issued.not_before),
        not_after=_ts(issued.not_after),
        fingerprint_sha256=issued.fingerprint_sha256,
        identity=issued.identity,
        dns_names=issued.dns_names,
        ip_addresses=issued.ip_addresses,
    )
    if issued.renewal is not None:
        _renewal_fields(reply, issued.renewal)
    return reply


def _renewal_fields(
    reply: ca_pb2.IssuedCertificate | ca_pb2.GetRenewalInfoResponse, info: RenewalInfo
) -> None:
    reply.renewal_window.CopyFrom(_window(info.window))
    reply.explanation_url = info.explanation_url
    reply.retry_after.CopyFrom(_duration(info.retry_after))


def _event(r: AuditRecord) -> ca_pb2.AuditEvent:
    return ca_pb2.AuditEvent(
        sequence=r.id,
        time=_ts(r.at),
        action=r.action,
        actor=r.actor,
        peer=r.peer,
        serial_number=r.serial or "",
        outcome=r.outcome,
        detail=r.detail,
        chain_position=r.seq or 0,
        hash=r.hash or "",
    )


def _summary(r: CertificateRecord) -> ca_pb2.CertificateSummary:
    return ca_pb2.CertificateSummary(
        serial_number=r.serial,
        identity=r.identity,
        dns_names=r.dns_names,
        ip_addresses=r.ip_addresses,
        not_before=_ts(r.not_before),
        not_after=_ts(r.not_after),
        status=ca_pb2.REVOKED if r.status == "revoked" else ca_pb2.GOOD,
        revoked_at=_ts(r.revoked_at),
        reason=_reason(r.reason),
        fingerprint_sha256=r.fingerprint_sha256,
        requested_by=r.requested_by,
    )


def _revocation_event(e: RevocationEvent) -> ca_pb2.RevocationEvent:
    return ca_pb2.RevocationEvent(
        sequence=e.sequence,
        serial_number=e.serial,
        kind=ca_pb2.RevocationEvent.REVOKED
        if e.kind == "revoked"
        else ca_pb2.RevocationEvent.RELEASED,
        reason=_reason(e.reason),
        revoked_at=_ts(e.revoked_at),
        time=_ts(e.at),
        not_after=_ts(e.not_after),
    )


def _revocations(head: int, events: Sequence[RevocationEvent]) -> ca_pb2.WatchRevocationsResponse:
    return ca_pb2.WatchRevocationsResponse(
        events=[_revocation_event(e) for e in events], head_sequence=head
    )


class CertificateAuthorityServicer(ca_pb2_grpc.CertificateAuthorityServicer):
    def __init__(self, authority: CertificateAuthority, watch: WatchGovernor | None = None) -> None:
        self._ca = authority
        self._watch = watch or WatchGovernor(limit=16, stall_timeout=30.0)

    def _caller(self, context: grpc.ServicerContext) -> Caller:
        # grpc-stubs types auth_context values as ints; they are bytes.
        certs = cast(list[bytes], context.auth_context().get("x509_pem_cert"))
        if not certs:
            raise Unauthenticated(
                "a client certificate issued by this CA is required",
                reason=ErrorReason.CLIENT_CERTIFICATE_MISSING,
            )
        caller = self._ca.authenticate(certs[0])  # cached per certificate, so the peer is added
        structlog.contextvars.bind_contextvars(caller=caller.identity)
        return dataclasses.replace(caller, peer=context.peer())

    def SignCertificate(
        self, request: ca_pb2.SignCertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.IssuedCertificate:
        caller = self._caller(context)
        validity = _validity(request.HasField("validity"), request.validity, "validity")
        return _issued(
            self._ca.sign(
                caller, request.csr_pem, validity, _request_id(request), request.validate_only
            )
        )

    def RenewCertificate(
        self, request: ca_pb2.RenewCertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.IssuedCertificate:
        caller = self._caller(context)
        validity = _validity(request.HasField("validity"), request.validity, "validity")
        renewed = self._ca.renew(
            caller,
            request.csr_pem,
            validity,
            request.revoke_previous,
            _request_id(request),
            request.validate_only,
        )
        return _issued(renewed)

    def RevokeCertificate(
        self, request: ca_pb2.RevokeCertificateRequest, context: grpc.ServicerContext
    ) -> ca_pb2.RevokeCertificateResponse:
        caller = self._caller(context)
        try:
            reason = Reason(request.reason)
        except ValueError:
            raise InvalidRequest(
                f"reason {request.reason} is not an RFC 5280 reason code",
                reason=ErrorReason.REVOCATION_REASON_INVALID,
                field="reason",
            ) from None
        invalidity_date = _when(request, "invalidity_date")
        serial, revoked_at = self._ca.revoke(
            caller, request.serial_number, reason, invalidity_date, _request_id(request)
        )
        structlog.contextvars.bind_contextvars(serial=serial)
        instruments().revocation(reason.name)
        return ca_pb2.RevokeCertificateResponse(serial_number=serial, revoked_at=_ts(revoked_at))

    def GetCertificateStatus(
        self, request: ca_pb2.GetCertificateStatusRequest, context: grpc.ServicerContext
    ) -> ca_pb2.GetCertificateStatusResponse:
        self._caller(context)
        result = self._ca.status(request.serial_number)
        a = result.answer
        structlog.contextvars.bind_contextvars(serial=serial_hex(a.serial))
        return ca_pb2.GetCertificateStatusResponse(
            status=_STATUS[a.status],
            revoked_at=_ts(a.revoked_at),
            reason=_reason(a.reason),
            this_update=_ts(result.this_update),
            next_update=_ts(result.next_update),
            ocsp_response=result.ocsp_response,
        )

    def GetCRL(
        self, request: ca_pb2.GetCRLRequest, context: grpc.ServicerContext
    ) -> ca_pb2.GetCRLResponse:
        self._caller(context)
        crl = self._ca.crl()
        return ca_pb2.GetCRLResponse(
            crl=crl.der,
            crl_number=crl.number,
            this_update=_ts(crl.this_update),
            next_update=_ts(crl.next_update),
        )

    def GetTrustBundle(
        self, request: ca_pb2.GetTrustBundleRequest, context: grpc.ServicerContext
    ) -> ca_pb2.GetTrustBundleResponse:
        self._caller(context)
        return self._trust_bundle(self._ca.trust_bundle())

    def _trust_bundle(self, pems: tuple[str, str]) -> ca_pb2.GetTrustBundleResponse:
        root, intermediates = pems
        return ca_pb2.GetTrustBundleResponse(
            root_certificates_pem=root,
            intermediate_certificates_pem=intermediates,
            spiffe_bundle_json=self._ca.spiffe_bundle(),
        )

    def WatchTrustBundle(
        self, request: ca_pb2.WatchTrustBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[ca_pb2.GetTrustBundleResponse]:
        self._caller(context)
        wakes = self._ca.revocation_feed  # its pause ends at once at shutdown
        with self._watch.stream(context) as stream:
            sent: tuple[str, str] | None = None
            while context.is_active():
                if wakes.closed:
                    raise Unavailable(
                        "this CA server is shutting down: watch again",
                        reason=ErrorReason.SHUTTING_DOWN,
                    )
                self._caller(context)  # a caller revoked meanwhile is cut off
                current = self._ca.trust_bundle()  # in memory: a look a second is nothing
                if current == sent:
                    wakes.pause(1.0)
                    continue
                message = self._trust_bundle(current)
                self._watch.sending(stream)
                yield message
                self._watch.sent(stream)
                sent = current

    def CreateBootstrapToken(
        self, request: ca_pb2.CreateBootstrapTokenRequest, context: grpc.ServicerContext
    ) -> ca_pb2.CreateBootstrapTokenResponse:
        caller = self._caller(context)
        token, expires_at = self._ca.create_token(
            caller,
            request.identity,
            list(request.dns_names),
            list(request.ip_addresses),
            _validity(request.HasField("token_ttl"), request.token_ttl, "token_ttl"),
            _validity(
                request.HasField("certificate_ttl"), request.certificate_ttl, "certificate_ttl"
            ),
            _request_id(request),
        )
        return ca_pb2.CreateBootstrapTokenResponse(
            token=token,
            expires_at=_ts(expires_at),
            root_fingerprint_sha256=self._ca.root_fingerprint(),
        )

    def Enroll(
        self, request: ca_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> ca_pb2.IssuedCertificate:
        # The peer's address (without its port) is what failed attempts are counted by.
        peer = context.peer().rsplit(":", 1)[0]
        structlog.contextvars.bind_contextvars(caller=f"bootstrap:{peer}")
        return _issued(self._ca.enroll(request.token, request.csr_pem, peer, _request_id(request)))

    def ListCertificates(
        self, request: ca_pb2.ListCertificatesRequest, context: grpc.ServicerContext
    ) -> ca_pb2.ListCertificatesResponse:
        caller = self._caller(context)
        status: Literal["good", "revoked"] | None
        if request.status == ca_pb2.STATUS_UNSPECIFIED:
            status = None
        elif request.status == ca_pb2.GOOD:
            status = "good"
        elif request.status == ca_pb2.REVOKED:
            status = "revoked"
        else:
            raise InvalidRequest(
                "status filter must be GOOD or REVOKED (or unset for all)",
                reason=ErrorReason.STATUS_FILTER_INVALID,
                field="status",
            )

        expiring_before = _when(request, "expiring_before")
        page = self._ca.list_certificates(
            caller, status, expiring_before, request.page_size, request.page_token
        )
        return ca_pb2.ListCertificatesResponse(
            certificates=[_summary(r) for r in page.records],
            next_page_token=page.next_page_token,
        )

    def ListAuditEvents(
        self, request: ca_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> ca_pb2.ListAuditEventsResponse:
        page = self._ca.list_audit_events(
            self._caller(context),
            since=_when(request, "since"),
            until=_when(request, "until"),
            action=request.action,
            identity=request.identity,
            serial=request.serial_number,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ca_pb2.ListAuditEventsResponse(
            events=[_event(r) for r in page.events], next_page_token=page.next_page_token
        )

    def WatchRevocations(
        self, request: ca_pb2.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[ca_pb2.WatchRevocationsResponse]:
        self._caller(context)
        feed = self._ca.revocation_feed
        since = request.since_sequence
        head = feed.head()
        if since > head:
            raise OutOfRange(
                f"since_sequence {since} is ahead of this CA's newest revocation event "
                f"({head}), e.g. after a restore from backup: watch again from 0",
                reason=ErrorReason.SEQUENCE_AHEAD,
                field="since_sequence",
            )
        with self._watch.stream(context) as stream:
            beat = -HEARTBEAT  # the first message goes out at once, events or not
            while context.is_active():
                if feed.closed:
                    raise Unavailable(
                        "this CA server is shutting down: watch again, from the last "
                        "sequence received",
                        reason=ErrorReason.SHUTTING_DOWN,
                    )
                # Asked each round (a cache hit): a caller revoked meanwhile is cut off, once
                # it has been sent what happened so far (its own revocation among it).
                try:
                    self._caller(context)
                except Unauthenticated:
                    head, events = feed.after(since, wait=0)
                    if events:
                        yield _revocations(head, events)
                    raise
                head, events = feed.after(since, wait=1.0)
                if not events and time.monotonic() - beat < HEARTBEAT:
                    continue
                message = _revocations(head, events)
                self._watch.sending(stream)
                yield message
                self._watch.sent(stream)
                beat = time.monotonic()
                # Without events the reader has all up to head (the rest expired and pruned).
                since = events[-1].sequence if events else max(since, head)

    def GetRenewalInfo(
        self, request: ca_pb2.GetRenewalInfoRequest, context: grpc.ServicerContext
    ) -> ca_pb2.GetRenewalInfoResponse:
        self._caller(context)
        info = self._ca.renewal_info(request.serial_number)
        structlog.contextvars.bind_contextvars(serial=request.serial_number)
        reply = ca_pb2.GetRenewalInfoResponse()
        _renewal_fields(reply, info)
        return reply

    def RenewNow(
        self, request: ca_pb2.RenewNowRequest, context: grpc.ServicerContext
    ) -> ca_pb2.RenewNowResponse:
        caller = self._caller(context)
        selector = RenewalSelector(
            serial=request.serial_number,
            identity=request.identity,
            issued_before=_when(request, "issued_before"),
            issuer_fingerprint=request.issuer_fingerprint_sha256,
            explanation_url=request.explanation_url,
        )
        result = self._ca.renew_now(caller, selector)
        return ca_pb2.RenewNowResponse(
            certificates=result.count, renewal_window=_window(result.window)
        )
