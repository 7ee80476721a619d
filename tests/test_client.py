"""ca_client: renewal timing and backoff (pure, fake time, seeded randomness), credential
files replaced atomically in every format, and `ca-client` against a real CA."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca_client.cli import _parser, main
from ca_client.files import (
    DATA_LINK,
    OUTPUTS_RECORD,
    describe,
    read_credentials,
    render,
    write_atomically,
)
from ca_client.files import Credentials as FileCredentials
from ca_client.schedule import Backoff, jitter_for, parse_fraction, renewal_time
from ca_client.serial import canonical_serial, serial_hex
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, Credentials
from tests.pki import make_key
from tests.tools import need_tool, openssl

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


# -- schedule -------------------------------------------------------------------------------


def test_renewal_is_at_two_thirds_minus_up_to_a_twentieth_of_the_lifetime() -> None:
    rng = random.Random(7)
    times = [renewal_time(T0, T0 + DAY, rng) for _ in range(500)]
    assert all(T0 + DAY * (2 / 3 - 1 / 20) <= t <= T0 + DAY * 2 / 3 for t in times)
    assert len(set(times)) > 400  # jittered, so a fleet spreads out


def test_renewal_time_is_reproducible_with_a_seed() -> None:
    assert renewal_time(T0, T0 + DAY, random.Random(1)) == renewal_time(
        T0, T0 + DAY, random.Random(1)
    )


@pytest.mark.parametrize(
    ("fraction", "jitter", "rule"),
    [
        (0, 0, "fraction must be between 0 and 1"),
        (1, 0, "fraction must be between 0 and 1"),
        (0.5, 0.5, "jitter must be at least 0 and less than fraction"),
        (0.5, -0.1, "jitter must be at least 0 and less than fraction"),
    ],
)
def test_renewal_time_rejects_nonsense(fraction: float, jitter: float, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        renewal_time(T0, T0 + DAY, random.Random(0), fraction, jitter)


def test_backoff_grows_is_capped_and_is_immutable() -> None:
    rng = random.Random(3)
    b = Backoff(initial=dt.timedelta(seconds=1), cap=dt.timedelta(seconds=60))
    ceilings = []
    for _ in range(12):
        ceilings.append(min(60.0, 2.0**b.attempt))
        assert dt.timedelta(0) <= b.delay(rng) <= dt.timedelta(seconds=ceilings[-1])
        nxt = b.next()
        assert nxt.attempt == b.attempt + 1 and nxt is not b
        b = nxt
    assert ceilings[-1] == 60.0
    assert Backoff().attempt == 0  # a success starts again from a fresh value


def test_backoff_never_schedules_past_expiry() -> None:
    rng = random.Random(5)
    b = Backoff(initial=dt.timedelta(hours=1), cap=dt.timedelta(hours=10), attempt=8)
    now = T0
    not_after = T0 + dt.timedelta(minutes=10)
    for _ in range(50):
        at = b.retry_at(now, not_after, rng)
        assert now < at <= not_after
        if at == not_after:
            break
        now = at
        b = b.next()


# -- files ----------------------------------------------------------------------------------


def _creds(ca: CaServer, path: str = "web/files") -> FileCredentials:
    issued = ca.issue(path)
    key = serialization.load_pem_private_key(issued.key_pem, None)
    return FileCredentials(
        key,
        x509.load_pem_x509_certificate(issued.cert_pem),
        tuple(x509.load_pem_x509_certificates(issued.chain_pem)),
        (x509.load_pem_x509_certificate(ca.root_pem),),
    )


def test_files_are_swapped_as_one_set_with_secrets_0600(ca: CaServer, tmp_path: Path) -> None:
    creds = _creds(ca)
    formats = ["pem", "bundle", "combined", "kubernetes", "pkcs12"]
    write_atomically(tmp_path, render(creds, formats, b"s3cret"))
    first_version = os.readlink(tmp_path / "..data")
    for name in ("key.pem", "combined.pem", "tls.key", "keystore.p12"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert os.readlink(tmp_path / "cert.pem") == "..data/cert.pem"
    other = _creds(ca, "web/files2")
    write_atomically(tmp_path, render(other, formats, b"s3cret"))
    assert os.readlink(tmp_path / "..data") != first_version
    assert not (tmp_path / first_version).exists()  # the old set is gone
    back = read_credentials(tmp_path)
    assert back is not None
    assert back.certificate == other.certificate
    assert back.key.public_key() == back.certificate.public_key()


def test_pkcs12_is_readable_by_openssl_and_keytool(ca: CaServer, tmp_path: Path) -> None:
    creds = _creds(ca)
    write_atomically(tmp_path, render(creds, ["pkcs12"], b"changeit"))
    out = openssl(
        "pkcs12", "-in", tmp_path / "keystore.p12", "-passin", "pass:changeit", "-nokeys"
    ).stdout
    assert out.count("BEGIN CERTIFICATE") == 3  # leaf, intermediate, root
    keytool = need_tool("keytool", "default-jre-headless")
    listed = subprocess.run(
        [keytool, "-list", "-storetype", "PKCS12", "-keystore", str(tmp_path / "keystore.p12"),
         "-storepass", "changeit"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "PrivateKeyEntry" in listed.stdout


# -- the ca-client command --------------------------------------------------------------------


def _workload_dir(ca: CaServer, tmp_path: Path, path: str) -> tuple[Path, Credentials]:
    issued = ca.issue(path, dns=(f"{path.split('/')[-1]}.web.internal",))
    out = tmp_path / "creds"
    issued.write(out)
    (out / "ca.pem").write_bytes(ca.root_pem)
    return out, issued


def test_ca_client_renew_replaces_key_and_certificate_keeping_the_identity(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, issued = _workload_dir(ca, tmp_path, "web/cli-renew")
    os.environ["SIGNET_P12_PASSWORD"] = "changeit"
    try:
        code = main(
            ["renew", "--server", ca.address, "--out", str(out), "--json",
             "--format", "pem,bundle,kubernetes,pkcs12"]
        )  # fmt: skip
    finally:
        del os.environ["SIGNET_P12_PASSWORD"]
    assert code == 0
    reply = json.loads(capsys.readouterr().out)
    creds = read_credentials(out)
    assert creds is not None
    assert serial_hex(creds.certificate.serial_number) == reply["serial_number"]
    assert creds.certificate.serial_number != int(issued.serial, 16)
    assert creds.key.public_key() == creds.certificate.public_key()
    old = x509.load_pem_x509_certificate(issued.cert_pem)
    san = x509.SubjectAlternativeName
    assert (
        creds.certificate.extensions.get_extension_for_class(san).value
        == old.extensions.get_extension_for_class(san).value
    )
    assert (out / "tls.crt").exists() and (out / "keystore.p12").exists()


def test_ca_client_status_revoke_and_crl_for_scripts(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, issued = _workload_dir(ca, tmp_path, "web/cli-scripts")
    base = ["--server", ca.address, "--out", str(out), "--json"]
    assert main(["status", *base, issued.serial]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "GOOD"
    assert main(["revoke", *base, issued.serial, "--reason", "KEY_COMPROMISE"]) == 0
    assert json.loads(capsys.readouterr().out)["serial_number"] == issued.serial
    # The identity is now revoked: the CA refuses it, and the command says so.
    assert main(["status", *base, issued.serial]) == 1
    assert "error: UNAUTHENTICATED (CALLER_REVOKED): the client certificate" in (
        capsys.readouterr().err
    )
    admin = ["--server", ca.address, "--out", str(ca.admin_dir), "--json"]
    assert main(["revoke", *admin, "0123456789abcdef0123456789abcdef"]) == 1
    assert "error: NOT_FOUND (CERTIFICATE_NOT_FOUND): no certificate with serial" in (
        capsys.readouterr().err
    )
    crl_file = tmp_path / "ca.crl"
    assert main(["crl", *admin, "--output", str(crl_file)]) == 0
    assert int(json.loads(capsys.readouterr().out)["crl_number"]) >= 1
    crl = x509.load_der_x509_crl(crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(issued.serial, 16)) is not None


def test_ca_client_explains_missing_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["renew", "--server", "127.0.0.1:1", "--out", str(tmp_path)]) == 2
    assert "enroll first" in capsys.readouterr().err


def test_backoff_survives_thousands_of_failures_and_never_busy_loops() -> None:
    rng = random.Random(11)
    b = Backoff(attempt=5000)
    assert b.delay(rng) <= b.cap
    assert b.retry_at(T0, None, rng) - T0 >= dt.timedelta(milliseconds=250)
    # Already past expiry: still a real delay, not "now".
    assert b.retry_at(T0, T0 - DAY, rng) > T0


class _LocalIssuer:
    """A CA made in code: the reader test needs hundreds of fresh sets, not CA round trips."""

    def __init__(self) -> None:
        self.key = make_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swap test root")])
        self.root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(T0)
            .not_valid_after(T0 + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        )

    def fresh(self) -> FileCredentials:
        key = make_key()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(T0)
            .not_valid_after(T0 + DAY)
            .sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return FileCredentials(key, leaf, (), (self.root,))


SWAPS = 200  # the broken swap (unlink, then symlink) is caught within ~20


def test_a_reader_never_finds_key_or_certificate_missing_or_mismatched_during_swaps(
    tmp_path: Path,
) -> None:
    issuer = _LocalIssuer()
    out = tmp_path / "tls"
    write_atomically(out, render(issuer.fresh()))
    done = threading.Event()
    problems: list[str] = []
    reads = threading.Semaphore(0)
    consistent = 0

    def reader() -> None:
        nonlocal consistent
        while not done.is_set():
            try:
                # ..data before and after, as a seqlock: two opens that straddle a swap may
                # pair the old certificate with the new key (true of any set of files, the
                # Kubernetes layout too); a pair read within one version must match.
                before = os.readlink(out / DATA_LINK)
                cert = (out / "cert.pem").read_bytes()
                key = (out / "key.pem").read_bytes()
                after = os.readlink(out / DATA_LINK)
            except OSError as exc:
                problems.append(f"missing: {exc}")
                return
            finally:
                reads.release()
            if before != after:
                continue
            leaf = x509.load_pem_x509_certificates(cert)[0]
            if serialization.load_pem_private_key(key, None).public_key() != leaf.public_key():
                problems.append(f"key.pem does not match cert.pem in {before}")
                return
            consistent += 1

    thread = threading.Thread(target=reader)
    thread.start()
    swaps = 0
    try:
        while swaps < SWAPS and not problems:
            write_atomically(out, render(issuer.fresh()))
            swaps += 1
            assert reads.acquire(timeout=30), "the reader is stuck"  # reads between swaps
    finally:
        done.set()
        thread.join(timeout=30)
    assert problems == [], f"after {swaps} swaps"
    assert consistent > 0
    versions = [p for p in out.iterdir() if p.name.startswith("..") and p.name != DATA_LINK]
    assert len(versions) == 1  # each swap removed the set before it


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_output_directory_and_its_versions_are_0700_whatever_the_umask(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ca.admin_channel() as ch:
        minted = ca.stub(ch).CreateBootstrapToken(
            ca_pb2.CreateBootstrapTokenRequest(identity="spiffe://signet.local/web/umask"),
            timeout=30,
        )
    parent = tmp_path / "made" / "for"
    out = parent / "tls"
    with _umask(0):
        enrolled = main(
            ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
             "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(out)]
        )  # fmt: skip
        assert enrolled == 0, capsys.readouterr().err
        first = out / os.readlink(out / DATA_LINK)
        assert main(["renew", "--server", ca.address, "--out", str(out)]) == 0
    capsys.readouterr()
    second = out / os.readlink(out / DATA_LINK)
    assert second != first
    # Any directory ca-client made: a parent writable by others would let them swap out
    # the whole directory, one readable by others would show who holds which certificate.
    for directory in (tmp_path / "made", parent, out, second):
        assert _mode(directory) == 0o700, directory
    assert _mode(out / "key.pem") == 0o600 and _mode(out / "cert.pem") == 0o644


def test_cleanup_never_follows_a_planted_data_link(ca: CaServer, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    out = tmp_path / "tls"
    out.mkdir()
    os.symlink(str(victim), out / "..data")
    write_atomically(out, render(_creds(ca), ["pem"]))
    assert (victim / "precious").read_text() == "keep me"


# -- cert.pem carries the chain (issue 10, item 1) ----------------------------------------------


def _handshake(ca: CaServer, tmp: Path, cert: Path, key: Path, trust: Path) -> str | None:
    """A real mutual-TLS handshake on 127.0.0.1: a server trusting only `trust` (the root)
    against a client presenting `cert` + `key`; the server's error, or None if it accepted."""
    server_creds = ca.issue("web/tls-peer", ips=("127.0.0.1",))
    server_cert, server_key = server_creds.write(tmp / "peer")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(trust)
    server_ctx.load_cert_chain(server_cert, server_key)
    client_ctx = ssl.create_default_context(cafile=str(trust))
    client_ctx.load_cert_chain(cert, key)
    errors: list[str] = []  # the server's verdict; the client's only says it was refused
    client_errors: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            try:
                tls.recv(2)
            except (ssl.SSLError, OSError) as exc:  # TLS 1.3: the verdict after the handshake
                client_errors.append(f"client: {exc}")
        thread.join(timeout=30)
    return (errors or client_errors or [None])[0]


