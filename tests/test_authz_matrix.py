"""The authorization matrix: every RPC of signet.ca.v1.CertificateAuthority against every
kind of caller, each cell the exact outcome over real TLS on 127.0.0.1. The matrix is data;
SECURITY.md prints it, and a test keeps the two identical."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf.message import Message

from ca_server.config import load_config
from ca_server.core.authority import CertificateAuthority
from ca_server.core.clock import FakeClock
from ca_server.core.keys import signature_hash
from ca_server.core.profile import fingerprint_sha256, pem, random_serial, serial_hex
from ca_server.core.store import AuditEvent, CertificateRecord
from ca_server.datadir import init_ca, load_ca
from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.conftest import CaServer, start_ca, stop_ca
from tests.errdetails import details_of
from tests.pki import TRUST_DOMAIN, key_pem, make_csr, make_key, spiffe

# "TLS": the listener refuses the handshake, so no RPC is ever dispatched.
OK, DENIED, UNAUTHENTICATED, UNIMPLEMENTED, TLS = (
    "OK",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
    "TLS",
)


@dataclass(frozen=True)
class Column:
    """A kind of caller: the credential it presents, whose names its requests ask for, and the
    listener it dials."""

    description: str
    asks_as: Literal["admin", "own", "other", "beyond"]  # which requests it makes (REQUESTS)
    listener: Literal["api", "bootstrap"] = "api"


# Every credential that is not the workload's carries the admin's identity: a refusal then
# comes from the credential itself, never from a missing role.
COLUMNS: dict[str, Column] = {
    "admin": Column("the admin credentials `init` wrote (`spiffe://<td>/admin`)", "admin"),
    "workload, own names": Column(
        "a workload certificate (`spiffe://<td>/web/…`), asking for its own identity, names "
        "its policy lists and its own serials",
        "own",
    ),
    "workload, others' names": Column(
        "the same workload certificate, asking for another workload's identity and serials",
        "other",
    ),
    "workload, beyond policy": Column(
        "the same workload certificate, asking for its own identity with a DNS name or an IP "
        "address its policy does not list",
        "beyond",
    ),
    "revoked": Column("a revoked certificate of this CA for the admin identity", "admin"),
    "expired": Column("an expired certificate of this CA for the admin identity", "admin"),
    "expired since handshake": Column(
        "a certificate of this CA for the admin identity, valid when the connection was made "
        "and expired by the CA's clock since (a long-lived connection)",
        "admin",
    ),
    "no clientAuth": Column(
        "a certificate of this CA for the admin identity, recorded in the store, whose "
        "extended key usage is serverAuth alone",
        "admin",
    ),
    "foreign CA": Column(
        "a certificate for the admin identity from another Signet CA of the same trust domain "
        "(same CA names)",
        "admin",
    ),
    "no certificate": Column("no client certificate, on the API listener", "admin"),
    "bootstrap token": Column(
        "no client certificate, a valid unused bootstrap token, on the bootstrap listener",
        "admin",
        "bootstrap",
    ),
}

_REFUSED_AT_TLS = {
    name: TLS for name in ("expired", "no clientAuth", "foreign CA", "no certificate")
}
_ON_BOOTSTRAP = {"bootstrap token": UNIMPLEMENTED}  # that listener serves Enroll alone


def _row(
    admin: str, own: str, other: str, beyond: str, refused: str = UNAUTHENTICATED
) -> dict[str, str]:
    row = {
        "admin": admin,
        "workload, own names": own,
        "workload, others' names": other,
        "workload, beyond policy": beyond,
        "revoked": refused,
        "expired since handshake": refused,
        **_REFUSED_AT_TLS,
        **_ON_BOOTSTRAP,
    }
    return {column: row[column] for column in COLUMNS}


# RPC -> caller kind -> outcome. On the API listener Enroll needs a token like anywhere else:
# a client certificate, even the admin's, does not stand in for one.
MATRIX: dict[str, dict[str, str]] = {
    "SignCertificate": _row(OK, OK, DENIED, DENIED),
    # The renewed certificate copies the caller's names: a CSR asking for others' is ignored.
    "RenewCertificate": _row(OK, OK, OK, OK),
    "RevokeCertificate": _row(OK, OK, DENIED, OK),
    "GetCertificateStatus": _row(OK, OK, OK, OK),
    "GetCRL": _row(OK, OK, OK, OK),
    "GetTrustBundle": _row(OK, OK, OK, OK),
    "ListCertificates": _row(OK, DENIED, DENIED, DENIED),
    "CreateBootstrapToken": _row(OK, DENIED, DENIED, DENIED),
    "Enroll": {
        **_row(UNAUTHENTICATED, UNAUTHENTICATED, UNAUTHENTICATED, UNAUTHENTICATED),
        "bootstrap token": OK,
    },
    "ListAuditEvents": _row(OK, DENIED, DENIED, DENIED),
    "WatchRevocations": _row(OK, OK, OK, OK),
    "WatchTrustBundle": _row(OK, OK, OK, OK),
    "GetRenewalInfo": _row(OK, OK, OK, OK),
    "RenewNow": _row(OK, DENIED, DENIED, DENIED),
}


def reason(rpc: str, column: str, outcome: str) -> str:
    """What the status message of a refusal must say: the cell is refused for the reason the
    matrix means, not for some other one with the same code."""
    if outcome == TLS:
        return "failed to connect"
    if outcome == UNIMPLEMENTED:
        return "Method not found"
    if outcome == UNAUTHENTICATED:
        if rpc == "Enroll":
            return "bootstrap token is unknown"
        return {"revoked": "has been revoked", "expired since handshake": "has expired"}[column]
    assert outcome == DENIED, outcome
    if rpc == "SignCertificate" and COLUMNS[column].asks_as == "beyond":
        return "not allowed for .* by policy"
    return {
        "SignCertificate": "may request certificates only for its own identity",
        "RevokeCertificate": "may revoke only its own certificates",
    }.get(rpc, f"{rpc} needs the admin role")


def error_reason(rpc: str, column: str, outcome: str) -> str | None:
    """The ErrorInfo reason a refused cell carries (None: refused before any code of ours)."""
    if outcome in (TLS, UNIMPLEMENTED):
        return None
    if outcome == UNAUTHENTICATED:
        if rpc == "Enroll":
            return "TOKEN_INVALID"
        return {"revoked": "CALLER_REVOKED", "expired since handshake": "CALLER_EXPIRED"}[column]
    if rpc == "SignCertificate":
        return "NAME_NOT_ALLOWED" if COLUMNS[column].asks_as == "beyond" else "IDENTITY_NOT_OWN"
    return "CERTIFICATE_NOT_OWN" if rpc == "RevokeCertificate" else "ADMIN_REQUIRED"


ADMIN = spiffe("admin")
WORKLOAD = spiffe("web/matrix")
NEIGHBOUR = spiffe("web/matrix-neighbour")
ENROLLED = spiffe("web/matrix-enrolled")


@dataclass
class Credential:
    chain: bytes  # leaf then intermediates
    key: bytes


@dataclass
class World:
    ca: CaServer
    credentials: dict[str, Credential | None]  # by column; None: no client certificate
    token: str  # for the "bootstrap token" column
    own_serial: str  # the workload's own certificate
    neighbour_serial: str

    def spare(self, identity: str) -> str:
        """A fresh certificate to revoke: each Revoke cell needs one of its own."""
        return self.ca.issue(identity.removeprefix(f"spiffe://{TRUST_DOMAIN}/")).serial


# Whose names each kind of request asks for.
TARGET = {
    "admin": spiffe("web/matrix-signed"),
    "own": WORKLOAD,
    "other": NEIGHBOUR,
    "beyond": WORKLOAD,
}
# What the workload's policy grants it (see TEST_POLICY), and what it does not.
GRANTED_DNS, GRANTED_IP = "matrix.web.internal", "10.1.2.3"
BEYOND_DNS, BEYOND_IP = "evil.example.com", "192.168.1.1"


def _csr(uris: list[str], dns: list[str] = [], ips: list[str] = []) -> str:  # noqa: B006
    return make_csr(uris=uris, dns=dns, ips=ips)[1]


def _sign(w: World, asks_as: str) -> list[Message]:
    if asks_as == "beyond":  # one request per kind of name: each check is seen alone
        csrs = [_csr([WORKLOAD], dns=[BEYOND_DNS]), _csr([WORKLOAD], ips=[BEYOND_IP])]
    elif asks_as == "other":
        csrs = [_csr([NEIGHBOUR])]
    else:
        csrs = [_csr([TARGET[asks_as]], dns=[GRANTED_DNS], ips=[GRANTED_IP])]
    return [ca_pb2.SignCertificateRequest(csr_pem=csr) for csr in csrs]


def _renew(w: World, asks_as: str) -> list[Message]:
    csr = {
        "other": _csr([NEIGHBOUR]),
        "beyond": _csr([], dns=[BEYOND_DNS], ips=[BEYOND_IP]),
    }.get(asks_as, _csr([]))
    return [ca_pb2.RenewCertificateRequest(csr_pem=csr)]


def _revoke(w: World, asks_as: str) -> list[Message]:
    return [ca_pb2.RevokeCertificateRequest(serial_number=w.spare(TARGET[asks_as]))]


def _status(w: World, asks_as: str) -> list[Message]:
    serial = w.neighbour_serial if asks_as == "other" else w.own_serial
    return [ca_pb2.GetCertificateStatusRequest(serial_number=serial)]


def _token(w: World, asks_as: str) -> list[Message]:
    dns = [BEYOND_DNS] if asks_as == "beyond" else []
    return [ca_pb2.CreateBootstrapTokenRequest(identity=TARGET[asks_as], dns_names=dns)]


def _enroll(w: World, asks_as: str) -> list[Message]:
    return [ca_pb2.EnrollRequest(csr_pem=_csr([]))]  # the token is the column's (see _call)


def _audit(w: World, asks_as: str) -> list[Message]:
    return [ca_pb2.ListAuditEventsRequest(identity=TARGET[asks_as], page_size=10)]


def _renew_now(w: World, asks_as: str) -> list[Message]:
    return [ca_pb2.RenewNowRequest(serial_number=w.spare(TARGET[asks_as]))]


# RPC -> the requests a caller makes (each must get the cell's outcome), given whose names it
# asks for.
REQUESTS: dict[str, Callable[[World, str], list[Message]]] = {
    "SignCertificate": _sign,
    "RenewCertificate": _renew,
    "RevokeCertificate": _revoke,
    "GetCertificateStatus": _status,
    "GetCRL": lambda w, asks_as: [ca_pb2.GetCRLRequest()],
    "GetTrustBundle": lambda w, asks_as: [ca_pb2.GetTrustBundleRequest()],
    "ListCertificates": lambda w, asks_as: [ca_pb2.ListCertificatesRequest(page_size=10)],
    "CreateBootstrapToken": _token,
    "Enroll": _enroll,
    "ListAuditEvents": _audit,
    "WatchRevocations": lambda w, asks_as: [ca_pb2.WatchRevocationsRequest()],
    "WatchTrustBundle": lambda w, asks_as: [ca_pb2.WatchTrustBundleRequest()],
    "GetRenewalInfo": lambda w, asks_as: [
        ca_pb2.GetRenewalInfoRequest(serial_number=_status(w, asks_as)[0].serial_number)  # type: ignore[attr-defined]
    ],
    "RenewNow": _renew_now,
}
STREAMING = {"WatchRevocations", "WatchTrustBundle"}  # its outcome is that of its first message


def rpc_names() -> list[str]:
    service = ca_pb2.DESCRIPTOR.services_by_name["CertificateAuthority"]
    return [m.name for m in service.methods]


# -- the credentials --------------------------------------------------------------------------


def _issued_by(
    authority: CertificateAuthority, lifetime: dt.timedelta = dt.timedelta(hours=1)
) -> Credential:
    key = make_key()
    issued = authority.issue_for(
        public_key=key.public_key(), identity=ADMIN, lifetime=lifetime, actor="test",
        action="issue",
    )  # fmt: skip
    return Credential((issued.certificate_pem + issued.chain_pem).encode(), key_pem(key))


def _issued_at(ca: CaServer, now: dt.datetime, lifetime: dt.timedelta) -> Credential:
    """Issued by this CA into its store, as if its clock read ``now``."""
    authority = ca.authority
    shifted = CertificateAuthority(
        store=ca.store,
        clock=FakeClock(now),
        issuer=authority.issuer,
        root=authority.root,
        policy=authority.policy,
        settings=authority.settings,
    )
    return _issued_by(shifted, lifetime)


def _expired(ca: CaServer) -> Credential:
    """Valid for an hour two days ago: the handshake itself refuses it."""
    return _issued_at(ca, dt.datetime.now(dt.UTC) - dt.timedelta(days=2), dt.timedelta(hours=1))


def _expired_since_handshake(ca: CaServer) -> Credential:
    """Valid by real time (what the handshake checks) for a quarter of an hour, and expired
    by the CA's clock, which the world fixture keeps half an hour ahead."""
    credential = _issued_at(ca, dt.datetime.now(dt.UTC), dt.timedelta(minutes=15))
    leaf = x509.load_pem_x509_certificate(credential.chain)
    assert dt.datetime.now(dt.UTC) < leaf.not_valid_after_utc < ca.authority.clock.now()
    return credential


