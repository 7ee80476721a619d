"""Property-based tests (hypothesis): hostile values in every field of every RPC, on the mTLS
API and the bootstrap listener, and hostile requests to the relying-party HTTP listener.

Whatever comes in, an RPC answers OK or a status that tells the caller it was their request
(INVALID_ARGUMENT, PERMISSION_DENIED, ...) with a message, never UNKNOWN or INTERNAL and never
a hang; HTTP never answers 500 or hangs; and every listener keeps serving afterwards.

CI runs a fixed seed and EXAMPLES examples per test; SIGNET_HYPOTHESIS_EXAMPLES=2000 runs more,
with a fresh random seed each run (a failure prints the blob that reproduces it)."""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID, NameOID
from google.protobuf import duration_pb2, text_format, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.conftest import CaServer, Credentials, start_ca, stop_ca
from tests.pki import make_csr, make_key, spiffe

# Crafted CSRs carry CNs past X.520's 64 characters on purpose: cryptography warns on each.
pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")

_MORE = os.environ.get("SIGNET_HYPOTHESIS_EXAMPLES")
EXAMPLES = int(_MORE or 100)
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=_MORE is None,  # CI: the same examples every run
    deadline=None,  # a real server on a shared machine: no per-example timing
    database=None,  # nothing written next to the tests (the suite runs -p no:cacheprovider)
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALL_TIMEOUT = 30.0  # per RPC: a hang fails as DEADLINE_EXCEEDED, not as a stuck suite
HTTP_TIMEOUT = 30.0  # per socket operation; the listener's own request timeout is 10 s

# What a hostile request may get back: each says "your request", with a message.
CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
}
SERVICE = "/signet.ca.v1.CertificateAuthority/"
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


# -- the server under test ---------------------------------------------------------------------
@dataclass
class Target:
    ca: CaServer
    admin: ca_pb2_grpc.CertificateAuthorityStub
    workload: ca_pb2_grpc.CertificateAuthorityStub
    bootstrap: ca_pb2_grpc.CertificateAuthorityStub
    channels: dict[str, grpc.Channel]  # admin, workload, bootstrap
    victims: list[str]  # serials free to revoke
    intermediate: x509.Certificate
    leaf: x509.Certificate
    page_token: str  # a real ListCertificates next_page_token
    audit_token: str  # a real ListAuditEvents next_page_token