def test_cert_pem_is_the_leaf_then_its_intermediates_so_a_root_only_peer_accepts_it(
    ca: CaServer, tmp_path: Path
) -> None:
    creds = _creds(ca, "web/full-chain")
    out = tmp_path / "tls"
    write_atomically(out, render(creds, ["pem"]))
    in_cert = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())
    assert in_cert == [creds.certificate, *creds.chain]
    assert x509.load_pem_x509_certificates((out / "leaf.pem").read_bytes()) == [creds.certificate]
    assert x509.load_pem_x509_certificates((out / "ca.pem").read_bytes()) == list(creds.roots)
    trust = out / "ca.pem"
    assert _handshake(ca, tmp_path, out / "cert.pem", out / "key.pem", trust) is None
    # What cert.pem used to be: a peer trusting only the root cannot build the chain.
    refused = _handshake(ca, tmp_path, out / "leaf.pem", out / "key.pem", trust)
    assert refused is not None and "unable to get local issuer certificate" in refused


def test_an_old_directory_whose_cert_pem_is_the_leaf_alone_still_renews(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = ca.issue("web/old-layout")
    out = tmp_path / "old"
    out.mkdir()
    (out / "cert.pem").write_bytes(issued.cert_pem)  # plain files, the leaf alone
    (out / "chain.pem").write_bytes(issued.chain_pem)
    (out / "key.pem").write_bytes(issued.key_pem)
    (out / "ca.pem").write_bytes(ca.root_pem)
    old = read_credentials(out)
    assert old is not None and len(old.chain) == 1
    assert main(["renew", "--server", ca.address, "--out", str(out)]) == 0
    assert len(x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())) == 2
    capsys.readouterr()


