"""Bootstrap: one-time tokens (CreateBootstrapToken), Enroll on the server-TLS bootstrap
listener, and `ca-client enroll` pinning the root by fingerprint."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import duration_pb2

from ca_client.cli import main as ca_client
from ca_client.files import read_credentials
from ca_client.serial import serial_hex
from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.conftest import CaServer, start_ca, stop_ca
from tests.errdetails import assert_refused
from tests.pki import make_csr, spiffe


def _token(admin, path: str, **kwargs) -> ca_pb2.CreateBootstrapTokenResponse:  # type: ignore[no-untyped-def]
    return admin.CreateBootstrapToken(
        ca_pb2.CreateBootstrapTokenRequest(identity=spiffe(path), **kwargs), timeout=30
    )


def _bootstrap_stub(ca: CaServer) -> tuple[grpc.Channel, ca_pb2_grpc.CertificateAuthorityStub]:
    channel = grpc.secure_channel(
        ca.running.bootstrap_address, grpc.ssl_channel_credentials(ca.root_pem)
    )
    return channel, ca_pb2_grpc.CertificateAuthorityStub(channel)


def _enroll(ca: CaServer, token: str, csr: str | None = None) -> ca_pb2.IssuedCertificate:
    channel, stub = _bootstrap_stub(ca)
    with channel:
        return stub.Enroll(
            ca_pb2.EnrollRequest(token=token, csr_pem=csr or make_csr()[1]), timeout=30
        )


def test_a_token_yields_a_certificate_with_exactly_its_identity_and_names(
    ca: CaServer, admin
) -> None:
    minted = _token(admin, "web/boot", dns_names=["boot.web.internal"], ip_addresses=["10.9.9.9"])
    assert minted.token.startswith("sgt_") and len(minted.token) > 40
    root = x509.load_pem_x509_certificate(ca.root_pem)
    assert (
        minted.root_fingerprint_sha256
        == hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert minted.expires_at.ToDatetime(dt.UTC) > dt.datetime.now(dt.UTC)
    # The CSR asks for other names: the token's are what the certificate gets.
    _, csr = make_csr(uris=[spiffe("admin")], dns=["evil.example.com"])
    reply = _enroll(ca, minted.token, csr)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe("web/boot")]
    assert san.get_values_for_type(x509.DNSName) == ["boot.web.internal"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.9.9.9"]


@pytest.fixture
def own_ca(tmp_path: Path) -> Iterator[CaServer]:
    """A CA of its own: bad-token limits are per CA and per peer (all tests are 127.0.0.1)."""
    server = start_ca(tmp_path / "ca-data")
    yield server
    stop_ca(server)


def test_a_token_is_single_use_even_under_concurrent_attempts(own_ca: CaServer) -> None:
    ca = own_ca
    with ca.admin_channel() as ch:
        token = _token(ca.stub(ch), "web/race").token
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            _enroll(ca, token)
            result = "ok"
        except grpc.RpcError as exc:
            result = exc.code().name
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["UNAUTHENTICATED"] * 7 + ["ok"]


def test_wrong_and_reused_tokens_are_unauthenticated_and_audited(
    own_ca: CaServer, own_admin
) -> None:
    token = _token(own_admin, "web/reuse").token
    _enroll(own_ca, token)
    for bad in (token, "sgt_" + "A" * 43):
        with pytest.raises(grpc.RpcError) as info:
            _enroll(own_ca, bad)
        assert "already used or expired" in (info.value.details() or "")
        # The token is the field at fault; its value is named nowhere in the details.
        got = assert_refused(info.value, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID", "token")
        assert bad not in repr(got)
    refused = [e for e in own_ca.store.audit_events(200) if e.action == "enroll-refused"]
    assert refused and refused[0].peer.startswith("ipv4:127.0.0.1")
    assert refused[0].outcome == "bad token"


def test_a_bad_csr_does_not_burn_the_token(ca: CaServer, admin) -> None:
    token = _token(admin, "web/careful").token
    with pytest.raises(grpc.RpcError) as info:
        _enroll(ca, token, "not a csr")
    assert_refused(info.value, grpc.StatusCode.INVALID_ARGUMENT, "CSR_NOT_PEM", "csr_pem")
    assert _enroll(ca, token).serial_number


def test_only_admins_mint_tokens_and_only_for_the_trust_domain(ca: CaServer, admin) -> None:
    creds = ca.issue("web/not-admin")
    with ca.channel(creds.fullchain, creds.key_pem) as ch, pytest.raises(grpc.RpcError) as info:
        _token(ca.stub(ch), "web/x")
    assert_refused(info.value, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    with pytest.raises(grpc.RpcError) as info:
        admin.CreateBootstrapToken(
            ca_pb2.CreateBootstrapTokenRequest(identity="spiffe://elsewhere/x"), timeout=30
        )
    got = assert_refused(
        info.value, grpc.StatusCode.PERMISSION_DENIED, "IDENTITY_OUTSIDE_TRUST_DOMAIN"
    )
    assert got.metadata["identity"] == "spiffe://elsewhere/x"


def test_tokens_are_stored_only_as_hashes(own_ca: CaServer, own_admin) -> None:
    token = _token(own_admin, "web/hashed").token
    stored = [r[0] for r in own_ca.store._read("SELECT token_hash FROM bootstrap_tokens")]
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert token not in stored
    assert not any(token in (e.detail or "") for e in own_ca.store.audit_events(500))


def test_the_bootstrap_listener_serves_enroll_and_nothing_else(ca: CaServer) -> None:
    channel, stub = _bootstrap_stub(ca)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_burst_of_bad_tokens_from_one_peer_is_rate_limited(own_ca: CaServer) -> None:
    codes, last = [], None
    for _ in range(12):
        with pytest.raises(grpc.RpcError) as info:
            _enroll(own_ca, "sgt_wrong")
        codes.append(info.value.code())
        last = info.value
    assert codes[:10] == [grpc.StatusCode.UNAUTHENTICATED] * 10
    assert codes[10:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert last is not None
    got = assert_refused(last, grpc.StatusCode.RESOURCE_EXHAUSTED, "ENROLL_RATE_LIMITED")
    assert got.retry_seconds is not None and 1 <= got.retry_seconds <= 60


def test_the_limit_is_exact_under_concurrent_attempts(own_ca: CaServer) -> None:
    def attempt(_: int) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            _enroll(own_ca, "sgt_wrong")
        return info.value.code()

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(24)))
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 10
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 14


def test_a_valid_token_works_while_its_address_floods_bad_ones(own_ca: CaServer) -> None:
    with own_ca.admin_channel() as ch:
        token = _token(own_ca.stub(ch), "web/behind-nat").token
    for _ in range(30):  # strangers behind the same address
        with pytest.raises(grpc.RpcError):
            _enroll(own_ca, "sgt_wrong")
    assert _enroll(own_ca, token).serial_number  # not locked out
    refused = [e for e in own_ca.store.audit_events(500) if e.action == "enroll-refused"]
    # Summarised: the window's first refusal and its going over the limit, not 30 rows.
    assert len(refused) == 2 and "rate-limited" in refused[0].detail


def test_ca_client_enroll_pins_the_root_and_writes_credentials(
    ca: CaServer, admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minted = _token(admin, "web/enrolled", dns_names=["enrolled.web.internal"])
    out = tmp_path / "tls"
    code = ca_client(
        ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
         "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    reply = json.loads(capsys.readouterr().out)
    creds = read_credentials(out)
    assert creds is not None
    assert serial_hex(creds.certificate.serial_number) == reply["serial_number"]
    assert creds.key.public_key() == creds.certificate.public_key()
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert creds.roots[0] == x509.load_pem_x509_certificate(ca.root_pem)
    # The enrolled identity can renew with the main, mTLS API at once.
    assert ca_client(["renew", "--server", ca.address, "--out", str(out)]) == 0


def test_ca_client_enroll_refuses_a_root_that_does_not_match_the_pin(
    ca: CaServer, admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minted = _token(admin, "web/pinned")
    code = ca_client(
        ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
         "--root-fingerprint", "00" * 32, "--out", str(tmp_path / "tls")]
    )  # fmt: skip
    assert code == 2
    assert "refusing to trust it" in capsys.readouterr().err
    assert not (tmp_path / "tls").exists()
    assert _enroll(ca, minted.token).serial_number  # the token was not spent


def test_ca_server_token_create_mints_locally_into_the_running_cas_store(
    ca: CaServer, tmp_path: Path
) -> None:
    cli = Path(sys.executable).parent / "ca-server"
    result = subprocess.run(
        [str(cli), "token", "create", "--data-dir", str(ca.data_dir),
         "--identity", spiffe("web/local-token"), "--dns-name", "local.web.internal",
         "--token-ttl", "5m", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    minted = json.loads(result.stdout)
    assert minted["root_fingerprint_sha256"] == ca.authority.root_fingerprint()
    reply = _enroll(ca, minted["token"])  # the running server sees it: one shared store
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["local.web.internal"]
    bad = subprocess.run(
        [str(cli), "token", "create", "--data-dir", str(ca.data_dir), "--identity", "nope"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "SPIFFE" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("ttl", "needle"),
    [
        ("25h", "--token-ttl must be more than 0s and at most 24h, got 25h"),
        ("0s", "--token-ttl must be more than 0s and at most 24h, got 0s"),
    ],
)
def test_ca_server_token_create_states_the_token_ttl_limits_as_durations(
    ca: CaServer, ttl: str, needle: str
) -> None:
    cli = Path(sys.executable).parent / "ca-server"
    result = subprocess.run(
        [str(cli), "token", "create", "--data-dir", str(ca.data_dir),
         "--identity", spiffe("web/ttl"), "--token-ttl", ttl],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_ca_server_help_describes_every_flag_and_token_create_has_no_init_only_flags() -> None:
    cli = Path(sys.executable).parent / "ca-server"

    def help_of(*command: str) -> str:
        result = subprocess.run(
            [str(cli), *command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return " ".join(result.stdout.split())  # argparse wraps to the terminal width

    for command in (["serve"], ["init"], ["token", "create"], ["migrate"]):
        text = help_of(*command)
        assert "--log-level {debug,info,warning,error} least severe log lines" in text, command
    token = help_of("token", "create")
    assert "--trust-domain" not in token and "--key-type" not in token
    assert "--token-ttl TOKEN_TTL how long the token can be used" in token
    assert "at most 24h" in token
    assert "--trust-domain" in help_of("serve") and "--key-type" in help_of("init")


def test_enroll_refuses_a_server_that_is_not_the_ca_even_with_a_certificate_from_it(
    ca: CaServer, admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A workload certificate of this CA naming 127.0.0.1, plus the (public) root in the
    handshake, must not be enough to pose as the bootstrap listener and collect tokens."""
    evil = ca.issue("web/evil", ips=("127.0.0.1",), dns=("localhost",))
    received: list[str] = []

    def steal(request: ca_pb2.EnrollRequest, context: grpc.ServicerContext) -> Any:
        received.append(request.token)
        context.abort(grpc.StatusCode.UNAVAILABLE, "nope")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(
        steal,
        request_deserializer=ca_pb2.EnrollRequest.FromString,
        response_serializer=ca_pb2.IssuedCertificate.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "signet.ca.v1.CertificateAuthority", {"Enroll": handler}
            ),
        )
    )
    creds = grpc.ssl_server_credentials([(evil.key_pem, evil.fullchain + ca.root_pem)])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        minted = _token(admin, "web/victim")
        code = ca_client(
            ["enroll", "--server", f"127.0.0.1:{port}", "--token", minted.token,
             "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(tmp_path / "t")]
        )  # fmt: skip
    finally:
        server.stop(0)
    assert code != 0
    assert received == []  # the token never left the client
    assert not (tmp_path / "t" / "cert.pem").exists()
    capsys.readouterr()


def test_enroll_with_bad_output_options_does_not_spend_the_token(
    ca: CaServer, admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minted = _token(admin, "web/options")
    code = ca_client(
        ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
         "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(tmp_path / "t"),
         "--format", "pem,kube"]
    )  # fmt: skip
    assert code == 2 and "unknown output format" in capsys.readouterr().err
    assert _enroll(ca, minted.token).serial_number


def test_a_zero_token_ttl_is_invalid_argument_not_fifteen_minutes(admin) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _token(admin, "web/zero-ttl", token_ttl=duration_pb2.Duration(seconds=0))
    assert_refused(
        info.value, grpc.StatusCode.INVALID_ARGUMENT, "TOKEN_TTL_OUT_OF_RANGE", "token_ttl"
    )
    assert "token_ttl 0s is out of range" in (info.value.details() or "")


def test_a_token_with_too_many_names_is_resource_exhausted(admin) -> None:
    names = [f"h{i}.web.internal" for i in range(101)]
    with pytest.raises(grpc.RpcError) as info:
        _token(admin, "web/many", dns_names=names)
    got = assert_refused(
        info.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_NAMES", "dns_names"
    )
    assert got.metadata["limit"] == "100" and got.retry_seconds is None

    assert "at most 100" in (info.value.details() or "")


# -- nothing spent in vain, nothing left orphaned (issue 10, item 6) ---------------------------


def _enroll_args(ca: CaServer, token: str, fingerprint: str, out: Path) -> list[str]:
    return ["enroll", "--server", ca.running.bootstrap_address, "--token", token,
            "--root-fingerprint", fingerprint, "--out", str(out)]  # fmt: skip


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_enroll_into_a_regular_file_is_refused_before_the_token_is_spent(
    ca: CaServer, admin, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    minted = _token(admin, "web/file-out")
    args = _enroll_args(ca, minted.token, minted.root_fingerprint_sha256, tmp_path / where)
    assert ca_client(args) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert _enroll(ca, minted.token).serial_number  # the token was not spent


def test_enroll_with_an_unreadable_password_file_is_refused_before_the_token_is_spent(
    ca: CaServer, admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minted = _token(admin, "web/no-password")
    args = _enroll_args(ca, minted.token, minted.root_fingerprint_sha256, tmp_path / "tls")
    missing = str(tmp_path / "missing")
    assert ca_client([*args, "--format", "pem,pkcs12", "--p12-password-file", missing]) == 2
    assert "cannot read the PKCS#12 password file" in capsys.readouterr().err
    assert _enroll(ca, minted.token).serial_number


# Run in a fresh interpreter, which then becomes ca-client: files may not grow past 64 bytes
# (EFBIG, as on a full disk), and SIGXFSZ is ignored so that it is an error to handle.
LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_enroll_that_cannot_write_what_was_issued_revokes_it_and_says_so(
    ca: CaServer, admin, tmp_path: Path
) -> None:
    minted = _token(admin, "web/full-disk")
    out = tmp_path / "tls"
    cli = Path(sys.executable).parent / "ca-client"
    args = [*_enroll_args(ca, minted.token, minted.root_fingerprint_sha256, out)[1:]]
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, str(cli), "enroll", *args, "--api-server", ca.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "was revoked (cessationOfOperation)" in result.stderr, result.stderr
    serial = result.stderr.split("certificate ")[1].split()[0]
    reply = admin.GetCertificateStatus(
        ca_pb2.GetCertificateStatusRequest(serial_number=serial), timeout=30
    )
    assert reply.status == ca_pb2.REVOKED
    assert reply.reason == ca_pb2.CESSATION_OF_OPERATION
    assert not (out / "cert.pem").exists() and list(out.iterdir()) == []  # no half-written set
