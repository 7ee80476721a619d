"""What the root signs ahead of time, so that its key can stay offline: its CRL and its OCSP
answer about the intermediate. Signed at init, re-signed when due where the key is, warned about
where it is not, answered for exactly the queries they fit, and served over HTTP as nginx and
OpenSSL fetch them."""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID
from structlog.testing import capture_logs

from ca_server.cli import main as ca_server_main
from ca_server.config import load_config
from ca_server.core.clock import FakeClock
from ca_server.core.hierarchy import Hierarchy, key_id
from ca_server.core.keys import generate_key
from ca_server.core.ocsp import OcspQuery, issuer_hashes, parse_ocsp_request
from ca_server.core.profile import (
    Issuer,
    PublicUrls,
    build_intermediate,
    build_root,
    ca_name,
    serial_hex,
)
from ca_server.core.revocation import Reason, RevokedEntry
from ca_server.core.root_documents import RootPublisher, sign_root_documents
from ca_server.datadir import DataDir, init_ca, initial_public_urls
from ca_server.store.sqlite import SqliteStore
from tests.conftest import CaServer
from tests.pki import TRUST_DOMAIN

START = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


class Chain:
    def __init__(self) -> None:
        self.root_key = generate_key("ec-p256")
        self.root = build_root(
            self.root_key, ca_name(TRUST_DOMAIN, "Root"), START, START + 10 * YEAR
        )
        self.intermediate = build_intermediate(
            Issuer(self.root, self.root_key, ()),
            generate_key("ec-p256").public_key(),
            ca_name(TRUST_DOMAIN, "Intermediate"),
            START,
            START + 5 * YEAR,
            PublicUrls("http://ca.example.internal:8080"),
        )

    def publisher(self, store: SqliteStore, clock: FakeClock, *, key: bool) -> RootPublisher:
        hierarchy = Hierarchy.of(
            self.root, self.intermediate, root_key=self.root_key if key else None
        )
        return RootPublisher(store=store, clock=clock, hierarchy=lambda: hierarchy, validity=YEAR)

    def query(self, algorithm: hashes.HashAlgorithm, serial: int | None = None) -> OcspQuery:
        name_hash, key_hash = issuer_hashes(self.root, algorithm)
        serial = self.intermediate.serial_number if serial is None else serial
        return OcspQuery(serial, algorithm, name_hash, key_hash, None)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ca.db")
    yield s
    s.close()


def _verify(root: x509.Certificate, signature: bytes, data: bytes) -> None:
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def test_the_intermediate_says_where_the_roots_answers_are(chain: Chain) -> None:
    aia = chain.intermediate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    where = {d.access_method: d.access_location.value for d in aia.value}
    root = key_id(chain.root)  # by key id: after a root rollover it still names its own root
    assert where == {
        AuthorityInformationAccessOID.OCSP: "http://ca.example.internal:8080/ocsp",
        AuthorityInformationAccessOID.CA_ISSUERS: f"http://ca.example.internal:8080/ca/{root}.crt",
    }
    cdp = chain.intermediate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert [n.value for n in cdp.value[0].full_name or []] == [
        f"http://ca.example.internal:8080/ca/{root}.crl"
    ]


def test_the_roots_crl_and_answer_are_signed_by_the_root_for_their_validity(chain: Chain) -> None:
    docs = sign_root_documents(
        Issuer(chain.root, chain.root_key, ()), chain.intermediate, START, YEAR
    )
    crl = x509.load_der_x509_crl(docs.crl.der)
    assert crl.is_signature_valid(chain.root.public_key())  # type: ignore[arg-type]
    assert crl.issuer == chain.root.subject and len(crl) == 0
    assert crl.next_update_utc == START + YEAR == docs.next_update
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == int(START.timestamp())  # grows with time, with no counter to keep
    response = ocsp.load_der_ocsp_response(docs.intermediate_ocsp.der)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == chain.intermediate.serial_number
    assert response.next_update_utc == START + YEAR
    _verify(chain.root, response.signature, response.tbs_response_bytes)


def test_a_revoked_intermediate_is_on_the_roots_crl_and_answered_revoked(chain: Chain) -> None:
    gone = RevokedEntry(chain.intermediate.serial_number, START, Reason.CA_COMPROMISE)
    docs = sign_root_documents(
        Issuer(chain.root, chain.root_key, ()), chain.intermediate, START, YEAR, [gone]
    )
    crl = x509.load_der_x509_crl(docs.crl.der)
    assert crl.get_revoked_certificate_by_serial_number(gone.serial) is not None
    response = ocsp.load_der_ocsp_response(docs.intermediate_ocsp.der)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.ca_compromise


def test_with_the_key_they_are_signed_when_missing_and_again_at_two_thirds(
    chain: Chain, store: SqliteStore
) -> None:
    clock = FakeClock(START)
    publisher = chain.publisher(store, clock, key=True)
    first = publisher.refresh()
    assert first is not None and first.crl.this_update == START
    clock.advance(YEAR * 2 / 3 - dt.timedelta(seconds=1))
    assert publisher.refresh() == first  # not yet due
    clock.advance(dt.timedelta(seconds=2))
    again = publisher.refresh()
    assert again is not None and again.crl.this_update == clock.now().replace(microsecond=0)
    # Kept in the store: another process (or replica) without the key takes them up.
    other = chain.publisher(store, clock, key=False)
    assert other.current() is None
    assert other.reload() == again


def test_without_the_key_nothing_is_signed(chain: Chain, store: SqliteStore) -> None:
    publisher = chain.publisher(store, FakeClock(START), key=False)
    assert publisher.refresh() is None
    with pytest.raises(RuntimeError, match="ca-server root sign"):
        publisher.sign()
    assert store.signed_documents() == []