def _without_client_auth(ca: CaServer) -> Credential:
    """The CA's own profile for the admin identity, re-signed with the intermediate's key
    with serverAuth as the only extended key usage, and recorded in the store like any
    issued certificate: only the EKU differs from a credential that works."""
    issuer = ca.authority.issuer
    template = x509.load_pem_x509_certificate(_issued_by(ca.authority).chain)
    key = make_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
    )
    for extension in template.extensions:
        value: Any = extension.value
        if isinstance(value, x509.ExtendedKeyUsage):
            value = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        elif isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(value, extension.critical)
    cert = builder.sign(issuer.key, signature_hash(issuer.key))
    now = ca.authority.clock.now().replace(microsecond=0)
    record = CertificateRecord(
        serial=serial_hex(cert.serial_number),
        identity=ADMIN,
        dns_names=(),
        ip_addresses=(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=fingerprint_sha256(cert),
        der=cert.public_bytes(Encoding.DER),
        requested_by="test",
        issued_at=now,
        authorized_by="test",
    )
    ca.store.add_certificate(record, AuditEvent(now, "issue", "test", record.serial))
    return Credential((pem(cert) + issuer.chain_pem).encode(), key_pem(key))


def _foreign(tmp: Path) -> Credential:
    """A second Signet CA of the same trust domain: same CA names, another key."""
    config = init_ca(
        tmp / "foreign-ca", trust_domain=TRUST_DOMAIN, key_type="ec-p256",
        store_url=f"sqlite:///{tmp / 'foreign.db'}",
    )  # fmt: skip
    foreign = load_ca(load_config(config.data_dir, env={}), None)
    try:
        return _issued_by(foreign.authority)
    finally:
        foreign.store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # A CA of its own: the matrix revokes, mints tokens and spends bad ones (counted per peer).
    tmp = tmp_path_factory.mktemp("authz")
    # The CA's clock runs half an hour ahead once it serves, so that a certificate can be
    # valid for the handshake yet expired for the CA, without a sleep. A backdate of an hour
    # keeps what it issues valid by real time.
    clock = FakeClock(dt.datetime.now(dt.UTC))
    ca = start_ca(tmp / "ca-data", clock=clock, issuance={"backdate": "1h"})
    clock.advance(dt.timedelta(minutes=30))
    try:
        admin_cert, admin_key = ca.admin_credentials()
        workload = ca.issue(WORKLOAD.removeprefix(f"spiffe://{TRUST_DOMAIN}/"))
        revoked = ca.issue("admin")
        with ca.admin_channel() as ch:
            stub = ca.stub(ch)
            stub.RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(serial_number=revoked.serial), timeout=30
            )
            token = stub.CreateBootstrapToken(
                ca_pb2.CreateBootstrapTokenRequest(identity=ENROLLED), timeout=30
            ).token
        credentials: dict[str, Credential | None] = {
            "admin": Credential(admin_cert, admin_key),
            "workload, own names": Credential(workload.fullchain, workload.key_pem),
            "workload, others' names": Credential(workload.fullchain, workload.key_pem),
            "workload, beyond policy": Credential(workload.fullchain, workload.key_pem),
            "revoked": Credential(revoked.fullchain, revoked.key_pem),
            "expired": _expired(ca),
            "expired since handshake": _expired_since_handshake(ca),
            "no clientAuth": _without_client_auth(ca),
            "foreign CA": _foreign(tmp),
            "no certificate": None,
            "bootstrap token": None,
        }
        neighbour = ca.issue(NEIGHBOUR.removeprefix(f"spiffe://{TRUST_DOMAIN}/"))
        yield World(ca, credentials, token, workload.serial, neighbour.serial)
    finally:
        stop_ca(ca)


