"""Measure Signet on this machine, in one run, and report rates and their ratios.

    python scripts/bench.py [--seconds 3] [--threads 4]

Measures the core in this process, then starts a throwaway `ca-server serve` on 127.0.0.1:0
(its own process) and loads it over real mTLS from here. Every loop is bounded in both
count and time. Numbers are only comparable within one run (same machine, same load).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pki's CSR helpers

from ca_server.config import load_config
from ca_server.core.crl import build_crl
from ca_server.core.keys import generate_key
from ca_server.core.policy import Caller
from ca_server.core.profile import Issuer, build_root, ca_name, random_serial
from ca_server.core.revocation import Reason, RevokedEntry
from ca_server.datadir import init_ca, load_ca
from ca_server.logs import configure_logging
from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.pki import make_csr, spiffe

MAX_CALLS = 20_000


def rate(fn: Callable[[int], object], seconds: float, threads: int = 1) -> float:
    """Calls per second of fn(i), from `threads` threads, for about `seconds`."""
    deadline = time.perf_counter() + seconds
    counts = [0] * threads

    def worker(t: int) -> None:
        i = 0
        while time.perf_counter() < deadline and i < MAX_CALLS // threads:
            fn(t * MAX_CALLS + i)
            i += 1
        counts[t] = i

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return sum(counts) / (time.perf_counter() - start)


def serve(data: Path) -> subprocess.Popen[str]:
    """ca-server in its own process (so client and server do not share one GIL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ca_server.cli", "serve", "--data-dir", str(data)],
        env={
            **os.environ,
            "SIGNET_LISTEN": "127.0.0.1:0",
            "SIGNET_HTTP_LISTEN": "127.0.0.1:0",
            "SIGNET_BOOTSTRAP_LISTEN": "127.0.0.1:0",
            "SIGNET_LOG_LEVEL": "warning",
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when the server exits, so this cannot hang past a crash
        if line.startswith("Try it:"):
            return proc
    raise SystemExit("ca-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ca-data"
        init_ca(data, trust_domain="signet.local", key_type="ec-p256")
        ca = load_ca(load_config(data, env={}), None)
        csrs = [make_csr(uris=[spiffe(f"bench/{i}")])[1] for i in range(200)]
        admin = Caller(spiffe("admin"), "", is_admin=True)

        core_sign = rate(lambda i: ca.authority.sign(admin, csrs[i % 200], None), args.seconds)
        serial = ca.authority.sign(admin, csrs[0], None).serial
        core_status = rate(lambda i: ca.authority.status(serial), args.seconds)

        server = serve(data)
        try:
            address = json.loads((data / "serve.json").read_text())["listen"]
            creds = grpc.ssl_channel_credentials(
                (data / "root.pem").read_bytes(),
                (data / "admin" / "key.pem").read_bytes(),
                (data / "admin" / "cert.pem").read_bytes(),
            )
            with grpc.secure_channel(address, creds) as channel:
                stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
                sign_req = [ca_pb2.SignCertificateRequest(csr_pem=c) for c in csrs]
                status_req = ca_pb2.GetCertificateStatusRequest(serial_number=serial)
                rpc_sign = rate(
                    lambda i: stub.SignCertificate(sign_req[i % 200], timeout=30),
                    args.seconds,
                    args.threads,
                )
                rpc_status = rate(
                    lambda i: stub.GetCertificateStatus(status_req, timeout=30),
                    args.seconds,
                    args.threads,
                )
            http = json.loads((data / "serve.json").read_text())["http_listen"]
            leaf = x509.load_der_x509_certificate(ca.store.get_certificate(serial).der)  # type: ignore[union-attr]
            request = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(leaf, ca.authority.issuer.certificate, hashes.SHA1())  # noqa: S303
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
            encoded = urllib.parse.quote(base64.b64encode(request).decode(), safe="")
            ocsp_http = wrk(f"http://{http}/ocsp/{encoded}", args.seconds)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        ca.store.close()

    crl_rows = crl_builds()

    print(f"core sign (1 thread)                   {core_sign:10.0f} /s")
    print(f"core status + OCSP sign (1 thread)     {core_status:10.0f} /s")
    print(f"gRPC SignCertificate ({args.threads} client threads)  {rpc_sign:10.0f} /s")
    print(f"gRPC GetCertificateStatus ({args.threads} threads)    {rpc_status:10.0f} /s")
    print(f"ratio gRPC sign / core sign             {rpc_sign / core_sign:10.2f}")
    print(f"ratio gRPC status / core status         {rpc_status / core_status:10.2f}")
    if ocsp_http is None:
        print("OCSP over HTTP                          (install wrk to measure)")
    else:
        print(f"OCSP over HTTP, pre-signed (wrk GET)   {ocsp_http:10.0f} /s")
        print(f"ratio OCSP HTTP / gRPC status           {ocsp_http / rpc_status:10.2f}")
    for n, seconds, size in crl_rows:
        print(f"CRL with {n:>6} entries: built in {seconds:6.3f} s, {size / 1e6:6.2f} MB")


def crl_builds() -> list[tuple[int, float, int]]:
    """Time to build (and sign) CRLs of 1k, 10k and 100k revoked entries."""
    key = generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    root = build_root(key, ca_name("bench", "bench"), now, now + dt.timedelta(days=1))
    issuer = Issuer(root, key, ())
    rows = []
    for n in (1_000, 10_000, 100_000):
        entries = [RevokedEntry(random_serial(), now, Reason(i % 6)) for i in range(n)]
        start = time.perf_counter()
        der = build_crl(issuer, entries, 1, now, now + dt.timedelta(hours=24))
        rows.append((n, time.perf_counter() - start, len(der)))
    return rows


def wrk(url: str, seconds: float) -> float | None:
    """Requests/s from wrk (another process, so it does not share our GIL), or None."""
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{max(1, int(seconds))}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


if __name__ == "__main__":
    main()