def test_the_stored_answer_fits_only_a_sha1_query_about_the_intermediate(
    chain: Chain, store: SqliteStore
) -> None:
    publisher = chain.publisher(store, FakeClock(START), key=True)
    docs = publisher.refresh()
    assert docs is not None
    answer = publisher.ocsp_answer(chain.query(hashes.SHA1()))  # noqa: S303
    assert answer is not None and answer.der == docs.intermediate_ocsp.der
    # A SHA-256 CertID, another serial under the root: the root is offline, nothing to sign.
    assert publisher.ocsp_answer(chain.query(hashes.SHA256())) is None
    assert publisher.ocsp_answer(chain.query(hashes.SHA1(), serial=12345)) is None  # noqa: S303


def test_the_server_warns_when_they_are_due_and_the_root_key_is_offline(
    tmp_path: Path,
) -> None:
    from ca_server.core.authority import CertificateAuthority
    from ca_server.maintenance import Maintenance
    from tests.test_authority import POLICY, make_pki

    pki = make_pki()
    store = SqliteStore(tmp_path / "ca.db")
    try:
        clock = FakeClock(START)
        authority = CertificateAuthority(
            store=store, clock=clock, issuer=pki.issuer, root=pki.root, policy=POLICY
        )
        maintenance = Maintenance(authority)
        maintenance.leader = True
        with capture_logs() as logs:
            maintenance._root_documents()
        warnings = [e for e in logs if e["event"] == "root_documents_need_the_root_key"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        assert "ca-server root sign" in warnings[0]["detail"]
    finally:
        store.close()


# -- from init, over HTTP, with OpenSSL ---------------------------------------------------------


def test_init_signs_them_and_the_cli_re_signs_them_where_the_key_is(tmp_path: Path) -> None:
    data = tmp_path / "ca-data"
    init_ca(data, trust_domain=TRUST_DOMAIN, key_type="ec-p256")
    config = load_config(data, env={})
    store = SqliteStore(data / "ca.db")
    try:
        before = {d.name: d for d in store.signed_documents()}
    finally:
        store.close()
    root = x509.load_pem_x509_certificate((data / "root.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate((data / "intermediate.pem").read_bytes())
    crl_name = f"root-crl:{key_id(root)}"
    assert set(before) == {crl_name, f"ocsp:{serial_hex(intermediate.serial_number)}"}
    assert before[crl_name].next_update - before[crl_name].this_update == (
        config.issuance.root_crl_validity
    )
    assert ca_server_main(["root", "sign", "--data-dir", str(data)]) == 0
    store = SqliteStore(data / "ca.db")
    try:
        after = {d.name: d for d in store.signed_documents()}
    finally:
        store.close()
    assert after[crl_name].der != before[crl_name].der
    # With the root key offline the command says where to run it, without a traceback.
    DataDir(data).root_key.rename(tmp_path / "root.key")
    assert ca_server_main(["root", "sign", "--data-dir", str(data)]) == 1


def test_the_intermediate_carries_a_url_only_when_one_is_known(tmp_path: Path) -> None:
    data = tmp_path / "ca-data"
    init_ca(data, trust_domain=TRUST_DOMAIN, key_type="ec-p256", http_listen="127.0.0.1:0")
    intermediate = x509.load_pem_x509_certificate((data / "intermediate.pem").read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        intermediate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    config = load_config(data, {"http_listen": "10.1.2.3:8080"}, env={})
    assert initial_public_urls(config) == PublicUrls("http://10.1.2.3:8080")
    config = load_config(data, {"public_url": "https://ca.example.com"}, env={})
    assert initial_public_urls(config) == PublicUrls("https://ca.example.com")


def _fetch(ca: CaServer, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{ca.running.http_address}{path}", timeout=30) as r:
        return bytes(r.read())


def test_openssl_verifies_root_crl_and_gets_good_for_the_intermediate(
    ca: CaServer, tmp_path: Path
) -> None:
    root_pem = ca.data_dir / "root.pem"
    (tmp_path / "root.crl").write_bytes(_fetch(ca, "/root.crl"))
    out = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "root.crl"), "-noout",
         "-CAfile", str(root_pem)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "verify OK" in out.stdout + out.stderr, out
    assert _fetch(ca, "/root.crt") == x509.load_pem_x509_certificate(
        root_pem.read_bytes()
    ).public_bytes(serialization.Encoding.DER)
    out = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(root_pem),
         "-cert", str(ca.data_dir / "intermediate.pem"),
         "-url", f"http://{ca.running.http_address}/ocsp", "-CAfile", str(root_pem), "-no_nonce"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Response verify OK" in out.stderr and "intermediate.pem: good" in out.stdout, out


def test_a_sha256_query_about_the_intermediate_is_unauthorized(ca: CaServer) -> None:
    intermediate = x509.load_pem_x509_certificate((ca.data_dir / "intermediate.pem").read_bytes())
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(intermediate, ca.authority.root, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    assert parse_ocsp_request(request).serial == intermediate.serial_number
    reply = urllib.request.Request(
        f"http://{ca.running.http_address}/ocsp",
        data=request,
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(reply, timeout=30) as r:  # noqa: S310 - http:// built above
        response = ocsp.load_der_ocsp_response(r.read())
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_crl_pem_holds_the_intermediates_crl_then_the_roots(ca: CaServer) -> None:
    text = _fetch(ca, "/crl.pem")
    blocks = [b + b"-----END X509 CRL-----\n" for b in text.split(b"-----END X509 CRL-----\n")[:-1]]
    crls = [x509.load_pem_x509_crl(b) for b in blocks]
    assert [c.issuer for c in crls] == [
        ca.authority.issuer.certificate.subject,
        ca.authority.root.subject,
    ]
