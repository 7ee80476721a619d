"""Everything Signet signs passes pkilint (RFC 5280 / RFC 6960 linters) with no ERROR or
WARNING, except findings shown here to be the linter's own false positives."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pkilint.bin import lint_crl, lint_ocsp_response, lint_pkix_cert

from ca_server.core.clock import FakeClock
from ca_server.core.profile import PublicUrls
from ca_server.core.revocation import Reason
from ca_server.serving import ServingCertificate
from ca_server.store.sqlite import SqliteStore
from tests.pki import make_csr, make_key, spiffe
from tests.test_authority import ADMIN, START, Pki, make_pki
from tests.test_responder import make

# (code, what the flagged value looks like) -> why it is the linter's mistake, not ours.
YEAR = dt.timedelta(days=365)

FALSE_POSITIVES: dict[str, tuple[Callable[[str], bool], str]] = {
    "pkix.invalid_uri_syntax": (
        lambda message: '"spiffe://' in message,
        "pkilint's URI check accepts only web-style schemes; spiffe://<td>/<path> is a valid "
        "RFC 3986 URI and the SPIFFE X.509-SVID standard puts it in the SAN",
    ),
    "pkix.invalid_domain_name_syntax": (
        lambda message: '"localhost"' in message,
        "'localhost' is a single-label name RFC 1123 allows; the serving certificate needs it "
        "because clients connect to localhost",
    ),
}


def _lint(main: Callable[[list[str]], int], args: list[str], path: Path) -> list[dict[str, str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["lint", *args, "-s", "WARNING", "-f", "JSON", str(path)])
    findings = []
    for result in json.loads(out.getvalue())["results"]:
        for finding in result["finding_descriptions"]:
            code, message = finding["code"], finding.get("message") or ""
            known = FALSE_POSITIVES.get(code)
            if known is None or not known[0](message):
                findings.append({"at": result["node_path"], **finding})
    return findings


def _write(tmp_path: Path, name: str, der: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(der)
    return path


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def authority(pki: Pki, tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SqliteStore(tmp_path / "ca.db")
    ca = make(pki, store, FakeClock(START))
    yield ca
    store.close()


def test_ca_certificates_lint_clean(pki: Pki, tmp_path: Path) -> None:
    for name, cert in (("root", pki.root), ("intermediate", pki.issuer.certificate)):
        assert _lint(lint_pkix_cert.main, [], _write(tmp_path, name, _der(cert))) == []


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_leaf_certificates_lint_clean(authority, tmp_path: Path, key_type: str) -> None:  # type: ignore[no-untyped-def]
    _, csr = make_csr(
        make_key(key_type),
        uris=[spiffe("web/lint")],
        dns=["lint.web.internal", "api.web.internal"],
        ips=["10.1.2.3", "fd00::1"],
        cn="lint.web.internal",
    )
    issued = authority.sign(ADMIN, csr, None)
    assert _lint(lint_pkix_cert.main, [], _write(tmp_path, "leaf", _der(issued.certificate))) == []


def test_leaf_with_empty_subject_and_public_urls_lints_clean(pki: Pki, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "urls.db")
    try:
        ca = make(pki, store, FakeClock(START))
        ca.settings = dataclasses.replace(
            ca.settings, public_urls=PublicUrls("http://ca.example.internal:8080")
        )
        issued = ca.sign(ADMIN, make_csr(uris=[spiffe("web/urls")])[1], None)
        cert = issued.certificate
        assert len(cert.subject) == 0
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        assert _lint(lint_pkix_cert.main, [], _write(tmp_path, "leaf", _der(cert))) == []
    finally:
        store.close()


def test_serving_certificate_lints_clean(authority, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    serving = ServingCertificate(authority, ("ca.example.internal",), dt.timedelta(hours=24))
    cert = serving.current.certificate
    assert _lint(lint_pkix_cert.main, [], _write(tmp_path, "serving", _der(cert))) == []


def test_delegated_ocsp_responder_certificate_lints_clean(authority, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    signer = authority.responder.signer().certificate
    assert _lint(lint_pkix_cert.main, [], _write(tmp_path, "responder", _der(signer))) == []


def test_crls_lint_clean(authority, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = authority.crl().der
    assert _lint(lint_crl.main, ["-t", "CRL", "-p", "PKIX"], _write(tmp_path, "e", empty)) == []
    for reason in (Reason.UNSPECIFIED, Reason.KEY_COMPROMISE, Reason.CERTIFICATE_HOLD):
        issued = authority.sign(ADMIN, make_csr(uris=[spiffe("web/crl")])[1], None)
        invalid_since = START - dt.timedelta(days=1) if reason is Reason.KEY_COMPROMISE else None
        authority.revoke(ADMIN, issued.serial, reason, invalid_since)
    full = authority.crl().der
    assert len(x509.load_der_x509_crl(full)) == 3
    assert _lint(lint_crl.main, ["-t", "CRL", "-p", "PKIX"], _write(tmp_path, "f", full)) == []


@pytest.mark.parametrize("delegated", [True, False])
def test_ocsp_responses_lint_clean(pki: Pki, tmp_path: Path, delegated: bool) -> None:
    store = SqliteStore(tmp_path / "o.db")
    try:
        ca = make(pki, store, FakeClock(START), ocsp_delegated=delegated)
        good = ca.sign(ADMIN, make_csr(uris=[spiffe("web/o1")])[1], None)
        bad = ca.sign(ADMIN, make_csr(uris=[spiffe("web/o2")])[1], None)
        ca.revoke(ADMIN, bad.serial, Reason.KEY_COMPROMISE)
        responses = [ca.status(good.serial).ocsp_response, ca.status(bad.serial).ocsp_response]
        responses.append(ca.status("0badc0de").ocsp_response)
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(good.certificate, pki.issuer.certificate, hashes.SHA256())
            .add_extension(x509.OCSPNonce(b"\x42" * 16), critical=False)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        responses.append(ca.ocsp_response(request))
        for i, der in enumerate(responses):
            assert _lint(lint_ocsp_response.main, [], _write(tmp_path, f"r{i}", der)) == []
    finally:
        store.close()


def test_the_false_positive_list_is_still_needed(authority, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """If pkilint stops flagging SPIFFE URIs, this fails: then drop the entry above."""
    issued = authority.sign(ADMIN, make_csr(uris=[spiffe("web/fp")])[1], None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        path = _write(tmp_path, "fp", _der(issued.certificate))
        lint_pkix_cert.main(["lint", "-s", "WARNING", "-f", "JSON", str(path)])
    codes = [
        f["code"] for r in json.loads(out.getvalue())["results"] for f in r["finding_descriptions"]
    ]
    assert codes == ["pkix.invalid_uri_syntax"]


def test_the_roots_documents_and_an_intermediate_with_urls_lint_clean(tmp_path: Path) -> None:
    from ca_server.core.keys import generate_key
    from ca_server.core.profile import Issuer, build_intermediate, build_root, ca_name
    from ca_server.core.root_documents import sign_root_documents

    root_key = generate_key("ec-p256")
    root = build_root(root_key, ca_name("signet.local", "Root"), START, START + YEAR * 10)
    intermediate = build_intermediate(
        Issuer(root, root_key, ()),
        generate_key("ec-p256").public_key(),
        ca_name("signet.local", "Intermediate"),
        START,
        START + YEAR * 5,
        PublicUrls("http://ca.example.internal:8080"),
    )
    assert _lint(lint_pkix_cert.main, [], _write(tmp_path, "i", _der(intermediate))) == []
    docs = sign_root_documents(Issuer(root, root_key, ()), intermediate, START, YEAR)
    crl = _write(tmp_path, "crl", docs.crl.der)
    assert _lint(lint_crl.main, ["-t", "CRL", "-p", "PKIX"], crl) == []
    response = _write(tmp_path, "ocsp", docs.intermediate_ocsp.der)
    assert _lint(lint_ocsp_response.main, [], response) == []
