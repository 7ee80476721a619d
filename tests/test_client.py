"""ca_client: renewal timing and backoff (pure, fake time, seeded randomness), credential
files replaced atomically in every format, and `ca-client` against a real CA."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_client.cli import main
from ca_client.files import Credentials as FileCredentials
from ca_client.files import read_credentials, render, write_atomically
from ca_client.schedule import Backoff, renewal_time
from tests.conftest import CaServer, Credentials
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


@pytest.mark.parametrize(("fraction", "jitter"), [(0, 0), (1, 0), (0.5, 0.5), (0.5, -0.1)])
def test_renewal_time_rejects_nonsense(fraction: float, jitter: float) -> None:
    with pytest.raises(ValueError):
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
    assert f"{creds.certificate.serial_number:x}" == reply["serial_number"]
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
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    admin = ["--server", ca.address, "--out", str(ca.admin_dir), "--json"]
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


def test_cleanup_never_follows_a_planted_data_link(ca: CaServer, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    out = tmp_path / "tls"
    out.mkdir()
    os.symlink(str(victim), out / "..data")
    write_atomically(out, render(_creds(ca), ["pem"]))
    assert (victim / "precious").read_text() == "keep me"