# -- the directory remembers its outputs (item 4) ---------------------------------------------

ALL_FORMATS = "pem,bundle,combined,pkcs12,kubernetes"


def _links(out: Path) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()}


def _dangling(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.is_symlink() and not p.exists()]


def test_renew_with_the_default_format_writes_the_set_the_directory_holds(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = _workload_dir(ca, tmp_path, "web/remembered")
    password = tmp_path / "p12-password"
    password.write_text("remembered-s3cret\n")
    base = ["renew", "--server", ca.address, "--out", str(out), "--json"]
    assert main([*base, "--format", ALL_FORMATS, "--p12-password-file", str(password)]) == 0
    first = json.loads(capsys.readouterr().out)
    files = set(_links(out))
    assert {"bundle.pem", "combined.pem", "keystore.p12", "tls.crt", "tls.key", "ca.crt"} <= files
    record = (out / "..data" / OUTPUTS_RECORD).read_text()
    assert "remembered-s3cret" not in record and str(password) in record

    assert main(base) == 0  # no --format, no password: the same set, the same password file
    second = json.loads(capsys.readouterr().out)
    assert second["serial_number"] != first["serial_number"]
    assert set(_links(out)) == files and _dangling(out) == []
    for name in ("tls.crt", "bundle.pem", "combined.pem"):
        leaf = x509.load_pem_x509_certificates((out / name).read_bytes())[0]
        assert serial_hex(leaf.serial_number) == second["serial_number"], name
    bundle = openssl(
        "pkcs12", "-in", out / "keystore.p12", "-passin", "pass:remembered-s3cret", "-nokeys",
        "-clcerts",
    ).stdout  # fmt: skip
    assert (
        serial_hex(x509.load_pem_x509_certificate(bundle.encode()).serial_number)
        == (second["serial_number"])
    )

    assert main([*base, "--format", "pem"]) == 0  # asked for less: the rest goes, no dangling
    capsys.readouterr()
    assert _dangling(out) == [] and not (out / "tls.crt").exists()
    assert main(base) == 0  # and pem alone is now what the directory holds
    capsys.readouterr()
    assert not (out / "bundle.pem").exists() and _dangling(out) == []


def test_a_directory_written_before_the_record_keeps_its_formats(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pre-record"
    write_atomically(out, render(_creds(ca, "web/pre-record"), ["pem", "bundle", "kubernetes"]))
    assert not (out / "..data" / OUTPUTS_RECORD).exists()
    assert main(["renew", "--server", ca.address, "--out", str(out)]) == 0
    capsys.readouterr()
    assert {"bundle.pem", "tls.crt", "tls.key", "ca.crt"} <= set(_links(out))
    assert _dangling(out) == []


def test_a_remembered_keystore_without_its_password_fails_before_the_ca_is_asked(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = _workload_dir(ca, tmp_path, "web/env-password")
    os.environ["SIGNET_P12_PASSWORD"] = "from-env"
    try:
        assert main(["renew", "--server", ca.address, "--out", str(out), "--format", "pkcs12"]) == 0
    finally:
        del os.environ["SIGNET_P12_PASSWORD"]
    capsys.readouterr()
    before = (out / "cert.pem").read_bytes()
    assert "from-env" not in (out / "..data" / OUTPUTS_RECORD).read_text()
    assert main(["renew", "--server", ca.address, "--out", str(out)]) == 2
    assert "holds keystore.p12" in capsys.readouterr().err
    assert (out / "cert.pem").read_bytes() == before


# -- serials, one form (item 5) -----------------------------------------------------------------


def test_serials_are_the_full_bytes_in_lowercase_hex() -> None:
    assert serial_hex(0x6A7F) == "6a7f"
    assert serial_hex(0x6A7) == "06a7"
    assert serial_hex(0x01) == "01"
    assert canonical_serial("0x6A:7f") == "6a7f" and canonical_serial("6a7") == "06a7"
    with pytest.raises(ValueError, match=r"^serial 'xyz' is not hexadecimal$"):
        canonical_serial("xyz")


def test_output_names_a_serial_with_a_leading_zero_nibble_in_full(ca: CaServer) -> None:
    key = make_key()
    name = x509.Name([])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x06A7F00D)
        .not_valid_before(T0)
        .not_valid_after(T0 + DAY)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    assert describe(FileCredentials(key, cert, (), ()))["serial"] == "06a7f00d"


def test_status_prints_the_serial_in_the_cas_form(
    ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, issued = _workload_dir(ca, tmp_path, "web/typed-serial")
    typed = ":".join(issued.serial[i : i + 2] for i in range(0, len(issued.serial), 2)).upper()
    assert main(["status", "--server", ca.address, "--out", str(out), typed]) == 0
    assert capsys.readouterr().out == f"{issued.serial}: GOOD\n"


# -- the wrong listener (item 9) ----------------------------------------------------------------


def _ca_client(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user runs it: its own process, its own gRPC core."""
    cli = Path(sys.executable).parent / "ca-client"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNET_", "GRPC_"))}
    return subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=120, env=env)


def test_commands_at_the_wrong_listener_say_which_one_they_reached_and_nothing_else(
    ca: CaServer, tmp_path: Path
) -> None:
    fingerprint = ca.authority.root_fingerprint()
    api, bootstrap = ca.address, ca.running.bootstrap_address
    http = ca.running.http_address
    enroll = ["enroll", "--token", "sgt_unused", "--root-fingerprint", fingerprint,
              "--out", str(tmp_path / "never")]  # fmt: skip
    renew = ["renew", "--out", str(ca.admin_dir)]
    cases = [
        ([*enroll, "--server", api], "that is the mTLS API listener", "bootstrap listener"),
        ([*enroll, "--server", http], "that is the HTTP listener", "bootstrap listener"),
        ([*renew, "--server", bootstrap], "that is the bootstrap listener", "mTLS API"),
        ([*renew, "--server", http], "that is the HTTP listener", "mTLS API"),
    ]
    for args, reached, wanted in cases:
        result = _ca_client(*args)
        assert result.returncode != 0, args
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr  # one sentence, no gRPC core lines around it
        assert reached in lines[0] and wanted in lines[0].split("needs")[-1], lines[0]
    assert not (tmp_path / "never").exists()


# -- --help (item 12) ---------------------------------------------------------------------------


def test_every_option_of_every_command_has_a_description() -> None:
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not action.help
    ]
    assert missing == []


# -- agent timing, accepted as the help writes it (item 7) ----------------------------------------


def test_renew_at_takes_fractions_as_written_and_every_one_schedules() -> None:
    assert parse_fraction("2/3") == pytest.approx(2 / 3)
    assert parse_fraction("0.667") == pytest.approx(0.667)
    assert parse_fraction("75%") == 0.75
    for bad in ("0", "1", "3/2", "-0.1"):
        with pytest.raises(ValueError, match=rf"^'{re.escape(bad)}' must be between 0 and 1"):
            parse_fraction(bad)
    for bad in ("two thirds", "1/0"):
        with pytest.raises(ValueError, match=rf"^'{bad}' is not a fraction: write e\.g\. 2/3"):
            parse_fraction(bad)
    for fraction in (0.01, 0.05, 0.1, 2 / 3, 0.99):
        at = renewal_time(T0, T0 + DAY, random.Random(2), fraction, jitter_for(fraction))
        assert T0 < at <= T0 + DAY * fraction
