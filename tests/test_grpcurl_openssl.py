"""The CA as a new user meets it, checked only by independent tools: the grpcurl binary (over
real mTLS, using server reflection, no proto files) and the openssl command (keys, CSRs, chain
verification, OCSP and CRL). Nothing here trusts the server's own Python code to judge it."""

from __future__ import annotations

import base64
import datetime as dt
import re
import shlex
import subprocess
import tomllib
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection

from ca_server.cli import grpcurl_command
from ca_server.core.durations import parse_duration
from ca_server.core.errors import PolicyViolation
from ca_server.core.policy import CA_SERVER_NAME
from tests.conftest import CaServer
from tests.pki import TRUST_DOMAIN
from tests.tools import grpcurl_binary, openssl

SERVICE = "signet.ca.v1.CertificateAuthority"

# openssl's options for `req -newkey`, per key type a workload might bring.
KEY_TYPES: dict[str, list[str]] = {
    "ec-p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ec-p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "rsa-2048": ["-newkey", "rsa:2048"],
    "rsa-3072": ["-newkey", "rsa:3072"],
    "rsa-4096": ["-newkey", "rsa:4096"],
    "ed25519": ["-newkey", "ed25519"],
}

# RFC 5280 reasons: (proto enum name, RFC code, how `openssl ocsp` names it, how `openssl crl`
# names it). openssl 3.0's OCSP reason table stops at removeFromCRL (8), so it prints
# privilegeWithdrawn (9) as "(UNKNOWN)"; its -resp_text still shows the code, which is checked.
REASONS = [
    ("KEY_COMPROMISE", 1, "keyCompromise", "Key Compromise"),
    ("AFFILIATION_CHANGED", 3, "affiliationChanged", "Affiliation Changed"),
    ("SUPERSEDED", 4, "superseded", "Superseded"),
    ("CESSATION_OF_OPERATION", 5, "cessationOfOperation", "Cessation Of Operation"),
    ("CERTIFICATE_HOLD", 6, "certificateHold", "Certificate Hold"),
    ("PRIVILEGE_WITHDRAWN", 9, None, "Privilege Withdrawn"),
]


# -- helpers ----------------------------------------------------------------------------------


