"""The gRPC API end to end over real mTLS on 127.0.0.1: who may do what, and the refusals."""

from __future__ import annotations

import base64
import datetime as dt

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from ca_server.core.authority import CertificateAuthority
from ca_server.core.clock import FakeClock
from ca_server.core.keys import generate_key
from ca_server.core.profile import (
    Issuer,
    LeafRequest,
    build_leaf,
    build_root,
    ca_name,
    pem,
    serial_hex,
)
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, Credentials
from tests.errdetails import assert_refused
from tests.pki import key_pem, make_csr, make_key, spiffe
from tests.tools import openssl


def _refusal(fn, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=30)
    return info.value


def _call_code(fn, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    error = _refusal(fn, request)
    return error.code(), error.details() or ""


def _sign_request(csr: str, validity: dt.timedelta | None = None) -> ca_pb2.SignCertificateRequest:
    request = ca_pb2.SignCertificateRequest(csr_pem=csr)
    if validity is not None:
        request.validity.FromTimedelta(validity)
    return request


def _sans(pem: str) -> tuple[list[str], list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
        [str(i) for i in san.get_values_for_type(x509.IPAddress)],
    )


# -- issuance -------------------------------------------------------------------------------


def test_sign_returns_certificate_chain_and_metadata_stored_first(ca: CaServer, admin) -> None:
    _, csr = make_csr(uris=[spiffe("web/meta")], dns=["meta.web.internal"])
    reply = admin.SignCertificate(_sign_request(csr, dt.timedelta(hours=2)), timeout=30)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert reply.serial_number == serial_hex(cert.serial_number)
    assert reply.chain_pem == (ca.data_dir / "intermediate.pem").read_text()
    assert reply.not_after.ToDatetime(dt.UTC) == cert.not_valid_after_utc
    assert reply.not_after.ToDatetime(dt.UTC) - reply.not_before.ToDatetime(dt.UTC) == dt.timedelta(
        hours=2, minutes=1
    )
    stored = ca.store.get_certificate(reply.serial_number)
    assert stored is not None
    assert stored.fingerprint_sha256 == reply.fingerprint_sha256
    assert stored.der == cert.public_bytes(serialization.Encoding.DER)
    assert stored.requested_by == spiffe("admin")


def test_csr_asking_for_ca_true_gets_ca_false(admin) -> None:
    _, csr = make_csr(
        uris=[spiffe("web/sneaky")],
        extra_extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)],
    )
    reply = admin.SignCertificate(_sign_request(csr), timeout=30)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False


def test_workload_may_sign_its_own_identity_with_names_its_policy_allows(ca: CaServer) -> None:
    creds = ca.issue("web/self")
    _, csr = make_csr(uris=[spiffe("web/self")], dns=["self.web.internal"], ips=["10.1.2.3"])
    with ca.channel(creds.fullchain, creds.key_pem) as ch:
        reply = ca.stub(ch).SignCertificate(_sign_request(csr), timeout=30)
    assert _sans(reply.certificate_pem) == (
        [spiffe("web/self")],
        ["self.web.internal"],
        ["10.1.2.3"],
    )


@pytest.mark.parametrize(
    ("uri", "dns", "ips", "needle"),
    [
        (spiffe("web/other"), [], [], "only for its own identity"),
        (spiffe("web/self2"), ["evil.example.com"], [], "evil.example.com"),
        (spiffe("web/self2"), [], ["192.168.1.1"], "192.168.1.1"),
        ("spiffe://other.domain/web/self2", [], [], "outside the trust domain"),
    ],
)
def test_workload_is_denied_names_outside_its_policy(
    ca: CaServer, uri: str, dns: list[str], ips: list[str], needle: str
) -> None:
    creds = ca.issue("web/self2")
    _, csr = make_csr(uris=[uri], dns=dns, ips=ips)
    with ca.channel(creds.fullchain, creds.key_pem) as ch:
        code, details = _call_code(ca.stub(ch).SignCertificate, _sign_request(csr))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert needle in details


def test_workload_without_a_policy_entry_may_not_add_dns_names(ca: CaServer) -> None:
    key, csr = make_csr(uris=[spiffe("db/main")])
    with ca.admin_channel() as ch:
        reply = ca.stub(ch).SignCertificate(_sign_request(csr), timeout=30)
    _, csr2 = make_csr(uris=[spiffe("db/main")], dns=["db.web.internal"])
    with ca.channel((reply.certificate_pem + reply.chain_pem).encode(), key_pem(key)) as ch:
        code, _ = _call_code(ca.stub(ch).SignCertificate, _sign_request(csr2))
    assert code == grpc.StatusCode.PERMISSION_DENIED