def _channel(ca: CaServer, creds: Credentials) -> grpc.Channel:
    return ca.channel(creds.fullchain, creds.key_pem)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A CA of its own: hostile calls revoke, issue and trip the bad-token limit."""
    ca = start_ca(tmp_path_factory.mktemp("props") / "ca-data")
    workload = ca.issue("web/props-caller", dns=("props.web.internal",))
    victims = [ca.issue("web/props-victim").serial for _ in range(3)]
    leaf_creds = ca.issue("web/props-leaf")
    channels = {
        "admin": ca.admin_channel(),
        "workload": _channel(ca, workload),
        "bootstrap": grpc.secure_channel(
            ca.running.bootstrap_address, grpc.ssl_channel_credentials(ca.root_pem)
        ),
    }
    admin = ca.stub(channels["admin"])
    page = admin.ListCertificates(ca_pb2.ListCertificatesRequest(page_size=1), timeout=30)
    audit = admin.ListAuditEvents(ca_pb2.ListAuditEventsRequest(page_size=1), timeout=30)
    assert page.next_page_token and audit.next_page_token
    yield Target(
        ca,
        admin,
        ca.stub(channels["workload"]),
        ca.stub(channels["bootstrap"]),
        channels,
        victims,
        x509.load_pem_x509_certificates(leaf_creds.chain_pem)[0],
        x509.load_pem_x509_certificate(leaf_creds.cert_pem),
        page.next_page_token,
        audit.next_page_token,
    )
    for channel in channels.values():
        channel.close()
    stop_ca(ca)


@pytest.fixture(autouse=True)
def _still_serving(target: Target) -> Iterator[None]:
    """After each property, on new connections: every listener still answers."""
    yield
    ca = target.ca
    with ca.admin_channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        ca.stub(channel).GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=CALL_TIMEOUT)
    with grpc.secure_channel(
        ca.running.bootstrap_address, grpc.ssl_channel_credentials(ca.root_pem)
    ) as channel:
        code = _outcome(
            ca_pb2_grpc.CertificateAuthorityStub(channel).Enroll, ca_pb2.EnrollRequest()
        )
        assert code != grpc.StatusCode.OK
    status, _, body = _http(ca, _request(b"GET", b"/ca.crt"))
    assert status == 200
    x509.load_der_x509_certificate(body)


def _show(request: Message | bytes) -> str:
    text = repr(request) if isinstance(request, bytes) else text_format.MessageToString(request)
    return text if len(text) < 600 else text[:600] + f"... ({len(text)} characters)"


def _outcome(call: Callable[..., Any], request: Message | bytes) -> grpc.StatusCode:
    """Make the call; assert a failure is one of CLEAR, with a message."""
    return _answer(call, request)[0]


def _answer(call: Callable[..., Any], request: Message | bytes) -> tuple[grpc.StatusCode, Any]:
    """(OK, the reply) or (the failure's code, None), asserting the failure is one of CLEAR
    and says why."""
    try:
        reply = call(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        err = cast(grpc.Call, exc)
        code, details = err.code(), err.details() or ""
        assert code in CLEAR, f"{code.name} ({details!r}) for {_show(request)}"
        assert details.strip(), f"{code.name} without a message for {_show(request)}"
        _event(code)
        return code, None
    _event(grpc.StatusCode.OK)
    return grpc.StatusCode.OK, reply


def _issued_for(csr_pem: str, reply: ca_pb2.IssuedCertificate | None) -> None:
    """An issuing RPC said OK: the CSR was a real one, signed by the key that the certificate
    now certifies (a mangled CSR must never get through)."""
    if reply is None:
        return
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid, f"issued for a CSR whose signature fails: {csr_pem!r}"
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert cert.public_key() == csr.public_key()


def _event(code: grpc.StatusCode) -> None:
    """For --hypothesis-show-statistics: which answers the examples reached."""
    if currently_in_test_context():
        event(code.name)


# -- hostile values ----------------------------------------------------------------------------
def _pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


SPECIAL_TEXT = st.sampled_from(
    [
        "", " ", "\x00", "\n", "\ufeff", "\u202e", "💥" * 50, "null", "-1", "0", "0x",
        "' OR 1=1 --", "%s%n%x", "../../etc/passwd", "\\x00", "spiffe://", "sgt_",
        "-----BEGIN CERTIFICATE REQUEST-----", "-----END CERTIFICATE REQUEST-----",
        70_000, 1_100_000,  # as many "A"s: well under and just past the 1 MiB request cap
    ]
).map(lambda v: "A" * v if isinstance(v, int) else v)  # fmt: skip
ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)


@st.composite
def pem_garbage(draw: st.DrawFn) -> str:
    label = draw(
        st.sampled_from(["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST", "CERTIFICATE", "X"])
    )
    text = _pem(draw(st.binary(max_size=2000)), label)
    how = draw(st.sampled_from(["whole", "no-end", "twice", "bad-base64", "no-newlines"]))
    if how == "no-end":
        text = text.split("-----END")[0]
    elif how == "twice":
        text = text + text
    elif how == "bad-base64":
        text = text.replace("\n", "\n!*", 1)
    elif how == "no-newlines":
        text = text.replace("\n", "")
    return text


HOSTILE_TEXT = st.one_of(SPECIAL_TEXT, ODD_TEXT, pem_garbage())


def _real_csrs() -> list[str]:
    """CSRs of several key types, for names the test policy allows and names it does not."""
    csrs = [make_csr(make_key(kind), uris=[spiffe("web/props")])[1]
            for kind in ("ec-p256", "ec-p384", "ed25519", "rsa-2048")]  # fmt: skip
    csrs.append(make_csr(uris=[spiffe("web/props")], dns=["a.web.internal"], ips=["10.1.2.3"])[1])
    csrs.append(make_csr(uris=["spiffe://other.domain/x"], dns=["evil.example.com"])[1])
    csrs.append(make_csr(cn="no SAN at all")[1])
    csrs.append(make_csr(make_key("ec-k256"), uris=[spiffe("web/props")])[1])
    return csrs


REAL_CSRS = _real_csrs()


@st.composite
def mutated_csr(draw: st.DrawFn) -> str:
    """A real CSR with bytes flipped, cut or appended: in its DER or in its PEM text."""
    pem = draw(st.sampled_from(REAL_CSRS))
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    how = draw(st.sampled_from(["flip", "cut", "append", "text-cut", "text-flip", "as-is"]))
    if how == "flip":
        data = bytearray(der)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return _pem(bytes(data))
    if how == "cut":
        return _pem(der[: draw(st.integers(0, len(der) - 1))])
    if how == "append":
        return _pem(der + draw(st.binary(min_size=1, max_size=64)))
    if how == "text-cut":
        return pem[: draw(st.integers(0, len(pem) - 1))]
    if how == "text-flip":
        i = draw(st.integers(0, len(pem) - 1))
        return pem[:i] + draw(st.characters(codec="utf-8")) + pem[i + 1 :]
    return pem


ASCII = st.text(st.characters(max_codepoint=127), max_size=80)
CSR_KEY = make_key()
GENERAL_NAMES = st.one_of(
    ASCII.map(x509.DNSName),
    st.sampled_from(["*.web.internal", "*", "a.web.internal.", "-.web.internal"]).map(x509.DNSName),
    ASCII.map(lambda s: x509.UniformResourceIdentifier(spiffe("web/" + s))),
    ASCII.map(x509.UniformResourceIdentifier),
    st.ip_addresses().map(x509.IPAddress),
    st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "::/0"]).map(
        lambda n: x509.IPAddress(ipaddress.ip_network(n))
    ),
    st.emails().map(x509.RFC822Name),
    st.just(x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))),
    st.binary(max_size=40).map(
        lambda b: x509.OtherName(
            x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x04" + bytes([len(b)]) + b
        )
    ),
    st.just(x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dir")]))),
)
MALFORMED_SANS = [b"\x04\x00", b"\x30\x03\x82\x01\xff", b"\x30\x02\xa0\x00", b"\x30\x80"]
EXTENSIONS = st.sampled_from(
    [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(True, True, True, True, True, True, True, False, False), True),
        (x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.3")]), False),
        (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00"), True),
        (x509.NameConstraints([x509.DNSName("evil.example")], None), True),
        (x509.OCSPNoCheck(), False),
    ]
)


@st.composite
def crafted_csr(draw: st.DrawFn) -> str:
    """A well-signed CSR whose subject, SANs and extensions are odd: what a hostile
    workload would craft with its own key."""
    names = draw(st.lists(GENERAL_NAMES, max_size=6) | st.just([x509.DNSName("a")] * 500))
    builder = x509.CertificateSigningRequestBuilder()
    cn = draw(st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=200))
    builder = builder.subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)] if cn else [])
    )
    san = draw(st.sampled_from(["names", "names", "malformed", "none"]))
    if san == "names" and names:
        critical = draw(st.booleans())
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=critical)
    elif san == "malformed":  # a subjectAltName whose contents are not GeneralNames
        value = draw(st.sampled_from(MALFORMED_SANS) | st.binary(max_size=20))
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, value), False
        )
    for extension, critical in draw(st.lists(EXTENSIONS, max_size=3, unique_by=lambda e: e[0].oid)):
        with contextlib.suppress(ValueError):  # the same extension twice
            builder = builder.add_extension(extension, critical=critical)
    csr = builder.sign(CSR_KEY, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


CSRS = st.one_of(st.sampled_from(REAL_CSRS), crafted_csr(), mutated_csr(), HOSTILE_TEXT)

# Around the limits of google.protobuf.Duration/Timestamp (±10,000 years; year 1 to 9999).
# hypothesis draws small integers far more often than extreme ones: the edges are listed, and
# drawn as often as everything else together (Python's timedelta ends at ~8.6e13 s).
SECONDS = st.one_of(
    st.sampled_from([0, 1, -1, 315_576_000_000, 315_576_000_001, -315_576_000_001,
                     253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801,
                     86_399_999_999_999, 2**31]),
    st.sampled_from([86_400_000_000_000, 10**14, -(10**14), 2**63 - 1, -(2**63)]),
    st.one_of(INT64, st.integers(-(10**6), 10**9)),
)  # fmt: skip
NANOS = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]), INT32)
DURATIONS = st.one_of(
    st.none(),
    st.integers(1, 10**6).map(lambda s: duration_pb2.Duration(seconds=s)),
    st.builds(lambda s, n: duration_pb2.Duration(seconds=s, nanos=n), SECONDS, NANOS),
)
TIMESTAMPS = st.one_of(
    st.none(),
    st.integers(0, 4 * 10**9).map(lambda s: timestamp_pb2.Timestamp(seconds=s)),  # 1970-2096
    st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), SECONDS, NANOS),
)
PAGE_SIZES = st.one_of(st.sampled_from([0, 1, -1, 1000, 1001, 2**31 - 1, -(2**31)]), INT32)
SERIAL_CHARS = "0123456789abcdefABCDEF:x -_\t\n+.٣"


def serials(target: Target) -> st.SearchStrategy[str]:
    real = st.sampled_from(target.victims)
    return st.one_of(
        real,
        real.map(lambda s: ":".join(s[i : i + 2] for i in range(0, len(s), 2)).upper()),
        real.map(lambda s: "0x" + "0" * 30 + s),
        st.text(SERIAL_CHARS, max_size=60),
        st.integers(0, 2**170).map(lambda n: f"{n:x}"),
        st.sampled_from(["0", "00", "-1", "1_0", "f" * 41, "0" * 5000, "f" * 100_000]),
        HOSTILE_TEXT,
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@st.composite
def cursor_tokens(draw: st.DrawFn) -> str:
    """Tokens in ListCertificates' layout (and its legacy JSON one) with extreme values."""
    if draw(st.booleans()):
        version = draw(st.sampled_from([b"\x01", b"\x01", b"\x01", b"\x00", b"\x02", b""]))
        edges = st.sampled_from([0, 2**31, 2**62 - 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1])
        issued_at = draw(edges | st.integers(0, 2**64 - 1)).to_bytes(8, "big")
        serial = draw(st.text("0123456789abcdef", min_size=1, max_size=44) | st.text(max_size=9))
        return _b64(version + issued_at + serial.encode())
    issued = draw(st.sampled_from([-1, 0, 2**62, 2**63, 10**18 - 1]) | st.integers(-1, 10**18))
    serial = draw(st.text("0123456789abcdefG", min_size=0, max_size=42))
    return _b64(f'[{issued}, "{serial}"]'.encode())


def _real(real: str) -> str:
    return real


def _cut(real: str, at: int) -> str:
    at %= len(real)
    return real[:at] + real[at + 1 :]


def _longer(real: str) -> str:
    return real + "A"


def _given(_real: str, token: str) -> str:
    return token


def page_tokens(own: st.SearchStrategy[str]) -> st.SearchStrategy[Callable[[str], str]]:
    """Page tokens as functions of the server's own (real) token: it, edits of it, and made up
    ones; functions so that @example can name a token without a fixture."""
    made_up = st.one_of(own, own, st.binary(max_size=80).map(_b64), HOSTILE_TEXT)
    return st.one_of(
        st.sampled_from([_real, _longer]),
        st.integers(0, 100).map(lambda at: functools.partial(_cut, at=at)),
        made_up.map(lambda token: functools.partial(_given, token=token)),
    )


AUDIT_TOKENS = st.one_of(
    st.integers(-(10**20), 10**20).map(lambda n: _b64(b"audit:%d" % n)),
    st.binary(max_size=20).map(lambda b: _b64(b"audit:" + b)),
    st.text(max_size=64),  # under the length cap, so decoding is what refuses it
)
REASONS = st.one_of(st.sampled_from(list(ca_pb2.RevocationReason.values())), INT32)
STATUSES = st.one_of(st.sampled_from(list(ca_pb2.CertificateStatus.values())), INT32)
CALLERS = st.sampled_from(["admin", "workload"])
ADMIN_MOSTLY = st.sampled_from(["admin", "admin", "admin", "workload"])  # for admin-only RPCs


def _stub(target: Target, who: str) -> ca_pb2_grpc.CertificateAuthorityStub:
    return cast(ca_pb2_grpc.CertificateAuthorityStub, getattr(target, who))


def _set(message: Message, name: str, value: Message | None) -> None:
    if value is not None:
        getattr(message, name).CopyFrom(value)


# -- the RPCs, field by field --------------------------------------------------------------------
# Edges every run tries whatever the seed: past what Python's timedelta can hold.
OVERFLOW = duration_pb2.Duration(seconds=2**63 - 1)


@PROPERTY
@given(who=CALLERS, csr=CSRS, validity=DURATIONS)
@example(who="admin", csr=REAL_CSRS[0], validity=OVERFLOW)
def test_sign_certificate_answers_clearly(
    target: Target, who: str, csr: str, validity: Any
) -> None:
    request = ca_pb2.SignCertificateRequest(csr_pem=csr)
    _set(request, "validity", validity)
    _issued_for(csr, _answer(_stub(target, who).SignCertificate, request)[1])


@PROPERTY
@given(who=CALLERS, csr=CSRS, validity=DURATIONS, revoke_previous=st.booleans())
@example(who="workload", csr=REAL_CSRS[0], validity=OVERFLOW, revoke_previous=False)
def test_renew_certificate_answers_clearly(
    target: Target, who: str, csr: str, validity: Any, revoke_previous: bool
) -> None:
    request = ca_pb2.RenewCertificateRequest(csr_pem=csr, revoke_previous=revoke_previous)
    _set(request, "validity", validity)
    if not revoke_previous:
        _issued_for(csr, _answer(_stub(target, who).RenewCertificate, request)[1])
        return
    # Revoking the caller's certificate: a caller of its own, so the shared ones stay valid.
    with _channel(target.ca, target.ca.issue("web/props-renewer")) as channel:
        _issued_for(csr, _answer(target.ca.stub(channel).RenewCertificate, request)[1])


@PROPERTY
@given(data=st.data(), who=CALLERS, reason=REASONS, invalidity_date=TIMESTAMPS)
def test_revoke_certificate_answers_clearly(
    target: Target, data: st.DataObject, who: str, reason: int, invalidity_date: Any
) -> None:
    request = ca_pb2.RevokeCertificateRequest(
        serial_number=data.draw(serials(target)),
        reason=cast(ca_pb2.RevocationReason.ValueType, reason),
    )
    _set(request, "invalidity_date", invalidity_date)
    _outcome(_stub(target, who).RevokeCertificate, request)


@PROPERTY
@given(data=st.data(), who=CALLERS)
def test_get_certificate_status_answers_clearly(
    target: Target, data: st.DataObject, who: str
) -> None:
    request = ca_pb2.GetCertificateStatusRequest(serial_number=data.draw(serials(target)))
    _outcome(_stub(target, who).GetCertificateStatus, request)


@PROPERTY
@given(
    who=ADMIN_MOSTLY,
    status=STATUSES,
    expiring_before=TIMESTAMPS,
    page_size=PAGE_SIZES,
    page_token=page_tokens(cursor_tokens()),
)
@example(  # a well-formed cursor past SQLite's 64-bit integers
    who="admin", status=0, expiring_before=None, page_size=0,
    page_token=functools.partial(_given, token=_b64(b"\x01" + b"\xff" * 8 + b"ab")),
)  # fmt: skip
def test_list_certificates_answers_clearly(
    target: Target,
    who: str,
    status: int,
    expiring_before: Any,
    page_size: int,
    page_token: Callable[[str], str],
) -> None:
    request = ca_pb2.ListCertificatesRequest(
        status=cast(ca_pb2.CertificateStatus.ValueType, status),
        page_size=page_size,
        page_token=page_token(target.page_token),
    )
    _set(request, "expiring_before", expiring_before)
    _outcome(_stub(target, who).ListCertificates, request)


@PROPERTY
@given(
    data=st.data(),
    who=ADMIN_MOSTLY,
    since=TIMESTAMPS,
    until=TIMESTAMPS,
    # each field as often unset as hostile, so that the later checks are reached too
    action=st.one_of(st.just(""), st.sampled_from(["issue", "ISSUE", "%", "_"]), ODD_TEXT),
    identity=st.one_of(st.just(""), st.just(spiffe("admin")), HOSTILE_TEXT),
    page_size=st.one_of(st.just(0), PAGE_SIZES),
)
def test_list_audit_events_answers_clearly(
    target: Target,
    data: st.DataObject,
    who: str,
    since: Any,
    until: Any,
    action: str,
    identity: str,
    page_size: int,
) -> None:
    request = ca_pb2.ListAuditEventsRequest(
        action=action,
        identity=identity,
        serial_number=data.draw(st.one_of(st.just(""), st.just(""), serials(target))),
        page_size=page_size,
        page_token=data.draw(page_tokens(AUDIT_TOKENS))(target.audit_token),
    )
    _set(request, "since", since)
    _set(request, "until", until)
    _outcome(_stub(target, who).ListAuditEvents, request)


VALID_DNS = st.from_regex(r"([a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\.){1,4}[a-z]{2,10}", fullmatch=True)
DNS_NAMES = st.one_of(
    st.sampled_from(["a.web.internal", "*.web.internal", "web.internal", "A.WEB.INTERNAL.",
                     "*.*.web.internal", "a..web.internal", "xn--zz.web.internal",
                     "ünï.web.internal", "-a.web.internal", "a" * 64 + ".web.internal",
                     ("a" * 63 + ".") * 5 + "web.internal", "localhost", "127.0.0.1"]),
    st.from_regex(r"[a-z0-9-]{1,20}\.web\.internal", fullmatch=True),
    ODD_TEXT,
)  # fmt: skip
IP_ADDRESSES = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.1", "10.0.0.0/8", "010.0.0.1", "::ffff:10.0.0.1", "fe80::1%eth0",
                     "10.1.2.3%1", "256.0.0.1", "::", "0.0.0.0", "1e100"]),  # noqa: S104
    ODD_TEXT,
)  # fmt: skip
IDENTITIES = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=80).map(spiffe),
    st.sampled_from([spiffe("web/boot"), spiffe("admin"), spiffe(""), spiffe("a/../b"),
                     spiffe("a//b"), spiffe("a" * 3000), "spiffe://other.domain/web/x",
                     "spiffe://SIGNET.LOCAL/web/x", "spiffe://signet.local:443/web/x",
                     "spiffe://user@signet.local/web/x", spiffe("web/x?q=1#f"),
                     spiffe("web/%2e%2e"), "https://signet.local/web/x"]),
    HOSTILE_TEXT,
)  # fmt: skip


