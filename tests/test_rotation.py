"""Rotating the intermediate of a running CA: online (`ca-server intermediate rotate`, the root
key in the data directory) and through the offline ceremony (prepare, `root sign --csr` where
the root key is, activate). The running server takes the rotation up from the store without a
restart: new certificates (its own serving and OCSP responder certificates too) come from the
new intermediate, the old one keeps answering OCSP and its own CRL for what it issued, and the
trust bundle lists both. Checked with openssl as the relying party."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID

from ca_server.cli import main as ca_server_main
from ca_server.core.hierarchy import Hierarchy, key_id
from ca_server.datadir import DataDir
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca
from tests.tools import presented_serial

DEADLINE = 20.0  # seconds for a rotation to reach the server (it polls every 250 ms)


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[CaServer]:
    server = start_ca(tmp_path / "ca-data")
    yield server
    stop_ca(server)


def await_rotation(ca: CaServer, run: list[str]) -> Hierarchy:
    """Run a ca-server command and wait until the running server has taken up its change."""
    seen = threading.Event()
    ca.authority.on_hierarchy_change(lambda _: seen.set())
    assert ca_server_main(run) == 0
    assert seen.wait(DEADLINE), "the server did not take up the rotation"
    return ca.authority.hierarchy


def _fetch(ca: CaServer, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{ca.running.http_address}{path}", timeout=30) as r:
        return bytes(r.read())


def _issuer_of(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return aki.key_identifier.hex()


def _openssl_ocsp(ca: CaServer, issuer: Path, cert: Path, tmp: Path) -> str:
    out = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(issuer), "-cert", str(cert), "-CAfile",
         str(ca.data_dir / "root.pem"), "-url", f"http://{ca.running.http_address}/ocsp",
         "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Response verify OK" in out.stderr, out
    return out.stdout


def test_an_online_rotation_reaches_the_running_server_and_the_old_intermediate_still_answers(
    rotating: CaServer, tmp_path: Path
) -> None:
    ca = rotating
    old = ca.authority.hierarchy.issuing
    before = ca.issue("web/before")
    (tmp_path / "old-int.pem").write_bytes(old.certificate.public_bytes(_PEM))
    (tmp_path / "before.pem").write_bytes(before.cert_pem)

    hierarchy = await_rotation(ca, ["intermediate", "rotate", "--data-dir", str(ca.data_dir)])
    new = hierarchy.issuing
    assert new.key_id != old.key_id and new.record.state == "active"
    assert [e.record.state for e in hierarchy.intermediates] == ["active", "retiring"]
    # The data directory follows: intermediate.pem is the new one, its key beside the old.
    assert (ca.data_dir / "intermediate.pem").read_bytes() == new.certificate.public_bytes(_PEM)
    assert DataDir(ca.data_dir).ca_key_file("intermediate", new.key_id).stat().st_mode & 0o077 == 0

    after = ca.issue("web/after")
    assert _issuer_of(before.cert_pem) == old.key_id and _issuer_of(after.cert_pem) == new.key_id
    assert after.chain_pem == new.certificate.public_bytes(_PEM)
    (tmp_path / "after.pem").write_bytes(after.cert_pem)
    (tmp_path / "new-int.pem").write_bytes(after.chain_pem)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.data_dir / "root.pem"), "-untrusted",
         str(tmp_path / "new-int.pem"), str(tmp_path / "after.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out

    # Each certificate names its own issuer's CRL; each CRL is its issuer's.
    cdp = x509.load_pem_x509_certificate(after.cert_pem).extensions.get_extension_for_oid(
        ExtensionOID.CRL_DISTRIBUTION_POINTS
    )
    url = cdp.value[0].full_name[0].value  # type: ignore[index]
    assert url.endswith(f"/ca/{new.key_id}.crl")

    # Revoke the certificate of the retiring intermediate: its OCSP answer and its own CRL.
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=before.serial, reason=1), timeout=30
        )
    assert "before.pem: revoked" in _openssl_ocsp(
        ca, tmp_path / "old-int.pem", tmp_path / "before.pem", tmp_path
    )
    assert "after.pem: good" in _openssl_ocsp(
        ca, tmp_path / "new-int.pem", tmp_path / "after.pem", tmp_path
    )
    old_crl = x509.load_der_x509_crl(_fetch(ca, f"/ca/{old.key_id}.crl"))
    new_crl = x509.load_der_x509_crl(_fetch(ca, f"/ca/{new.key_id}.crl"))
    assert old_crl.issuer == old.certificate.subject and new_crl.issuer == new.certificate.subject
    assert old_crl.get_revoked_certificate_by_serial_number(int(before.serial, 16)) is not None
    assert len(new_crl) == 0
    assert x509.load_der_x509_crl(_fetch(ca, "/crl")).issuer == new.certificate.subject
    numbers = [
        c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        for c in (old_crl, new_crl)
    ]
    assert len(set(numbers)) == 2  # one counter: each issuer's numbers only grow
    # nginx's ssl_crl file holds every CRL of both chains, the root's too.
    pem = _fetch(ca, "/crl.pem")
    assert pem.count(b"BEGIN X509 CRL") == 3

    # The trust bundle lists both intermediates (the issuing one first) and the root.
    with ca.admin_channel() as ch:
        bundle = ca.stub(ch).GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=30)
    listed = x509.load_pem_x509_certificates(bundle.intermediate_certificates_pem.encode())
    assert [key_id(c) for c in listed] == [new.key_id, old.key_id]

    # The server's own certificate moves to the new intermediate at the next handshake, and
    # so does the delegated OCSP responder: the admin (under the old one) still gets in.
    serial = presented_serial(ca.address, ca.admin_dir)
    assert serial == int(ca.running.serving.current.serial, 16)
    assert ca.running.serving.current.certificate.issuer == new.certificate.subject
    with ca.admin_channel() as ch:
        status = ca.stub(ch).GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=after.serial), timeout=30
        )
    response = ocsp.load_der_ocsp_response(status.ocsp_response)
    assert response.certificates[0].issuer == new.certificate.subject
    assert response.issuer_key_hash.hex() == new.key_id


def test_the_offline_ceremony_prepares_signs_where_the_root_is_and_activates(
    rotating: CaServer, tmp_path: Path
) -> None:
    ca = rotating
    d = DataDir(ca.data_dir)
    # The root key goes offline, into a copy of the data directory kept elsewhere.
    offline = tmp_path / "offline"
    shutil.copytree(ca.data_dir, offline, ignore=shutil.ignore_patterns("serve.*", "*.lock"))
    d.root_key.unlink()
    store = ["--store", f"sqlite:///{ca.data_dir / 'ca.db'}"]

    # Online rotation now needs the root key, and says what to do instead.
    assert ca_server_main(["intermediate", "rotate", "--data-dir", str(ca.data_dir)]) == 1

    assert ca_server_main(["intermediate", "prepare", "--data-dir", str(ca.data_dir)]) == 0
    (csr,) = ca.data_dir.glob("intermediate-*.csr.pem")
    # Signing needs the root key: refused on the server, done where the key is.
    assert ca_server_main(["root", "sign", "--data-dir", str(ca.data_dir), "--csr", str(csr)]) == 1
    signed = tmp_path / "signed.pem"
    run = [
        "root",
        "sign",
        "--data-dir",
        str(offline),
        *store,
        "--csr",
        str(csr),
        "--out",
        str(signed),
    ]
    assert ca_server_main(run) == 0
    # A certificate that is not the root's, or not for a key prepared here, is refused.
    assert ca_server_main(
        ["intermediate", "activate", "--data-dir", str(ca.data_dir), "--cert",
         str(ca.admin_dir / "cert.pem")]
    ) == 1  # fmt: skip

    hierarchy = await_rotation(
        ca, ["intermediate", "activate", "--data-dir", str(ca.data_dir), "--cert", str(signed)]
    )
    new = x509.load_pem_x509_certificate(signed.read_bytes())
    assert hierarchy.issuing.key_id == key_id(new)
    assert _issuer_of(ca.issue("web/ceremony").cert_pem) == key_id(new)
    # The root's answer about the new intermediate was signed in the ceremony, ahead of time.
    (tmp_path / "new.pem").write_bytes(signed.read_bytes())
    assert "new.pem: good" in _openssl_ocsp(
        ca, ca.data_dir / "root.pem", tmp_path / "new.pem", tmp_path
    )


_PEM = serialization.Encoding.PEM


def test_the_lease_holder_rotates_the_intermediate_once_it_has_lived_rotate_at(
    tmp_path: Path,
) -> None:
    """[issuance] intermediate_rotate_at (default 2/3): not before, and at once after, with the
    root key in the data directory; the old intermediate retires (it still answers)."""
    import datetime as dt

    from ca_server.core.clock import FakeClock
    from ca_server.core.profile import serial_hex

    clock = FakeClock()
    ca = start_ca(tmp_path / "ca-data", clock=clock)
    try:
        old = ca.authority.issuer.certificate
        life = old.not_valid_after_utc - old.not_valid_before_utc
        clock.set(old.not_valid_before_utc + life * 2 / 3 - dt.timedelta(minutes=1))
        ca.running.maintenance.rollover()
        assert ca.authority.issuer.certificate == old  # not due yet
        clock.advance(dt.timedelta(minutes=2))
        ca.running.maintenance.rollover()
        new = ca.authority.issuer.certificate
        assert new != old
        new.verify_directly_issued_by(ca.authority.root)
        states = {e.certificate: e.record.state for e in ca.authority.hierarchy.intermediates}
        assert states == {new: "active", old: "retiring"}
        # Both are watched: their expiry by serial and state (alerts look at the active one).
        from tests.test_metrics import _scrape

        samples = _scrape(ca.running.metrics_address)
        intermediates = {
            (labels["serial"], labels["state"]): value
            for (name, items), value in samples.items()
            if name == "signet_ca_certificate_expiry_timestamp_seconds"
            and (labels := dict(items))["role"] == "intermediate"
        }
        assert intermediates == {
            (serial_hex(new.serial_number), "active"): new.not_valid_after_utc.timestamp(),
            (serial_hex(old.serial_number), "retiring"): old.not_valid_after_utc.timestamp(),
        }
    finally:
        stop_ca(ca)