class Channels:
    """One channel per caller kind that connects. A channel the listener refused backs off
    and fails later calls from its last error, so each refused call gets a channel (and a
    handshake) of its own."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._open: dict[str, grpc.Channel] = {}

    def get(self, column: str) -> grpc.Channel:
        if column not in self._open:
            self._open[column] = self.new(column)
        return self._open[column]

    def new(self, column: str) -> grpc.Channel:
        ca, credential = self._world.ca, self._world.credentials[column]
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.root_pem,
            private_key=credential.key if credential else None,
            certificate_chain=credential.chain if credential else None,
        )
        listener = COLUMNS[column].listener
        address = ca.address if listener == "api" else ca.running.bootstrap_address
        # A private subchannel pool: no channel rides on another's connection.
        return grpc.secure_channel(address, creds, options=[("grpc.use_local_subchannel_pool", 1)])

    def close(self) -> None:
        for channel in self._open.values():
            channel.close()


@pytest.fixture(scope="module")
def channels(world: World) -> Iterator[Channels]:
    pool = Channels(world)
    yield pool
    pool.close()


def _call(
    world: World, channels: Channels, column: str, rpc: str, request: Message
) -> tuple[str, str, Any]:
    """One call: its outcome as the matrix writes it, the status message, and the reply (the
    RpcError when refused)."""
    refused_at_tls = MATRIX[rpc][column] == TLS
    channel = channels.new(column) if refused_at_tls else channels.get(column)
    try:
        reply = getattr(ca_pb2_grpc.CertificateAuthorityStub(channel), rpc)(request, timeout=30)
        if rpc in STREAMING:
            stream, reply = reply, next(reply)
            stream.cancel()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
            return TLS, details, exc
        return code.name, details, exc
    finally:
        if refused_at_tls:
            channel.close()
    return OK, "", reply


def _check_names(reply: ca_pb2.IssuedCertificate, rpc: str, column: str) -> None:
    """Whatever the CSR asked for, a certificate names the caller, what it may grant, or the
    token's identity: never the neighbour, never names beyond the caller's policy."""
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    asks_as = COLUMNS[column].asks_as
    if rpc == "Enroll":
        allowed = {ENROLLED}
    elif asks_as == "admin":
        allowed = {ADMIN, TARGET["admin"]}  # its renewal, what it signed
    else:
        allowed = {WORKLOAD}
    assert set(san.get_values_for_type(x509.UniformResourceIdentifier)) <= allowed
    assert set(san.get_values_for_type(x509.DNSName)) <= {GRANTED_DNS}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} <= {GRANTED_IP}


# -- the tests --------------------------------------------------------------------------------


def test_the_matrix_has_a_row_for_every_rpc_and_a_cell_for_every_caller() -> None:
    assert list(MATRIX) == rpc_names()
    assert list(REQUESTS) == rpc_names()
    for rpc, row in MATRIX.items():
        assert list(row) == list(COLUMNS), rpc


@pytest.mark.parametrize(("rpc", "column"), [(rpc, column) for rpc in MATRIX for column in COLUMNS])
def test_each_caller_gets_exactly_its_cells_outcome(
    world: World, channels: Channels, rpc: str, column: str
) -> None:
    expected = MATRIX[rpc][column]
    for request in REQUESTS[rpc](world, COLUMNS[column].asks_as):
        if rpc == "Enroll" and column == "bootstrap token":
            assert isinstance(request, ca_pb2.EnrollRequest)
            request.token = world.token
        outcome, details, reply = _call(world, channels, column, rpc, request)
        assert outcome == expected, details
        if outcome != OK:
            assert re.search(reason(rpc, column, outcome), details), details
            why = error_reason(rpc, column, outcome)
            if why is not None:
                assert details_of(reply).reason == why, details

        elif isinstance(reply, ca_pb2.IssuedCertificate):
            _check_names(reply, rpc, column)


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS = 0x4  # HTTP/2 frame type


def _first_frame_type(world: World, column: str, tmp: Path) -> int | None:
    """Speak HTTP/2 to the API listener over raw TLS with the column's credential: the type of
    the server's first frame, or None when it closes the connection without one."""
    ca = world.ca
    context = ssl.create_default_context(cadata=ca.root_pem.decode())
    context.set_alpn_protocols(["h2"])
    credential = world.credentials[column]
    if credential is not None:
        (tmp / "cert.pem").write_bytes(credential.chain)
        (tmp / "key.pem").write_bytes(credential.key)
        context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    host, port = ca.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        # The client's half of a TLS 1.3 handshake ends before the server has checked the
        # client certificate: the server's verdict comes with the first read.
        tls.sendall(_HTTP2_PREFACE)
        try:
            header = tls.recv(9)
        except (ssl.SSLError, ConnectionResetError):
            return None
        return header[3] if len(header) > 3 else None