@PROPERTY
@given(
    who=ADMIN_MOSTLY,
    identity=st.one_of(
        st.from_regex(r"web/[A-Za-z0-9._~/-]{1,40}", fullmatch=True).map(spiffe), IDENTITIES
    ),
    dns_names=st.one_of(
        st.lists(VALID_DNS | st.sampled_from(["*.web.internal", "A.WEB.INTERNAL."]), max_size=4),
        st.lists(DNS_NAMES, max_size=5),
        st.just([f"n{i}.web.internal" for i in range(150)]),
    ),
    ip_addresses=st.one_of(
        st.lists(st.ip_addresses().map(str) | st.just("fe80::1%eth0"), max_size=3),
        st.lists(IP_ADDRESSES, max_size=4),
    ),
    token_ttl=DURATIONS,
    certificate_ttl=DURATIONS,
)
def test_create_bootstrap_token_answers_clearly_and_its_tokens_enroll(
    target: Target,
    who: str,
    identity: str,
    dns_names: list[str],
    ip_addresses: list[str],
    token_ttl: Any,
    certificate_ttl: Any,
) -> None:
    request = ca_pb2.CreateBootstrapTokenRequest(
        identity=identity, dns_names=dns_names, ip_addresses=ip_addresses
    )
    _set(request, "token_ttl", token_ttl)
    _set(request, "certificate_ttl", certificate_ttl)
    answers: list[ca_pb2.CreateBootstrapTokenResponse] = []

    def create(request: Message, timeout: float) -> None:
        answers.append(_stub(target, who).CreateBootstrapToken(request, timeout=timeout))

    if _outcome(create, request) != grpc.StatusCode.OK:
        return
    # Whatever names a token was allowed to carry, enrolling with it must work.
    reply = target.bootstrap.Enroll(
        ca_pb2.EnrollRequest(token=answers[0].token, csr_pem=REAL_CSRS[0]), timeout=CALL_TIMEOUT
    )
    assert reply.serial_number


