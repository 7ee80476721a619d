"""Errors a program can act on (AIP-193): every refusal carries a google.rpc.Status with one
ErrorInfo whose reason is one of a closed list, published in protos/signet/ca/v1/errors.proto
and the README; a field at fault gets a BadRequest, a wait that helps a RetryInfo. The list,
the proto and the README agree, every raise site states its reason, and each RPC's refusals
are checked over real mTLS (others in the files ELSEWHERE names, where they were already)."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import duration_pb2
from structlog.testing import capture_logs

from ca_server.core import errors
from ca_server.core.errors import ErrorReason
from ca_server.core.keys import signature_hash
from ca_server.core.profile import random_serial
from signet.ca.v1 import ca_pb2, errors_pb2
from tests.conftest import CaServer, Credentials
from tests.errdetails import assert_refused
from tests.pki import key_pem, make_csr, make_key, spiffe

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "signet.ca.v1.CertificateAuthority"
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# -- the list: Python, proto and README agree --------------------------------------------------


def _proto_reasons() -> list[tuple[str, int]]:
    enum = errors_pb2.DESCRIPTOR.enum_types_by_name["ErrorReason"]
    return [(v.name, v.number) for v in enum.values]


def test_the_core_list_is_the_proto_enum_in_the_same_order() -> None:
    proto = _proto_reasons()
    assert proto[0] == ("ERROR_REASON_UNSPECIFIED", 0)
    assert [name for name, _ in proto[1:]] == [r.value for r in ErrorReason]
    assert [number for _, number in proto] == list(range(len(proto)))  # none skipped or reused
    assert all(r.value == r.name and re.fullmatch(r"[A-Z][A-Z0-9_]*", r.value) for r in ErrorReason)


def test_every_error_class_has_a_default_reason() -> None:
    classes = [errors.SignetError, *_subclasses(errors.SignetError)]
    for cls in classes:
        assert isinstance(cls.default_reason, ErrorReason), cls
        assert cls("x").reason is cls.default_reason


def _readme_reasons() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Error reasons\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z0-9_]+)` \|", section, re.MULTILINE)


def test_the_readme_lists_every_reason_once_in_order() -> None:
    assert _readme_reasons() == [r.value for r in ErrorReason]


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_raise_site_in_the_code_states_a_listed_reason() -> None:
    """Each construction of a domain error in ca_server/ says reason=ErrorReason.<listed>
    (or a variable mypy types as one). ConfigurationError alone may rely on its default: it
    stops the server at start-up and never reaches a caller."""
    names = {cls.__name__ for cls in _subclasses(errors.SignetError)} | {"SignetError"}
    startup_only = {"ConfigurationError"}
    listed = {r.name for r in ErrorReason}
    missing, unlisted, seen = [], [], 0
    for path in sorted((ROOT / "ca_server").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "ErrorReason"
                and node.attr not in listed
            ):
                unlisted.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called not in names or called in startup_only:
                continue
            seen += 1
            if not any(k.arg == "reason" for k in node.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {called}(...)")
    assert seen > 50, "the walk found too few raise sites: has the code moved?"
    assert not missing, "raise sites without reason=:\n" + "\n".join(missing)
    assert not unlisted, "reasons not in ErrorReason:\n" + "\n".join(unlisted)


# -- each RPC's refusals over real mTLS --------------------------------------------------------


@dataclass(frozen=True)
class Case:
    rpc: str
    request: Callable[[CaServer], Any]  # a message, or raw bytes for a malformed request
    code: grpc.StatusCode
    reason: str
    field: str | None = None
    needle: str = ""  # in the message (kept as it was: people and scripts read it)


def _valid_csr(path: str = "web/details") -> str:
    return make_csr(uris=[spiffe(path)])[1]


def _seconds(n: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=n)


def _revoked_serial(ca: CaServer) -> str:
    serial = ca.issue("web/details-revoked").serial
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=serial), timeout=30
        )
    return serial


def _token(**fields: Any) -> Callable[[CaServer], ca_pb2.CreateBootstrapTokenRequest]:
    fields.setdefault("identity", spiffe("web/details-token"))
    return lambda ca: ca_pb2.CreateBootstrapTokenRequest(**fields)


def _audit(**fields: Any) -> Callable[[CaServer], ca_pb2.ListAuditEventsRequest]:
    return lambda ca: ca_pb2.ListAuditEventsRequest(**fields)


def _audit_range(ca: CaServer) -> ca_pb2.ListAuditEventsRequest:
    request = ca_pb2.ListAuditEventsRequest()
    request.since.seconds, request.until.seconds = 2_000_000_000, 1_000_000_000
    return request


def _audit_bad_since(ca: CaServer) -> ca_pb2.ListAuditEventsRequest:
    request = ca_pb2.ListAuditEventsRequest()
    request.since.seconds = 10**13
    return request


UNKNOWN_SERIAL = "0123456789abcdef0123456789abcdef"

CASES: dict[str, Case] = {
    "sign-validity-overflow": Case(
        "SignCertificate",
        lambda ca: ca_pb2.SignCertificateRequest(csr_pem=_valid_csr(), validity=_seconds(10**15)),
        INVALID, "VALIDITY_OUT_OF_RANGE", "validity", "out of range",
    ),
    "sign-reserved-name": Case(
        "SignCertificate",
        lambda ca: ca_pb2.SignCertificateRequest(
            csr_pem=make_csr(uris=[spiffe("web/x")], dns=["ca.signet.invalid"])[1]
        ),
        grpc.StatusCode.PERMISSION_DENIED, "NAME_RESERVED", None, "reserved",
    ),
    "renew-empty-csr": Case(
        "RenewCertificate", lambda ca: ca_pb2.RenewCertificateRequest(csr_pem=""),
        INVALID, "CSR_MISSING", "csr_pem", "empty",
    ),
    "revoke-not-hex": Case(
        "RevokeCertificate", lambda ca: ca_pb2.RevokeCertificateRequest(serial_number="zz"),
        INVALID, "SERIAL_INVALID", "serial_number", "not hexadecimal",
    ),
    "revoke-unknown": Case(
        "RevokeCertificate",
        lambda ca: ca_pb2.RevokeCertificateRequest(serial_number=UNKNOWN_SERIAL),
        grpc.StatusCode.NOT_FOUND, "CERTIFICATE_NOT_FOUND", "serial_number", UNKNOWN_SERIAL,
    ),
    "revoke-reason-7": Case(
        "RevokeCertificate",
        lambda ca: ca_pb2.RevokeCertificateRequest(serial_number=UNKNOWN_SERIAL, reason=7),  # type: ignore[arg-type]
        INVALID, "REVOCATION_REASON_INVALID", "reason", "RFC 5280",
    ),
    "revoke-twice": Case(
        "RevokeCertificate",
        lambda ca: ca_pb2.RevokeCertificateRequest(serial_number=_revoked_serial(ca)),
        grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REVOKED", None, "already revoked",
    ),
    "status-empty-serial": Case(
        "GetCertificateStatus", lambda ca: ca_pb2.GetCertificateStatusRequest(),
        INVALID, "SERIAL_INVALID", "serial_number", "required",
    ),
    "status-serial-too-long": Case(
        "GetCertificateStatus",
        lambda ca: ca_pb2.GetCertificateStatusRequest(serial_number="ab" * 21),
        INVALID, "SERIAL_INVALID", "serial_number", "20 octets",
    ),
    "crl-malformed-request": Case(
        "GetCRL", lambda ca: b"\x0a\x05ab", INVALID, "REQUEST_MALFORMED", None, "protobuf",
    ),
    "bundle-request-too-large": Case(
        "GetTrustBundle", lambda ca: b"\x00" * (1024 * 1024 + 1),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE", None, "limit",
    ),
    "list-negative-page-size": Case(
        "ListCertificates", lambda ca: ca_pb2.ListCertificatesRequest(page_size=-1),
        INVALID, "PAGE_SIZE_INVALID", "page_size", "negative",
    ),
    "list-status-unknown": Case(
        "ListCertificates", lambda ca: ca_pb2.ListCertificatesRequest(status=ca_pb2.UNKNOWN),
        INVALID, "STATUS_FILTER_INVALID", "status", "GOOD or REVOKED",
    ),
    "token-identity-not-spiffe": Case(
        "CreateBootstrapToken", _token(identity="web/plain"),
        INVALID, "NAME_INVALID", "identity",
    ),
    "token-bad-dns-name": Case(
        "CreateBootstrapToken", _token(dns_names=["a b.example"]),
        INVALID, "NAME_INVALID", "dns_names",
    ),
    "token-bad-ip": Case(
        "CreateBootstrapToken", _token(ip_addresses=["300.1.2.3"]),
        INVALID, "NAME_INVALID", "ip_addresses",
    ),
    "token-zoned-ip": Case(
        "CreateBootstrapToken", _token(ip_addresses=["fe80::1%eth0"]),
        INVALID, "NAME_INVALID", "ip_addresses", "zone",
    ),
    "token-ttl-overflow": Case(
        "CreateBootstrapToken", _token(token_ttl=_seconds(10**15)),
        INVALID, "TOKEN_TTL_OUT_OF_RANGE", "token_ttl",
    ),
    "token-certificate-ttl-over-cap": Case(
        "CreateBootstrapToken", _token(certificate_ttl=_seconds(3650 * 86400)),
        INVALID, "VALIDITY_OUT_OF_RANGE", "certificate_ttl", "cap",
    ),
    "token-reserved-identity": Case(
        "CreateBootstrapToken", _token(identity=spiffe("signet/ocsp")),
        grpc.StatusCode.PERMISSION_DENIED, "NAME_RESERVED", None, "reserved",
    ),
    "audit-until-before-since": Case(
        "ListAuditEvents", _audit_range, INVALID, "TIME_RANGE_INVALID", "until", "after since",
    ),
    "audit-bad-since": Case(
        "ListAuditEvents", _audit_bad_since, INVALID, "TIMESTAMP_INVALID", "since", "since",
    ),
    "audit-action-too-long": Case(
        "ListAuditEvents", _audit(action="x" * 1025),
        INVALID, "FILTER_TOO_LONG", "action", "longer than",
    ),
    "audit-bad-page-token": Case(
        "ListAuditEvents", _audit(page_token="zz"),
        INVALID, "PAGE_TOKEN_INVALID", "page_token", "page_token",
    ),
    "audit-negative-page-size": Case(
        "ListAuditEvents", _audit(page_size=-1),
        INVALID, "PAGE_SIZE_INVALID", "page_size", "negative",
    ),
    "audit-bad-serial": Case(
        "ListAuditEvents", _audit(serial_number="0xg1"),
        INVALID, "SERIAL_INVALID", "serial_number", "not hexadecimal",
    ),
}  # fmt: skip


def _raw_call(channel: grpc.Channel, rpc: str) -> Callable[..., Any]:
    return channel.unary_unary(
        f"/{SERVICE}/{rpc}", request_serializer=None, response_deserializer=None
    )


@pytest.mark.parametrize("name", list(CASES))
def test_each_refusal_carries_its_reason_and_field(ca: CaServer, name: str) -> None:
    case = CASES[name]
    request = case.request(ca)
    with ca.admin_channel() as ch, pytest.raises(grpc.RpcError) as info:
        if isinstance(request, bytes):
            _raw_call(ch, case.rpc)(request, timeout=30)
        else:
            getattr(ca.stub(ch), case.rpc)(request, timeout=30)
    assert case.needle in (info.value.details() or ""), info.value.details()
    assert_refused(info.value, case.code, case.reason, case.field)


def test_renewing_with_the_current_key_is_renewal_key_reused(ca: CaServer) -> None:
    creds = ca.issue("web/details-same-key")
    key = serialization.load_pem_private_key(creds.key_pem, None)
    _, csr = make_csr(key)  # type: ignore[arg-type]
    with ca.channel(creds.fullchain, creds.key_pem) as ch, pytest.raises(grpc.RpcError) as info:
        ca.stub(ch).RenewCertificate(ca_pb2.RenewCertificateRequest(csr_pem=csr), timeout=30)
    assert "needs a new key" in (info.value.details() or "")
    assert_refused(info.value, INVALID, "RENEWAL_KEY_REUSED", "csr_pem")


def _unrecorded(ca: CaServer, uri: str | None) -> Credentials:
    """A client certificate this CA's intermediate signed but never recorded: with `uri` as
    its SPIFFE ID, or none at all."""
    issuer = ca.authority.issuer
    key = make_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unrecorded")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if uri is not None:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(issuer.key, signature_hash(issuer.key))
    return Credentials(
        key_pem(key), cert.public_bytes(serialization.Encoding.PEM), issuer.chain_pem.encode(), ""
    )


@pytest.mark.parametrize(
    ("uri", "reason"),
    [(spiffe("admin"), "CALLER_UNKNOWN"), (None, "CALLER_WITHOUT_IDENTITY")],
    ids=["not-in-the-store", "no-spiffe-id"],
)
def test_a_certificate_of_this_ca_it_cannot_vouch_for_is_refused_with_its_reason(
    ca: CaServer, uri: str | None, reason: str
) -> None:
    creds = _unrecorded(ca, uri)
    with ca.channel(creds.fullchain, creds.key_pem) as ch, pytest.raises(grpc.RpcError) as info:
        ca.stub(ch).GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=30)
    assert_refused(info.value, grpc.StatusCode.UNAUTHENTICATED, reason)


def test_a_bug_is_internal_with_reason_internal_and_nothing_of_it_leaves(
    ca: CaServer, admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "-----BEGIN PRIVATE KEY----- not for callers"

    def broken() -> None:
        raise RuntimeError(secret)  # a bug in the core, as far as the adapter can tell

    monkeypatch.setattr(ca.authority, "crl", broken)
    with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
        admin.GetCRL(ca_pb2.GetCRLRequest(), timeout=30)
    got = assert_refused(info.value, grpc.StatusCode.INTERNAL, "INTERNAL")
    assert got.message == "internal error; the CA's log has the details"
    assert got.metadata == {}
    trailers = repr(info.value.trailing_metadata())  # type: ignore[attr-defined]
    assert secret not in trailers and "Traceback" not in trailers and "RuntimeError" not in trailers
    assert any(e["event"] == "rpc_internal_error" for e in logs)  # the log has it


# -- where the other reasons are checked -------------------------------------------------------

# Reasons checked by tests that already covered the refusal: the detail assertions were added
# to them rather than repeated here.
ELSEWHERE: dict[str, dict[str, list[str]]] = {
    "test_renewal_info.py": {
        "test_bad_renew_now_requests_get_a_clear_status": [
            "SELECTOR_EMPTY",
            "URL_INVALID",
            "FINGERPRINT_INVALID",
        ],
        "test_renew_now_of_a_revoked_serial_is_a_failed_precondition": ["CERTIFICATE_NOT_LIVE"],
    },
    "test_idempotency_api.py": {
        "test_a_different_request_under_the_same_id_is_already_exists": ["REQUEST_ID_REUSED"],
        "test_a_request_id_that_is_no_uuid_is_invalid_argument": ["REQUEST_ID_INVALID"],
        "test_a_retried_token_request_is_refused_without_a_second_token": ["ANSWER_NOT_KEPT"],
    },
    "test_watch.py": {
        "test_a_sequence_ahead_of_the_ca_is_out_of_range": ["SEQUENCE_AHEAD"],
        "test_streams_beyond_max_watchers_are_refused_with_retry_info": ["WATCHERS_EXHAUSTED"],
        "test_stopping_the_server_ends_open_streams_with_unavailable": ["SHUTTING_DOWN"],
    },
    "test_api_mtls.py": {
        "test_a_request_that_is_not_valid_protobuf_is_invalid_argument": ["REQUEST_MALFORMED"],
        "test_requests_over_the_size_limit_are_refused_with_details": ["REQUEST_TOO_LARGE"],
        "test_bad_csrs_get_a_clear_status": [
            "CSR_MISSING",
            "CSR_MALFORMED",
            "CSR_TOO_LARGE",
            "CSR_SIGNATURE_INVALID",
            "CSR_IDENTITY_COUNT",
            "NAME_INVALID",
        ],
        "test_keys_of_other_algorithms_are_refused_not_internal": ["KEY_NOT_ALLOWED"],
        "test_validity_outside_the_allowed_range_is_refused": ["VALIDITY_OUT_OF_RANGE"],
        "test_an_out_of_range_timestamp_is_invalid_argument": ["TIMESTAMP_INVALID"],
        "test_invalidity_date_reaches_the_crl_and_may_not_be_in_the_future": [
            "INVALIDITY_DATE_IN_FUTURE"
        ],
        "test_bad_page_token_is_invalid_argument": ["PAGE_TOKEN_INVALID"],
        "test_hold_and_release_through_the_api": ["NOT_ON_HOLD"],
    },
    "test_bootstrap.py": {
        "test_a_bad_csr_does_not_burn_the_token": ["CSR_NOT_PEM"],
        "test_a_token_with_too_many_names_is_resource_exhausted": ["TOO_MANY_NAMES"],
        "test_a_zero_token_ttl_is_invalid_argument_not_fifteen_minutes": ["TOKEN_TTL_OUT_OF_RANGE"],
        "test_only_admins_mint_tokens_and_only_for_the_trust_domain": [
            "IDENTITY_OUTSIDE_TRUST_DOMAIN"
        ],
        "test_wrong_and_reused_tokens_are_unauthenticated_and_audited": ["TOKEN_INVALID"],
        "test_a_burst_of_bad_tokens_from_one_peer_is_rate_limited": ["ENROLL_RATE_LIMITED"],
    },
    "test_error_details.py": {
        "test_renewing_with_the_current_key_is_renewal_key_reused": ["RENEWAL_KEY_REUSED"],
        "test_a_certificate_of_this_ca_it_cannot_vouch_for_is_refused_with_its_reason": [
            "CALLER_UNKNOWN",
            "CALLER_WITHOUT_IDENTITY",
        ],
        "test_a_bug_is_internal_with_reason_internal_and_nothing_of_it_leaves": ["INTERNAL"],
    },
    "test_authz_matrix.py": {
        "test_each_caller_gets_exactly_its_cells_outcome": [
            "IDENTITY_NOT_OWN",
            "NAME_NOT_ALLOWED",
            "CERTIFICATE_NOT_OWN",
            "ADMIN_REQUIRED",
            "CALLER_EXPIRED",
            "CALLER_REVOKED",
        ],
    },
    "test_quotas.py": {
        "test_over_the_rate_limit_is_resource_exhausted_with_retry_info": ["IDENTITY_RATE_LIMITED"],
        "test_an_identity_holds_at_most_the_live_limit": ["IDENTITY_LIVE_LIMIT"],
    },
    "test_faults.py": {
        "refused": ["STORE_UNAVAILABLE"],
    },
}
# Reasons no test over the API reaches, and why.
UNREACHED: dict[str, str] = {
    "REQUEST_INVALID": "the InvalidRequest default: every raise site states a precise reason",
    "POLICY_DENIED": "the PolicyViolation default, likewise",
    "STATE_CONFLICT": "the Conflict default, likewise",
    "LIMIT_EXCEEDED": "the LimitExceeded default, likewise",
    "CLIENT_CERTIFICATE_MISSING": "the API listener requires a certificate at the handshake",
    "CLIENT_CERTIFICATE_INVALID": "gRPC's TLS refuses a certificate it cannot parse first",
    "CA_MISCONFIGURED": "ConfigurationError stops the server at start-up",
    "ROTATION_REFUSED": "ca-server's rotation commands raise it (tests/test_rotation.py checks "
    "their refusals); no RPC does",
    "REQUEST_IN_PROGRESS": "a twin's record vanishing between its commit and the read (expiry "
    "within that instant)",
}


def test_every_reason_is_checked_somewhere_or_said_why_not() -> None:
    elsewhere = {r for tests in ELSEWHERE.values() for rs in tests.values() for r in rs}
    covered = {case.reason for case in CASES.values()} | elsewhere
    assert not covered & set(UNREACHED)
    assert covered | set(UNREACHED) == {r.value for r in ErrorReason}
    for file, tests in ELSEWHERE.items():
        source = (ROOT / "tests" / file).read_text()
        for function, reasons in tests.items():
            assert re.search(rf"^def {function}\(", source, re.MULTILINE), (file, function)
            for reason in reasons:
                assert f'"{reason}"' in source, f"{file} does not check {reason}"


# -- as grpcurl shows it -------------------------------------------------------------------------


def test_grpcurl_shows_the_error_info_and_the_field_violation(ca: CaServer) -> None:
    result = ca.grpcurl().run(
        f"{SERVICE}/RevokeCertificate", data={"serial_number": "zz"}, flags=["-format-error"]
    )
    assert result.returncode != 0
    status = json.loads(result.stderr)  # -format-error: the google.rpc.Status as JSON
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status["message"] == "serial_number 'zz' is not hexadecimal"
    info, bad_request = status["details"]
    assert info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "SERIAL_INVALID",
        "domain": "signet.ca.v1",
        "metadata": {"field": "serial_number"},
    }
    assert bad_request["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert bad_request["field_violations"] == [
        {
            "field": "serial_number",
            "description": "serial_number 'zz' is not hexadecimal",
            "reason": "SERIAL_INVALID",
        }
    ]


def test_grpcurl_without_flags_prints_the_reason_under_details(ca: CaServer) -> None:
    result = ca.grpcurl().run(f"{SERVICE}/ListCertificates", data={"page_size": -1})
    out = result.stdout + result.stderr
    assert re.search(r"^\s*Code: InvalidArgument$", out, re.MULTILINE), out
    assert re.search(r"^\s*Details:$", out, re.MULTILINE), out
    assert '"reason":"PAGE_SIZE_INVALID"' in out and '"domain":"signet.ca.v1"' in out, out