# -- renewal ---------------------------------------------------------------------------------


def test_renew_carries_the_callers_identity_and_no_more(own_ca: CaServer) -> None:
    creds = own_ca.issue("web/renewer", dns=("renewer.web.internal",), ips=("10.0.0.7",))
    new_key, csr = make_csr(
        uris=[spiffe("admin")], dns=["renewer.web.internal", "extra.web.internal"]
    )
    with own_ca.channel(creds.fullchain, creds.key_pem) as ch:
        reply = own_ca.stub(ch).RenewCertificate(
            ca_pb2.RenewCertificateRequest(csr_pem=csr), timeout=30
        )
    assert reply.serial_number != creds.serial
    assert _sans(reply.certificate_pem) == (
        [spiffe("web/renewer")],
        ["renewer.web.internal"],
        ["10.0.0.7"],
    )
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert cert.public_key() == new_key.public_key()
    events = [e for e in own_ca.store.audit_events(50) if e.serial == reply.serial_number]
    assert [(e.action, e.actor) for e in events] == [("renew", spiffe("web/renewer"))]


def test_renewed_certificate_works_as_identity_for_the_next_renewal(ca: CaServer) -> None:
    creds = ca.issue("web/chain-renew")
    for _ in range(3):
        key, csr = make_csr()
        with ca.channel(creds.fullchain, creds.key_pem) as ch:
            reply = ca.stub(ch).RenewCertificate(
                ca_pb2.RenewCertificateRequest(csr_pem=csr), timeout=30
            )
        creds = Credentials(
            key_pem(key),
            reply.certificate_pem.encode(),
            reply.chain_pem.encode(),
            reply.serial_number,
        )
    assert _sans(creds.cert_pem.decode())[0] == [spiffe("web/chain-renew")]


# -- revocation ------------------------------------------------------------------------------


def test_holder_may_revoke_its_own_certificate_but_not_anothers(ca: CaServer) -> None:
    mine = ca.issue("web/holder")
    theirs = ca.issue("web/neighbour")
    spare = ca.issue("web/holder")
    with ca.channel(mine.fullchain, mine.key_pem) as ch:
        stub = ca.stub(ch)
        code, details = _call_code(
            stub.RevokeCertificate,
            ca_pb2.RevokeCertificateRequest(serial_number=theirs.serial),
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "only its own" in details
        reply = stub.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=spare.serial, reason=ca_pb2.SUPERSEDED),
            timeout=30,
        )
    assert reply.serial_number == spare.serial
    record = ca.store.get_certificate(spare.serial)
    assert record is not None and record.status == "revoked"


def test_revoked_caller_is_refused_at_once(ca: CaServer, admin) -> None:
    creds = ca.issue("web/doomed")
    with ca.channel(creds.fullchain, creds.key_pem) as ch:
        stub = ca.stub(ch)
        stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=30)  # warms the cache
        admin.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(
                serial_number=creds.serial, reason=ca_pb2.KEY_COMPROMISE
            ),
            timeout=30,
        )
        code, details = _call_code(stub.GetTrustBundle, ca_pb2.GetTrustBundleRequest())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in details


@pytest.mark.parametrize(
    ("serial", "code"),
    [
        ("00112233445566778899aabbccddeeff", grpc.StatusCode.NOT_FOUND),
        ("not-hex", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("ab" * 21, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_revoke_refuses_unknown_or_malformed_serials(admin, serial: str, code) -> None:
    got, details = _call_code(
        admin.RevokeCertificate, ca_pb2.RevokeCertificateRequest(serial_number=serial)
    )
    assert got == code
    assert details


def test_revoking_twice_is_a_failed_precondition(ca: CaServer, admin) -> None:
    creds = ca.issue("web/twice")
    request = ca_pb2.RevokeCertificateRequest(serial_number=creds.serial)
    admin.RevokeCertificate(request, timeout=30)
    code, details = _call_code(admin.RevokeCertificate, request)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already revoked" in details


def test_revoke_rejects_a_reason_code_rfc5280_does_not_define(ca: CaServer, admin) -> None:
    creds = ca.issue("web/reason7")
    code, details = _call_code(
        admin.RevokeCertificate,
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial, reason=7),  # type: ignore[arg-type]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason" in details


def test_status_reports_revocation_time_and_reason(ca: CaServer, admin) -> None:
    creds = ca.issue("web/status")
    good = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=creds.serial), timeout=30
    )
    assert good.status == ca_pb2.GOOD
    assert good.next_update.ToDatetime() > good.this_update.ToDatetime()
    revoked_at = admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(
            serial_number=creds.serial.upper(), reason=ca_pb2.AFFILIATION_CHANGED
        ),
        timeout=30,
    ).revoked_at
    status = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=creds.serial), timeout=30
    )
    assert status.status == ca_pb2.REVOKED
    assert status.reason == ca_pb2.AFFILIATION_CHANGED
    assert status.revoked_at == revoked_at
    unknown = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number="0badc0de"), timeout=30
    )
    assert unknown.status == ca_pb2.UNKNOWN
    assert unknown.ocsp_response