@PROPERTY
@given(
    token=st.one_of(
        st.just("mint"),  # a fresh valid token: what the CSR is checked against
        st.from_regex(r"sgt_[A-Za-z0-9_-]{0,80}", fullmatch=True),
        HOSTILE_TEXT,
    ),
    csr=CSRS,
)
def test_enroll_answers_clearly(target: Target, token: str, csr: str) -> None:
    if token == "mint":
        token = target.admin.CreateBootstrapToken(
            ca_pb2.CreateBootstrapTokenRequest(identity=spiffe("web/props-enroll")),
            timeout=CALL_TIMEOUT,
        ).token
    _issued_for(
        csr, _answer(target.bootstrap.Enroll, ca_pb2.EnrollRequest(token=token, csr_pem=csr))[1]
    )


METHODS = [
    "SignCertificate", "RenewCertificate", "RevokeCertificate", "GetCertificateStatus",
    "GetCRL", "GetTrustBundle", "ListCertificates", "CreateBootstrapToken", "ListAuditEvents",
]  # fmt: skip


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@st.composite
def wire_messages(draw: st.DrawFn) -> bytes:
    """Protobuf wire data the generated classes would never send: a string field that is not
    UTF-8, a field of the wrong wire type, unknown fields, a truncated length, plain noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        number = draw(st.integers(1, 12) | st.integers(1, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(draw(INT64 | st.integers(0, 2**64 - 1)))
        elif wire in (1, 5):
            out += draw(st.binary(min_size=8 if wire == 1 else 4, max_size=8 if wire == 1 else 4))
        elif wire == 2:
            payload = draw(st.binary(max_size=100) | st.just(b"\xff\xfe\xc3\x28"))
            out += _varint(len(payload) + draw(st.sampled_from([0, 0, 0, 1, 1000]))) + payload
    return out


@PROPERTY
@given(data=st.data(), method=st.sampled_from([*METHODS, "Enroll"]), raw=wire_messages())
def test_malformed_wire_requests_answer_clearly(
    target: Target, data: st.DataObject, method: str, raw: bytes
) -> None:
    who = "bootstrap" if method == "Enroll" else data.draw(CALLERS)
    call = target.channels[who].unary_unary(SERVICE + method)  # bytes in, bytes out
    _outcome(call, raw)


# -- the relying-party HTTP listener -------------------------------------------------------------
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def _request(
    method: bytes,
    target: bytes,
    headers: list[bytes] | None = None,
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
    close: bool = True,
) -> bytes:
    connection = b"Connection: " + (b"close" if close else b"keep-alive")
    lines = [method + b" " + target + b" " + version, *(headers or []), b"Host: signet.test",
             b"Content-Length: %d" % len(body), connection]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _http(ca: CaServer, raw: bytes, *, half_close: bool = False) -> tuple[int | None, bytes, bytes]:
    """(status, head, body) of the one answer, or (None, ...) when the listener closed the
    connection without one (refusing a request it would not read to the end). half_close:
    say that nothing more comes, rather than let an unfinished request wait out the
    listener's request timeout (which tests of its own cover)."""
    host, port = ca.running.http_address.rsplit(":", 1)
    chunks: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT) as sock:
        try:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered (and closed) before reading all we sent
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    match = _STATUS_LINE.match(head)
    assert match or not data, f"not an HTTP answer: {data[:200]!r}"
    return (int(match[1]) if match else None), head, body