def _spiffe(path: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{path}"


def _openssl_csr(workdir: Path, name: str, newkey: list[str], san: str) -> tuple[Path, Path]:
    """Key and CSR made by openssl, as a user would: returns (key path, csr path)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, csr = workdir / "key.pem", workdir / "csr.pem"
    openssl(
        "req", "-new", *newkey, "-nodes", "-keyout", key, "-out", csr,
        "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
    )  # fmt: skip
    return key, csr


def _web_csr(workdir: Path, x: str, newkey: list[str] | None = None) -> tuple[Path, Path]:
    san = f"URI:{_spiffe('web/' + x)},DNS:{x}.web.internal,DNS:other.example.com"
    return _openssl_csr(workdir, f"{x}.web.internal", newkey or KEY_TYPES["ec-p256"], san)


def _sign(ca: CaServer, csr: Path, workdir: Path, validity: str = "3600s") -> dict[str, Any]:
    """SignCertificate through grpcurl; writes leaf.pem and chain.pem beside the CSR."""
    reply = ca.grpcurl().call("SignCertificate", {"csr_pem": csr.read_text(), "validity": validity})
    (workdir / "leaf.pem").write_text(reply["certificate_pem"])
    (workdir / "chain.pem").write_text(reply["chain_pem"])
    return reply


def _issue(ca: CaServer, workdir: Path, x: str) -> tuple[Path, str]:
    """A fresh workload certificate (openssl CSR, grpcurl SignCertificate): (leaf path, serial)."""
    _, csr = _web_csr(workdir, x)
    reply = _sign(ca, csr, workdir)
    return workdir / "leaf.pem", reply["serial_number"]


def _refusal(ca: CaServer, method: str, data: dict[str, Any]) -> tuple[str, str]:
    """Call a method that must fail; return grpcurl's (Code, Message)."""
    result = ca.grpcurl().run(f"{SERVICE}/{method}", data=data)
    out = result.stdout + result.stderr
    assert result.returncode != 0, f"{method} succeeded but should have been refused:\n{out}"
    code = re.search(r"^\s*Code: (\w+)$", out, re.MULTILINE)
    message = re.search(r"^\s*Message: (.+)$", out, re.MULTILINE)
    assert code and message, f"grpcurl printed no gRPC status:\n{out}"
    return code.group(1), message.group(1)


def _grpcurl_raw(
    address: str, *flags: str | Path, command: tuple[str, ...] = ("list",)
) -> subprocess.CompletedProcess[str]:
    """grpcurl with arbitrary TLS flags; a short connect timeout so a refused handshake fails
    in seconds instead of grpc-go's retry loop running to its 10 s default."""
    cmd = [grpcurl_binary(), "-connect-timeout", "3", *map(str, flags), address, *command]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _san_entries(cert: Path) -> list[str]:
    text = openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName").stdout
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    return sorted(entry.strip() for line in lines for entry in line.split(","))


def _openssl_time(cert: Path, which: str) -> dt.datetime:
    """`openssl x509 -startdate` / `-enddate` as a datetime (X.509 times are whole seconds)."""
    text = openssl("x509", "-in", cert, "-noout", f"-{which}").stdout.strip().split("=", 1)[1]
    return dt.datetime.strptime(text, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)


def _time(rfc3339: str) -> dt.datetime:
    return dt.datetime.fromisoformat(rfc3339)


def _backdate(ca: CaServer) -> dt.timedelta:
    """How far the CA sets not_before in the past, as its config.toml says."""
    config = tomllib.loads((ca.data_dir / "config.toml").read_text())
    return parse_duration(config["issuance"]["backdate"])


def _bundle(ca: CaServer, workdir: Path) -> Path:
    bundle = workdir / "root-and-intermediate.pem"
    bundle.write_text(
        (ca.data_dir / "root.pem").read_text() + (ca.data_dir / "intermediate.pem").read_text()
    )
    return bundle


def _status(ca: CaServer, serial: str) -> dict[str, Any]:
    return ca.grpcurl().call("GetCertificateStatus", {"serial_number": serial})


def _ocsp_check(ca: CaServer, status: dict[str, Any], leaf: Path, workdir: Path) -> str:
    der = workdir / "ocsp.der"
    der.write_bytes(base64.b64decode(status["ocsp_response"]))
    d = ca.data_dir
    result = openssl(
        "ocsp", "-respin", der, "-issuer", d / "intermediate.pem", "-cert", leaf,
        "-CAfile", d / "root.pem", "-VAfile", d / "intermediate.pem", "-resp_text",
    )  # fmt: skip
    return result.stdout + result.stderr


def _crl(ca: CaServer, workdir: Path) -> tuple[Path, Path]:
    """GetCRL through grpcurl: (DER file, PEM file)."""
    reply = ca.grpcurl().call("GetCRL")
    der, pem = workdir / "crl.der", workdir / "crl.pem"
    der.write_bytes(base64.b64decode(reply["crl"]))
    openssl("crl", "-inform", "DER", "-in", der, "-out", pem)
    return der, pem


def _crl_entries(crl_text: str) -> dict[int, str]:
    """Serial (as an int) -> reason text, from `openssl crl -text`."""
    entries: dict[int, str] = {}
    blocks = re.split(r"^\s*Serial Number: ", crl_text, flags=re.MULTILINE)[1:]
    for block in blocks:
        serial_hex = block.split()[0]
        reason = re.search(r"CRL Reason Code:\s*\n\s*(.+)", block)
        entries[int(serial_hex, 16)] = reason.group(1).strip() if reason else ""
    return entries


# -- the printed command verifies the CA, not just "some certificate of this CA" ------------


def test_the_printed_grpcurl_command_refuses_a_leaf_of_this_ca_posing_as_it(ca: CaServer) -> None:
    # The default admin policy may sign localhost/127.0.0.1 for anyone: such a leaf, served
    # on 127.0.0.1, chains to the same root as the CA itself.
    leaf = ca.issue("web/impostor", dns=("localhost",), ips=("127.0.0.1",))
    impostor = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    reflection.enable_server_reflection([reflection.SERVICE_NAME], impostor)
    port = impostor.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(leaf.key_pem, leaf.fullchain)])
    )
    impostor.start()
    try:
        printed = shlex.split(grpcurl_command(ca.data_dir, f"127.0.0.1:{port}"))
        assert printed[printed.index("-authority") + 1] == CA_SERVER_NAME
        fooled = [a for a in printed if a not in ("-authority", CA_SERVER_NAME)]
        assert _run(fooled).returncode == 0  # without the reserved name, the impostor passes
        refused = _run(printed)
        assert refused.returncode != 0
        assert f"not {CA_SERVER_NAME}" in refused.stderr, refused.stderr
        real = _run(shlex.split(grpcurl_command(ca.data_dir, ca.address)))
        assert real.returncode == 0 and SERVICE in real.stdout.split(), real.stderr
    finally:
        impostor.stop(None)