@pytest.mark.parametrize("column", [c for c, spec in COLUMNS.items() if spec.listener == "api"])
def test_tls_cells_are_refused_before_http2_and_the_others_are_not(
    world: World, tmp_path: Path, column: str
) -> None:
    """Independent of gRPC's client: "TLS" means the listener closed the connection without a
    word of HTTP/2, and every other caller of the API listener gets the server's SETTINGS."""
    refused = {c for row in MATRIX.values() for c, outcome in row.items() if outcome == TLS}
    expected = None if column in refused else _SETTINGS
    assert _first_frame_type(world, column, tmp_path) == expected


# -- the matrix as SECURITY.md prints it --------------------------------------------------------


def render_matrix() -> str:
    """The matrix as a Markdown table, then what each column means."""
    lines = [
        "| RPC | " + " | ".join(COLUMNS) + " |",
        "| --- |" + " --- |" * len(COLUMNS),
    ]
    lines += [f"| `{rpc}` | " + " | ".join(row.values()) + " |" for rpc, row in MATRIX.items()]
    lines.append("")
    lines += [f"- **{name}**: {column.description}" for name, column in COLUMNS.items()]
    return "\n".join(lines) + "\n"


def test_security_md_prints_exactly_this_matrix() -> None:
    text = (Path(__file__).parent.parent / "SECURITY.md").read_text()
    assert render_matrix() in text, (
        "print it with: .venv/bin/python -m tests.test_authz_matrix (from the repository root)"
    )


if __name__ == "__main__":
    print(render_matrix(), end="")