PATHS = st.one_of(
    st.sampled_from([b"/", b"/ocsp", b"/ocsp/", b"/crl", b"/crl.pem", b"/root.crl", b"/ca.crt",
                     b"/root.crt", b"/metrics", b"*", b"//", b"/%00", b"/crl?x=1#f",
                     b"/ocsp/%ZZ", b"/ocsp/====", b"/ocsp//", b"/../../etc/passwd",
                     b"http://signet.test/crl", b"http://[::1/ocsp", b"/ca.crt" * 3000,
                     b"a", b"x:y", b"?", b"http:", b"http://h:99999/crl", b"http://h/ocsp/\xff"]),
    st.tuples(
        st.sampled_from([b"/", b"/ocsp/", b"/crl", b"http://h/ocsp/"]),
        st.binary(max_size=200).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"")),
    ).map(b"".join),
)  # fmt: skip
HEADER_NAMES = st.one_of(
    st.sampled_from([b"If-None-Match", b"If-Modified-Since", b"Content-Type", b"Accept",
                     b"Expect", b"Range", b"Upgrade", b"Transfer-Encoding", b"Content-Length",
                     b"Host", b"X-Forwarded-For", b"Cookie"]),
    st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}", fullmatch=True),
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.sampled_from([b"*", b'"abc"', b'W/"x", "y"', b"Thu, 01 Jan 1970 00:00:00 GMT",
                     b"Fri, 31 Dec 9999 23:59:59 GMT", b"Mon, 99 Foo 0000 99:99:99 XYZ",
                     b"100-continue", b"chunked", b"-1", b"99999999999999999999", b"h2c",
                     b"application/ocsp-request", b"x" * 20_000, b"x" * 30_000]),
    st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)  # fmt: skip
