"""HTTP rows: wrk against Signet's relying-party listener (and against cfssl), and the OCSP
requests they send. wrk is a separate C process, so it does not share a GIL with anything."""

from __future__ import annotations

import base64
import re
import resource
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bench_proc import machine_busy_seconds, tree_cpu_seconds
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

WRK_THREADS = 2
WRK_CONNECTIONS = 64
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int  # wrk's "Non-2xx or 3xx responses"
    socket_errors: int
    server_cpu_us: float  # per request, summed over the server's process tree
    client_cpu_us: float  # per request, wrk itself
    other_cores: float  # cores busy with neither the server nor wrk meanwhile
    command: str

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def ocsp_request_der(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A SHA-1 CertID and no nonce: what RFC 5019 clients send, and what pre-signed responses
    can answer without a signature on the request path."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303
    return builder.build().public_bytes(serialization.Encoding.DER)


def ocsp_get_path(request_der: bytes) -> str:
    return urllib.parse.quote(base64.b64encode(request_der).decode(), safe="")


def post_script(path: Path, body: bytes, content_type: str) -> Path:
    """A wrk Lua script that POSTs `body` (any bytes: written as Lua decimal escapes)."""
    escaped = "".join(f"\\{b}" for b in body)
    path.write_text(
        f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )
    return path


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _parse(out: str) -> dict[str, float]:
    def number(pattern: str, default: float | None = None) -> float:
        match = re.search(pattern, out)
        if match:
            return float(match.group(1))
        if default is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return default

    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.MULTILINE))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "requests": number(r"(\d+) requests in"),
        "non_2xx": number(r"Non-2xx or 3xx responses:\s+(\d+)", 0),
        "socket_errors": sum(int(g) for g in socket.groups()) if socket else 0,
        "p50": _ms(percentiles["50"]),
        "p99": _ms(percentiles["99"]),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, seconds: float, server_pid: int, script: Path | None = None) -> WrkResult:
    """wrk -t2 -c64 for `seconds` (whole seconds, at least 1), with latency percentiles; the
    server's CPU is read from /proc around it, wrk's own from getrusage(RUSAGE_CHILDREN)."""
    duration = max(1, round(seconds))
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    server0, client0, busy0 = tree_cpu_seconds(server_pid), _children_cpu(), machine_busy_seconds()
    began = time.monotonic()
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    wall = time.monotonic() - began
    server1, client1, busy1 = tree_cpu_seconds(server_pid), _children_cpu(), machine_busy_seconds()
    other = (busy1 - busy0) - (server1 - server0) - (client1 - client0)
    parsed = _parse(out)
    requests = max(1.0, parsed["requests"])
    return WrkResult(
        rps=parsed["rps"],
        p50_ms=parsed["p50"],
        p99_ms=parsed["p99"],
        requests=int(parsed["requests"]),
        non_2xx=int(parsed["non_2xx"]),
        socket_errors=int(parsed["socket_errors"]),
        server_cpu_us=(server1 - server0) / requests * 1e6,
        client_cpu_us=(client1 - client0) / requests * 1e6,
        other_cores=other / wall,
        command=" ".join([*cmd[:-1], "URL"]),
    )