# -- listing and bundle ----------------------------------------------------------------------


def test_list_certificates_pages_through_everything_once(own_ca: CaServer, own_admin) -> None:
    def listed() -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page = own_admin.ListCertificates(
                ca_pb2.ListCertificatesRequest(page_size=2, page_token=token), timeout=30
            )
            assert len(page.certificates) <= 2
            seen += [c.serial_number for c in page.certificates]
            token = page.next_page_token
            if not token:
                return seen

    before = listed()  # what init issued (the admin's, the server's own)
    issued = [own_ca.issue(f"web/list-{i}").serial for i in range(5)]
    after = listed()
    assert len(after) == len(set(after))  # each once
    # Newest last; the CA's own OCSP responder certificate may come at any time meanwhile.
    assert after[: len(before)] == before and [s for s in after if s in issued] == issued


def test_list_certificates_is_newest_last_within_one_second(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Certificates issued in the same second come in the order they were issued, not by
    their (random) serials, across pages."""
    from tests.conftest import start_ca, stop_ca

    own = start_ca(tmp_path / "ca-data")
    try:
        frozen = CertificateAuthority(
            store=own.store,
            clock=FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0)),
            issuer=own.authority.issuer,
            root=own.authority.root,
            policy=own.authority.policy,
            settings=own.authority.settings,
        )
        issued = [
            frozen.issue_for(
                public_key=make_key().public_key(),
                identity=spiffe(f"web/same-second-{i}"),
                lifetime=dt.timedelta(hours=1),
                actor="test",
                action="issue",
            ).serial
            for i in range(8)
        ]
        assert issued != sorted(issued)  # else this would not tell the two orders apart
        seen: list[str] = []
        token = ""
        with own.admin_channel() as ch:
            while True:
                page = own.stub(ch).ListCertificates(
                    ca_pb2.ListCertificatesRequest(page_size=3, page_token=token), timeout=30
                )
                seen += [c.serial_number for c in page.certificates]
                token = page.next_page_token
                if not token:
                    break
        assert [s for s in seen if s in issued] == issued
        assert len(seen) == len(set(seen))
    finally:
        stop_ca(own)


def test_list_certificates_filters_by_status(own_ca: CaServer, own_admin) -> None:
    creds = own_ca.issue("web/list-revoked")
    own_admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial), timeout=30
    )
    page = own_admin.ListCertificates(
        ca_pb2.ListCertificatesRequest(status=ca_pb2.REVOKED, page_size=1000), timeout=30
    )
    assert creds.serial in {c.serial_number for c in page.certificates}
    assert {c.status for c in page.certificates} == {ca_pb2.REVOKED}


def test_list_certificates_is_for_admins_only(ca: CaServer) -> None:
    creds = ca.issue("web/nosy")
    with ca.channel(creds.fullchain, creds.key_pem) as ch:
        code, details = _call_code(ca.stub(ch).ListCertificates, ca_pb2.ListCertificatesRequest())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "admin" in details


def test_trust_bundle_holds_root_and_intermediate(ca: CaServer, admin) -> None:
    reply = admin.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=30)
    assert reply.root_certificates_pem == (ca.data_dir / "root.pem").read_text()
    assert reply.intermediate_certificates_pem == (ca.data_dir / "intermediate.pem").read_text()


def test_health_reports_serving(ca: CaServer) -> None:
    with ca.admin_channel() as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="signet.ca.v1.CertificateAuthority"), timeout=30
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- bad input -------------------------------------------------------------------------------


def _valid_csr() -> str:
    return make_csr(uris=[spiffe("web/input")])[1]


def _tampered_csr() -> str:
    """A CSR whose signature does not match its key (no proof of possession)."""
    csr = x509.load_pem_x509_csr(_valid_csr().encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize(
    ("csr", "code", "needle", "reason"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT, "empty", "CSR_MISSING"),
        ("hello", grpc.StatusCode.INVALID_ARGUMENT, "CERTIFICATE REQUEST", "CSR_NOT_PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            grpc.StatusCode.INVALID_ARGUMENT,
            "could not be parsed",
            "CSR_MALFORMED",
        ),
        (_valid_csr()[:200], grpc.StatusCode.INVALID_ARGUMENT, "CSR", "CSR_MALFORMED"),
        (_valid_csr() + "x" * 70_000, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit", "CSR_TOO_LARGE"),
        (
            _tampered_csr(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "proof of possession",
            "CSR_SIGNATURE_INVALID",
        ),
        (
            make_csr(make_key("rsa-1024"), uris=[spiffe("web/weak")])[1],
            grpc.StatusCode.INVALID_ARGUMENT,
            "2048",
            "KEY_NOT_ALLOWED",
        ),
        (
            make_csr(make_key("ec-k256"), uris=[spiffe("web/weak")])[1],
            grpc.StatusCode.INVALID_ARGUMENT,
            "P-256",
            "KEY_NOT_ALLOWED",
        ),
        (
            make_csr(uris=[])[1],
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one URI SAN",
            "CSR_IDENTITY_COUNT",
        ),
        (
            make_csr(uris=["https://example.com/"])[1],
            grpc.StatusCode.INVALID_ARGUMENT,
            "SPIFFE",
            "NAME_INVALID",
        ),
    ],
    ids=[
        "empty",
        "not-pem",
        "garbage-der",
        "truncated",
        "oversized",
        "bad-signature",
        "rsa-1024",
        "secp256k1",
        "no-identity",
        "non-spiffe-uri",
    ],
)
def test_bad_csrs_get_a_clear_status(admin, csr: str, code, needle: str, reason: str) -> None:
    error = _refusal(admin.SignCertificate, _sign_request(csr))
    assert needle in (error.details() or "")
    assert_refused(error, code, reason, "csr_pem")


@pytest.mark.parametrize(
    ("validity", "needle"),
    [
        (dt.timedelta(days=3650), "cap"),
        (dt.timedelta(seconds=0), "minimum"),
        (dt.timedelta(seconds=-60), "minimum"),
    ],
)
def test_validity_outside_the_allowed_range_is_refused(admin, validity, needle: str) -> None:
    error = _refusal(admin.SignCertificate, _sign_request(_valid_csr(), validity))
    assert needle in (error.details() or "")
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "VALIDITY_OUT_OF_RANGE", "validity")


def test_a_csr_with_too_many_names_is_resource_exhausted(admin) -> None:
    _, csr = make_csr(uris=[spiffe("web/many")], dns=[f"h{i}.web.internal" for i in range(101)])
    error = _refusal(admin.SignCertificate, _sign_request(csr))
    assert "CSR asks for 101 DNS names and IP addresses" in (error.details() or "")
    got = assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_NAMES", "csr_pem")
    assert got.retry_seconds is None  # the same request never succeeds: no RetryInfo


def test_requests_over_the_size_limit_are_refused_with_details(admin) -> None:
    error = _refusal(admin.SignCertificate, _sign_request("x" * (2 * 1024 * 1024)))
    assert "the limit is 1048576" in (error.details() or "")
    got = assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE")
    assert got.metadata["limit"] == "1048576" and got.retry_seconds is None


def test_requests_far_over_the_size_limit_are_still_refused_by_grpc_itself(admin) -> None:
    # Past gRPC's own limit (4 MiB) its core refuses before any code of ours runs.
    code, _ = _call_code(admin.SignCertificate, _sign_request("x" * (5 * 1024 * 1024)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "page_token",
    [
        "%%%",
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),  # once a RecursionError: INTERNAL
        base64.urlsafe_b64encode(b'{"a": ' * 5000).decode(),
    ],
    ids=["garbage", "deeply-nested-json-array", "deeply-nested-json-object"],
)
def test_bad_page_token_is_invalid_argument(admin, page_token: str) -> None:  # type: ignore[no-untyped-def]
    error = _refusal(admin.ListCertificates, ca_pb2.ListCertificatesRequest(page_token=page_token))
    assert "page_token" in (error.details() or "")
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", "page_token")


# -- authentication --------------------------------------------------------------------------


def test_no_client_certificate_no_connection(ca: CaServer) -> None:
    with ca.channel() as ch:
        code, _ = _call_code(ca.stub(ch).GetTrustBundle, ca_pb2.GetTrustBundleRequest())
    assert code == grpc.StatusCode.UNAVAILABLE


def _foreign_credentials() -> tuple[bytes, bytes]:
    """A workload certificate from another CA with the same names as ours."""
    now = dt.datetime.now(dt.UTC)
    root_key = generate_key("ec-p256")
    root = build_root(
        root_key,
        ca_name("signet.local", "Signet Root CA (signet.local)"),
        now,
        now + dt.timedelta(days=1),
    )
    key = make_key()
    leaf = build_leaf(
        Issuer(root, root_key, ()),
        LeafRequest(
            key.public_key(),
            spiffe("admin"),
            (),
            (),
            None,
            now - dt.timedelta(minutes=1),
            now + dt.timedelta(hours=1),
            12345,
        ),
    )
    return (pem(leaf) + pem(root)).encode(), key_pem(key)


def test_certificate_from_another_ca_is_refused(ca: CaServer) -> None:
    chain, key = _foreign_credentials()
    with ca.channel(chain, key) as ch:
        code, _ = _call_code(ca.stub(ch).GetTrustBundle, ca_pb2.GetTrustBundleRequest())
    assert code == grpc.StatusCode.UNAVAILABLE


def test_expired_caller_is_refused(ca: CaServer) -> None:
    # Issue, through the same CA and store, a certificate that expired yesterday.
    past = CertificateAuthority(
        store=ca.store,
        clock=FakeClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=2)),
        issuer=ca.authority.issuer,
        root=ca.authority.root,
        policy=ca.authority.policy,
        settings=ca.authority.settings,
    )
    key = make_key()
    issued = past.issue_for(
        public_key=key.public_key(),
        identity=spiffe("admin"),
        lifetime=dt.timedelta(hours=1),
        actor="test",
        action="issue",
    )
    with ca.channel((issued.certificate_pem + issued.chain_pem).encode(), key_pem(key)) as ch:
        code, _ = _call_code(ca.stub(ch).GetTrustBundle, ca_pb2.GetTrustBundleRequest())
    # The TLS handshake refuses it (UNAVAILABLE); were it to pass, authenticate() would refuse.
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


# -- logging ---------------------------------------------------------------------------------


def test_each_rpc_logs_one_line_without_secrets(ca: CaServer, admin) -> None:
    key, csr = make_csr(uris=[spiffe("web/logged")])
    with capture_logs(processors=[merge_contextvars]) as logs:
        reply = admin.SignCertificate(_sign_request(csr), timeout=30)
        _call_code(admin.SignCertificate, _sign_request("garbage"))
    rpc = [e for e in logs if e["event"] == "rpc" and e["method"].endswith("/SignCertificate")]
    assert len(rpc) == 2
    ok, bad = rpc
    assert ok["code"] == "OK" and ok["serial"] == reply.serial_number
    assert ok["caller"] == spiffe("admin")
    assert isinstance(ok["duration_ms"], float)
    assert bad["code"] == "INVALID_ARGUMENT"
    text = repr(logs)
    assert "-----BEGIN" not in text  # no key, CSR or certificate in any log line
    assert key_pem(key).decode() not in text


def test_a_request_that_is_not_valid_protobuf_is_invalid_argument(ca: CaServer) -> None:
    # csr_pem (field 1, a proto3 string) holding bytes that are not UTF-8.
    raw = b"\x0a\x02\xff\xfe"
    with ca.admin_channel() as ch:
        call = ch.unary_unary(
            "/signet.ca.v1.CertificateAuthority/SignCertificate",
            request_serializer=None,
            response_deserializer=None,
        )
        error = _refusal(call, raw)
    assert "protobuf" in (error.details() or "")
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")


@pytest.mark.parametrize("seconds", [10**13, -(10**12)])
def test_an_out_of_range_timestamp_is_invalid_argument(admin, seconds: int) -> None:
    request = ca_pb2.ListCertificatesRequest()
    request.expiring_before.seconds = seconds
    error = _refusal(admin.ListCertificates, request)
    assert "expiring_before" in (error.details() or "")
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "TIMESTAMP_INVALID", "expiring_before")


@pytest.mark.parametrize(
    ("genpkey", "needle"),
    [
        (["-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"], "RSASSA-PSS"),
        (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:sect283k1"], "not"),
    ],
    ids=["rsa-pss", "sect283k1"],
)
def test_keys_of_other_algorithms_are_refused_not_internal(
    admin, tmp_path, genpkey: list[str], needle: str
) -> None:
    key, csr = tmp_path / "k.pem", tmp_path / "r.csr"
    openssl("genpkey", *genpkey, "-out", key)
    openssl(
        "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=x",
        "-addext", f"subjectAltName=URI:{spiffe('web/odd')}",
    )  # fmt: skip
    error = _refusal(admin.SignCertificate, _sign_request(csr.read_text()))
    assert needle in (error.details() or "")
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "KEY_NOT_ALLOWED", "csr_pem")


@pytest.mark.filterwarnings("ignore:Attribute's length must be")
def test_a_cn_longer_than_64_characters_is_left_to_the_san(admin) -> None:
    long_name = ".".join(["a" * 60, "b" * 60, "web", "internal"])
    key = make_key()
    # cryptography refuses to build such a CN unless told not to; other tools are less careful.
    cn = x509.NameAttribute(NameOID.COMMON_NAME, long_name, _validate=False)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([cn]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe("web/long")), x509.DNSName(long_name)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    reply = admin.SignCertificate(_sign_request(csr), timeout=30)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.DNSName) == [long_name]


def test_hold_and_release_through_the_api(ca: CaServer, admin) -> None:
    creds = ca.issue("web/held")
    admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial, reason=ca_pb2.CERTIFICATE_HOLD),
        timeout=30,
    )
    held = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=creds.serial), timeout=30
    )
    assert (held.status, held.reason) == (ca_pb2.REVOKED, ca_pb2.CERTIFICATE_HOLD)
    admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial, reason=ca_pb2.REMOVE_FROM_CRL),
        timeout=30,
    )
    released = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=creds.serial), timeout=30
    )
    assert released.status == ca_pb2.GOOD
    error = _refusal(
        admin.RevokeCertificate,
        ca_pb2.RevokeCertificateRequest(serial_number=creds.serial, reason=ca_pb2.REMOVE_FROM_CRL),
    )
    assert "not on certificateHold" in (error.details() or "")
    got = assert_refused(error, grpc.StatusCode.FAILED_PRECONDITION, "NOT_ON_HOLD")
    assert got.metadata["serial_number"] == creds.serial


def test_renewal_with_revoke_previous_supersedes_the_old_certificate(ca: CaServer, admin) -> None:
    creds = ca.issue("web/supersede")
    _, csr = make_csr()
    with ca.channel(creds.fullchain, creds.key_pem) as ch:
        reply = ca.stub(ch).RenewCertificate(
            ca_pb2.RenewCertificateRequest(csr_pem=csr, revoke_previous=True), timeout=30
        )
    old = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=creds.serial), timeout=30
    )
    assert (old.status, old.reason) == (ca_pb2.REVOKED, ca_pb2.SUPERSEDED)
    new = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=reply.serial_number), timeout=30
    )
    assert new.status == ca_pb2.GOOD


def test_invalidity_date_reaches_the_crl_and_may_not_be_in_the_future(ca: CaServer, admin) -> None:
    creds = ca.issue("web/invalid-since")
    since = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    request = ca_pb2.RevokeCertificateRequest(
        serial_number=creds.serial, reason=ca_pb2.KEY_COMPROMISE
    )
    request.invalidity_date.FromDatetime(since + dt.timedelta(days=3))
    error = _refusal(admin.RevokeCertificate, request)
    assert "future" in (error.details() or "")
    assert_refused(
        error, grpc.StatusCode.INVALID_ARGUMENT, "INVALIDITY_DATE_IN_FUTURE", "invalidity_date"
    )
    request.invalidity_date.FromDatetime(since)
    admin.RevokeCertificate(request, timeout=30)
    crl = x509.load_der_x509_crl(admin.GetCRL(ca_pb2.GetCRLRequest(), timeout=30).crl)
    entry = crl.get_revoked_certificate_by_serial_number(int(creds.serial, 16))
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc
        == since
    )