HTTP_DATES = st.builds(
    "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
    st.sampled_from(["Mon", "Sun", "Foo"]), st.integers(0, 99),
    st.sampled_from(["Jan", "Dec", "Xyz"]), st.integers(0, 10**6), st.integers(0, 99),
    st.integers(0, 99), st.integers(0, 99),
    st.sampled_from(["GMT", "UT", "-0000", "+2359", "-9999", "EST", "Z", ""]),
).map(str.encode)  # fmt: skip
HEADERS = st.one_of(
    st.tuples(HEADER_NAMES, HEADER_VALUES),
    st.tuples(st.just(b"If-Modified-Since"), HTTP_DATES),  # around and past every date limit
).map(b": ".join)


def _ocsp_request(cert: x509.Certificate, issuer: x509.Certificate,
                  nonce: bytes | None = None) -> bytes:  # fmt: skip
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


OCSP_HASHES = [hashes.SHA1(), hashes.SHA256(), hashes.SHA512()]  # noqa: S303 - what RPs send


@st.composite
def ocsp_requests(draw: st.DrawFn, target: Target) -> bytes:
    """Real OCSP requests (this CA's leaf, unknown serials, odd nonces and hashes), mutated
    ones and noise."""
    how = draw(st.sampled_from(["real", "by-hash", "mutated", "noise"]))
    nonce = draw(st.none() | st.binary(max_size=80))
    if how == "real":
        return _ocsp_request(target.leaf, target.intermediate, nonce)
    if how == "by-hash":
        algorithm = draw(st.sampled_from(OCSP_HASHES))
        size = algorithm.digest_size
        real = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(target.leaf, target.intermediate, algorithm)
            .build()
        )
        name_hash = draw(st.just(real.issuer_name_hash) | st.binary(min_size=size, max_size=size))
        key_hash = draw(st.just(real.issuer_key_hash) | st.binary(min_size=size, max_size=size))
        serial = draw(st.integers(0, 2**160) | st.just(target.leaf.serial_number))
        builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            name_hash, key_hash, serial, algorithm
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.build().public_bytes(serialization.Encoding.DER)
    if how == "mutated":
        data = bytearray(_ocsp_request(target.leaf, target.intermediate, nonce))
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data[: draw(st.integers(1, len(data)))])
    return draw(st.binary(max_size=300))