def test_no_one_may_obtain_the_cas_reserved_name(ca: CaServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ca.issue("admin/ops", dns=(CA_SERVER_NAME,))  # not even an admin
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reserved for the CA itself" in (info.value.details() or "")
    with pytest.raises(PolicyViolation, match="reserved"):
        ca.authority.create_token(
            ca.authority.authenticate(ca.admin_credentials()[0]),
            _spiffe("web/x"),
            [CA_SERVER_NAME],
            [],
            None,
            None,
        )


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cmd[0], "-connect-timeout", "5", *cmd[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- discovery: what a new user sees with grpcurl and no proto files -----------------------


def test_grpcurl_list_shows_ca_health_and_both_reflection_services(ca: CaServer) -> None:
    result = ca.grpcurl().run("list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    } <= services


def test_grpcurl_describe_service_shows_every_rpc(ca: CaServer) -> None:
    result = ca.grpcurl().run("describe", SERVICE)
    assert result.returncode == 0, result.stderr
    rpcs = set(re.findall(r"^\s*rpc (\w+) \(", result.stdout, re.MULTILINE))
    assert rpcs == {
        "SignCertificate",
        "RenewCertificate",
        "RevokeCertificate",
        "GetCertificateStatus",
        "GetCRL",
        "GetTrustBundle",
        "ListCertificates",
        "CreateBootstrapToken",
        "ListAuditEvents",
        "WatchRevocations",
        "WatchTrustBundle",
        "GetRenewalInfo",
        "RenewNow",
        "Enroll",
    }


def test_grpcurl_describe_sign_request_shows_csr_pem_and_validity_fields(ca: CaServer) -> None:
    result = ca.grpcurl().run("describe", "signet.ca.v1.SignCertificateRequest")
    assert result.returncode == 0, result.stderr
    assert "is a message" in result.stdout
    assert re.search(r"\bstring csr_pem = 1;", result.stdout), result.stdout
    assert re.search(r"\.google\.protobuf\.Duration validity = 2;", result.stdout), result.stdout


def test_grpcurl_health_check_reports_serving(ca: CaServer) -> None:
    result = ca.grpcurl().run("grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert '"status": "SERVING"' in result.stdout


# -- issuance: openssl-made CSRs of every supported key type ----------------------------------


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_openssl_csr_is_signed_into_a_leaf_openssl_verifies_with_exactly_the_requested_sans(
    ca: CaServer, tmp_path: Path, key_type: str
) -> None:
    x = f"kt-{key_type}"
    key, csr = _web_csr(tmp_path, x, KEY_TYPES[key_type])
    reply = _sign(ca, csr, tmp_path, validity="3600s")
    leaf, chain = tmp_path / "leaf.pem", tmp_path / "chain.pem"

    verified = openssl(
        "verify", "-CAfile", ca.data_dir / "root.pem", "-untrusted", chain, leaf, check=False
    )
    assert verified.returncode == 0 and f"{leaf}: OK" in verified.stdout, (
        verified.stdout + verified.stderr
    )

    assert _san_entries(leaf) == sorted(
        [f"URI:{_spiffe('web/' + x)}", f"DNS:{x}.web.internal", "DNS:other.example.com"]
    )

    # The certificate is for the key openssl made, not some other key.
    cert_pub = openssl("x509", "-in", leaf, "-noout", "-pubkey").stdout
    key_pub = openssl("pkey", "-in", key, "-pubout").stdout
    assert cert_pub == key_pub

    text = openssl("x509", "-in", leaf, "-noout", "-text").stdout
    assert "CA:FALSE" in text
    assert "Certificate Sign" not in text  # keyCertSign
    assert "CRL Sign" not in text

    # The serial grpcurl returned is the certificate's serial.
    serial = openssl("x509", "-in", leaf, "-noout", "-serial").stdout.strip().split("=", 1)[1]
    assert int(serial, 16) == int(reply["serial_number"], 16)

    # validity "3600s" is an hour from the moment of issue, exactly: openssl reads the times
    # the CA answered, and not_before is that moment less the backdate config.toml states.
    not_before, not_after = _openssl_time(leaf, "startdate"), _openssl_time(leaf, "enddate")
    assert (not_before, not_after) == (_time(reply["not_before"]), _time(reply["not_after"]))
    assert not_after - (not_before + _backdate(ca)) == dt.timedelta(seconds=3600)


# -- revocation, seen through OCSP and the CRL -------------------------------------------------


@pytest.mark.parametrize(("reason", "code", "ocsp_text", "crl_text"), REASONS)
def test_revoked_certificate_reads_revoked_with_its_reason_in_status_ocsp_and_crl(
    ca: CaServer,
    tmp_path: Path,
    reason: str,
    code: int,
    ocsp_text: str | None,
    crl_text: str,
) -> None:
    x = "rev-" + reason.lower().replace("_", "-")
    leaf, serial = _issue(ca, tmp_path, x)

    revoked = ca.grpcurl().call("RevokeCertificate", {"serial_number": serial, "reason": reason})
    assert revoked["serial_number"] == serial
    assert revoked["revoked_at"]

    status = _status(ca, serial)
    assert status["status"] == "REVOKED"
    assert status["reason"] == reason
    assert status["revoked_at"] == revoked["revoked_at"]

    ocsp = _ocsp_check(ca, status, leaf, tmp_path)
    assert "Response verify OK" in ocsp, ocsp
    assert f"{leaf}: revoked" in ocsp, ocsp
    assert re.search(rf"Revocation Reason: .*\(0x{code:x}\)$", ocsp, re.MULTILINE), ocsp
    if ocsp_text:
        assert re.search(rf"^\s*Reason: {ocsp_text}$", ocsp, re.MULTILINE), ocsp

    der, pem = _crl(ca, tmp_path)
    bundle = _bundle(ca, tmp_path)
    shown = openssl("crl", "-inform", "DER", "-in", der, "-CAfile", bundle, "-noout", "-text")
    assert "verify OK" in shown.stdout + shown.stderr, shown.stdout + shown.stderr
    entries = _crl_entries(shown.stdout)
    assert entries.get(int(serial, 16)) == crl_text, shown.stdout
    assert serial.upper().lstrip("0") in shown.stdout  # openssl prints serials in upper-case hex

    check = openssl("verify", "-crl_check", "-CAfile", bundle, "-CRLfile", pem, leaf, check=False)
    assert check.returncode != 0
    assert "certificate revoked" in check.stdout + check.stderr


def test_never_revoked_certificate_reads_good_in_status_ocsp_and_passes_crl_check(
    ca: CaServer, tmp_path: Path
) -> None:
    leaf, serial = _issue(ca, tmp_path, "never-revoked")

    status = _status(ca, serial)
    assert status["status"] == "GOOD"
    assert "revoked_at" not in status

    ocsp = _ocsp_check(ca, status, leaf, tmp_path)
    assert "Response verify OK" in ocsp, ocsp
    assert f"{leaf}: good" in ocsp, ocsp

    der, pem = _crl(ca, tmp_path)
    bundle = _bundle(ca, tmp_path)
    shown = openssl("crl", "-inform", "DER", "-in", der, "-CAfile", bundle, "-noout", "-text")
    assert int(serial, 16) not in _crl_entries(shown.stdout)
    check = openssl("verify", "-crl_check", "-CAfile", bundle, "-CRLfile", pem, leaf, check=False)
    assert check.returncode == 0 and f"{leaf}: OK" in check.stdout, check.stdout + check.stderr


# -- refusals: the right gRPC code and a message a person can act on ---------------------------


def test_garbage_csr_is_invalid_argument_naming_the_csr(ca: CaServer) -> None:
    code, message = _refusal(ca, "SignCertificate", {"csr_pem": "garbage", "validity": "3600s"})
    assert code == "InvalidArgument"
    assert "csr" in message.lower()


def test_rsa_1024_csr_is_invalid_argument_saying_the_key_is_too_weak(
    ca: CaServer, tmp_path: Path
) -> None:
    _, csr = _web_csr(tmp_path, "weak", ["-newkey", "rsa:1024"])
    code, message = _refusal(ca, "SignCertificate", {"csr_pem": csr.read_text()})
    assert code == "InvalidArgument"
    assert "1024" in message and "2048" in message, message


def test_validity_above_the_cap_is_invalid_argument_mentioning_the_cap(
    ca: CaServer, tmp_path: Path
) -> None:
    _, csr = _web_csr(tmp_path, "too-long")
    code, message = _refusal(
        ca, "SignCertificate", {"csr_pem": csr.read_text(), "validity": "100000000s"}
    )
    assert code == "InvalidArgument"
    assert "cap" in message and "30" in message, message  # the default cap is 30 days


def test_revoking_an_unknown_serial_is_not_found(ca: CaServer) -> None:
    serial = "0123456789abcdef0123456789abcdef"
    code, message = _refusal(
        ca, "RevokeCertificate", {"serial_number": serial, "reason": "KEY_COMPROMISE"}
    )
    assert code == "NotFound"
    assert serial in message


def test_revoking_twice_is_failed_precondition_already_revoked(
    ca: CaServer, tmp_path: Path
) -> None:
    _, serial = _issue(ca, tmp_path, "twice")
    ca.grpcurl().call("RevokeCertificate", {"serial_number": serial, "reason": "SUPERSEDED"})
    code, message = _refusal(
        ca, "RevokeCertificate", {"serial_number": serial, "reason": "SUPERSEDED"}
    )
    assert code == "FailedPrecondition"
    assert "already revoked" in message


def test_status_of_an_unknown_serial_is_unknown(ca: CaServer) -> None:
    status = _status(ca, "7e57000000000000000000000000beef")
    assert status["status"] == "UNKNOWN"
    assert "revoked_at" not in status


# -- mTLS: no valid client certificate, no connection -----------------------------------------


def test_grpcurl_with_admin_certificate_connects(ca: CaServer) -> None:
    """The control for the two refusals below: same flags, a good certificate, it works."""
    a = ca.admin_dir
    result = _grpcurl_raw(
        ca.address, "-cacert", a / "ca.pem", "-cert", a / "cert.pem", "-key", a / "key.pem"
    )
    assert result.returncode == 0, result.stderr
    assert SERVICE in result.stdout


def test_grpcurl_without_client_certificate_cannot_connect(ca: CaServer) -> None:
    result = _grpcurl_raw(ca.address, "-cacert", ca.admin_dir / "ca.pem")
    assert result.returncode != 0
    assert SERVICE not in result.stdout
    assert "Failed to dial target host" in result.stderr, result.stderr


def test_grpcurl_with_client_certificate_from_another_ca_cannot_connect(
    ca: CaServer, tmp_path: Path
) -> None:
    # Another CA, made with openssl, issuing a certificate that claims the admin identity.
    other_key, other_ca = tmp_path / "other-ca.key", tmp_path / "other-ca.pem"
    openssl(
        "req", "-x509", *KEY_TYPES["ec-p256"], "-nodes", "-keyout", other_key, "-out", other_ca,
        "-subj", "/CN=Other CA", "-days", "1",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    key, csr = _openssl_csr(tmp_path, "admin", KEY_TYPES["ec-p256"], f"URI:{_spiffe('admin')}")
    ext = tmp_path / "ext.cnf"
    ext.write_text(
        f"subjectAltName=URI:{_spiffe('admin')}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
    )
    leaf = tmp_path / "leaf.pem"
    openssl(
        "x509", "-req", "-in", csr, "-CA", other_ca, "-CAkey", other_key, "-CAcreateserial",
        "-out", leaf, "-days", "1", "-extfile", ext,
    )  # fmt: skip
    chain = tmp_path / "chain.pem"
    chain.write_text(leaf.read_text() + other_ca.read_text())

    result = _grpcurl_raw(
        ca.address, "-cacert", ca.admin_dir / "ca.pem", "-cert", chain, "-key", key
    )
    assert result.returncode != 0
    assert SERVICE not in result.stdout
    assert "Failed to dial target host" in result.stderr, result.stderr
