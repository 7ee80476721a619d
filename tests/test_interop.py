"""Every output format `ca-client` writes, used by the program its users plug it into, for mTLS
against a real nginx that trusts only the root (`ca.pem`), as a relying party outside Signet
does: curl with each file layout, Java's keytool (the PKCS#12, and a JKS made from it with the
key and the whole chain, what e.g. Salesforce's "Import from Keystore" takes), Python's ssl."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer
from tests.test_nginx import _conf, _free_port, _need_nginx, _start
from tests.tools import need_tool

P12_PASSWORD = "changeit"
FORMATS = "pem,bundle,combined,pkcs12,kubernetes"


@dataclass(frozen=True)
class Nginx:
    port: int
    root: Path  # the only CA it trusts for clients, and ours for its certificate

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def nginx_root_only(ca: CaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx requiring a client certificate that chains, through what the client presents,
    to the root alone (no intermediate configured on its side)."""
    _need_nginx()
    tmp = tmp_path_factory.mktemp("nginx-root-only")
    cert, key = ca.issue("nginx", dns=("localhost",), ips=("127.0.0.1",)).write(tmp / "server")
    root = tmp / "root.pem"
    root.write_bytes(ca.root_pem)
    port = _free_port()
    verify = f"""ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_client_certificate {root};"""
    proc = _start(_conf(tmp, port, cert, key, verify, master=False), port, tmp)
    try:
        yield Nginx(port, root)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def enrolled(ca: CaServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory written by a real `ca-client enroll` in every format."""
    with ca.admin_channel() as ch:
        minted = ca.stub(ch).CreateBootstrapToken(
            ca_pb2.CreateBootstrapTokenRequest(identity="spiffe://signet.local/web/interop"),
            timeout=30,
        )
    tmp = tmp_path_factory.mktemp("interop")
    token = tmp / "token.txt"
    token.write_text(minted.token)
    out = tmp / "tls"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ca-client"), "enroll",
         "--server", ca.running.bootstrap_address, "--token-file", str(token),
         "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(out),
         "--format", FORMATS],
        env={**os.environ, "SIGNET_P12_PASSWORD": P12_PASSWORD},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _curl(nginx: Nginx, *client: str | Path) -> subprocess.CompletedProcess[str]:
    curl = need_tool("curl", "curl")
    return subprocess.run(
        [curl, "-fsS", "--cacert", str(nginx.root), *map(str, client), nginx.url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"curl exit {result.returncode}: {result.stderr}"
    assert result.stdout == "ok\n"


def test_curl_with_cert_pem_and_key_pem(nginx_root_only: Nginx, enrolled: Path) -> None:
    _assert_ok(
        _curl(nginx_root_only, "--cert", enrolled / "cert.pem", "--key", enrolled / "key.pem")
    )


def test_curl_with_bundle_pem_and_key_pem(nginx_root_only: Nginx, enrolled: Path) -> None:
    bundle = enrolled / "bundle.pem"
    _assert_ok(_curl(nginx_root_only, "--cert", bundle, "--key", enrolled / "key.pem"))


def test_curl_with_combined_pem_alone(nginx_root_only: Nginx, enrolled: Path) -> None:
    _assert_ok(_curl(nginx_root_only, "--cert", enrolled / "combined.pem"))


def test_curl_with_the_pkcs12_keystore(nginx_root_only: Nginx, enrolled: Path) -> None:
    p12 = f"{enrolled / 'keystore.p12'}:{P12_PASSWORD}"
    _assert_ok(_curl(nginx_root_only, "--cert-type", "P12", "--cert", p12))


def test_curl_with_the_kubernetes_files(nginx_root_only: Nginx, enrolled: Path) -> None:
    kube = ("--cert", enrolled / "tls.crt", "--key", enrolled / "tls.key")
    _assert_ok(_curl(nginx_root_only, *kube, "--cacert", enrolled / "ca.crt"))


def test_nginx_refuses_a_client_without_a_certificate(nginx_root_only: Nginx) -> None:
    """The other tests prove something only if nginx really requires client certificates."""
    result = _curl(nginx_root_only)
    assert result.returncode == 22 and "400" in result.stderr, result.stderr


@pytest.mark.parametrize(("cert", "key"), [("bundle.pem", "key.pem"), ("tls.crt", "tls.key")])
def test_python_ssl_client(nginx_root_only: Nginx, enrolled: Path, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(cafile=str(enrolled / "ca.pem"))
    ctx.load_cert_chain(enrolled / cert, enrolled / key)
    with (
        socket.create_connection(("127.0.0.1", nginx_root_only.port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply


def _keytool(*args: str | Path) -> str:
    keytool = need_tool("keytool", "default-jre-headless")
    result = subprocess.run([keytool, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_keytool_reads_the_pkcs12_and_converts_it_to_jks_with_key_and_whole_chain(
    ca: CaServer, enrolled: Path, tmp_path: Path
) -> None:
    p12 = enrolled / "keystore.p12"
    listed = _keytool("-list", "-storetype", "PKCS12", "-keystore", p12, "-storepass", P12_PASSWORD)
    assert "PrivateKeyEntry" in listed
    jks = tmp_path / "keystore.jks"
    _keytool(
        "-importkeystore", "-noprompt",
        "-srckeystore", p12, "-srcstoretype", "PKCS12", "-srcstorepass", P12_PASSWORD,
        "-destkeystore", jks, "-deststoretype", "JKS", "-deststorepass", P12_PASSWORD,
        "-destkeypass", P12_PASSWORD,
    )  # fmt: skip
    rfc = _keytool(
        "-list", "-rfc", "-storetype", "JKS", "-keystore", jks, "-storepass", P12_PASSWORD
    )
    assert "Entry type: PrivateKeyEntry" in rfc
    length = int(re.search(r"Certificate chain length: (\d+)", rfc).group(1))  # type: ignore[union-attr]
    chain = x509.load_pem_x509_certificates(rfc.encode())
    assert length == len(chain) >= 2
    leaf = x509.load_pem_x509_certificate((enrolled / "bundle.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate((ca.data_dir / "intermediate.pem").read_bytes())
    assert chain[0] == leaf and chain[1] == intermediate  # the key's chain, leaf first


def test_a_missing_tool_fails_the_test_in_ci_and_skips_it_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    outcomes: dict[str, type[BaseException]] = {}
    for ci in ("true", "false"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(BaseException) as info:  # Failed or Skipped: which is the point
            need_tool("keytool", "default-jre-headless")
        outcomes[ci] = info.type
        assert "apt-get install default-jre-headless" in str(info.value)
    assert outcomes == {"true": pytest.fail.Exception, "false": pytest.skip.Exception}