@PROPERTY
@given(data=st.data(), get=st.booleans(), quote=st.booleans())
def test_ocsp_requests_get_an_ocsp_answer(
    target: Target, data: st.DataObject, get: bool, quote: bool
) -> None:
    der = data.draw(ocsp_requests(target))
    if get and der:  # GET /ocsp/ with nothing after it is the POST path: 405
        encoded = base64.b64encode(der)
        if quote:
            encoded = encoded.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
        # ...and base64 that is not: stray characters, escapes of non-ASCII, bad padding
        encoded += data.draw(st.sampled_from([b"", b"", b"", b"!", b"%FF", b"%C3%A9", b"=", b"A"]))
        raw = _request(b"GET", b"/ocsp/" + encoded)
    else:
        raw = _request(b"POST", b"/ocsp", [b"Content-Type: application/ocsp-request"], der)
    status, _, body = _http(target.ca, raw)
    assert status == 200, f"{status} for {raw[:300]!r}"
    answer = ocsp.load_der_ocsp_response(body)
    assert answer.response_status in (
        ocsp.OCSPResponseStatus.SUCCESSFUL,
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        ocsp.OCSPResponseStatus.UNAUTHORIZED,
    ), f"{answer.response_status} for {der.hex()}"


@PROPERTY
@given(
    method=st.one_of(
        st.sampled_from(
            [
                b"GET",
                b"HEAD",
                b"POST",
                b"PUT",
                b"DELETE",
                b"OPTIONS",
                b"PATCH",
                b"TRACE",
                b"CONNECT",
                b"BREW",
            ]
        ),
        st.from_regex(rb"[A-Z]{1,12}", fullmatch=True),
    ),
    path=PATHS,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/9.9"]),
    headers=st.lists(HEADERS, max_size=6),
    body=st.one_of(st.binary(max_size=2000), st.just(b"\x30" * 20_000)),
)
@example(method=b"GET", path=b"http://[::1/ocsp", version=b"HTTP/1.1", headers=[], body=b"")
def test_http_requests_never_get_a_500(
    target: Target, method: bytes, path: bytes, version: bytes, headers: list[bytes], body: bytes
) -> None:
    raw = _request(method, path, headers, body, version)
    status, head, answer = _http(target.ca, raw)
    assert status != 500, f"500 for {raw[:400]!r}: {head!r}"
    if status == 200 and b"application/ocsp-response" in head and method != b"HEAD":
        # the OCSP path's own 500: an internalError answer
        status_of = ocsp.load_der_ocsp_response(answer).response_status
        assert status_of != ocsp.OCSPResponseStatus.INTERNAL_ERROR, f"for {raw[:400]!r}"


# What HTTP lets a field value hold (RFC 9110 5.5: no controls but tab), latin-1 included.
FIELD_VALUES = st.binary(max_size=200).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip()
)
CONDITIONAL = st.one_of(
    st.tuples(st.just(b"If-Modified-Since"), HTTP_DATES | FIELD_VALUES),
    st.tuples(st.just(b"If-None-Match"), st.sampled_from([b"*", b'"x"', b'W/"x", "y"', b","])),
    st.tuples(st.just(b"If-None-Match"), FIELD_VALUES),
).map(b": ".join)


@PROPERTY
@given(
    method=st.sampled_from([b"GET", b"HEAD"]),
    path=st.sampled_from([b"/crl", b"/crl.pem", b"/root.crl"]),
    headers=st.lists(CONDITIONAL, min_size=1, max_size=3),
)
def test_conditional_gets_of_the_crls_answer_200_or_304(
    target: Target, method: bytes, path: bytes, headers: list[bytes]
) -> None:
    status, head, _ = _http(target.ca, _request(method, path, headers))
    assert status in (200, 304), f"{status} for {method!r} {path!r} {headers!r}: {head!r}"


@PROPERTY
@given(
    requests=st.lists(
        st.tuples(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT"]), PATHS,
                  st.lists(HEADERS, max_size=3), st.binary(max_size=300)),
        min_size=2, max_size=8,
    ),
)  # fmt: skip
def test_pipelined_requests_on_one_connection_never_get_a_500(
    target: Target, requests: list[tuple[bytes, bytes, list[bytes], bytes]]
) -> None:
    raw = [_request(m, p, h, b, close=False) for m, p, h, b in requests[:-1]]
    _, head, body = _http(target.ca, b"".join([*raw, _request(*requests[-1])]))
    answers = head + b"\r\n\r\n" + body
    assert b"HTTP/1.1 500" not in answers, f"a 500 among {answers[:600]!r}"


@PROPERTY
@given(noise=st.binary(max_size=3000))
def test_http_noise_is_refused_not_a_500(target: Target, noise: bytes) -> None:
    status, head, _ = _http(target.ca, noise + b"\r\n\r\n", half_close=True)
    assert status != 500, f"500 for {noise[:400]!r}: {head!r}"
