"""``ca-server serve --workers 2``, as an operator runs it: the workers share the ports and each
serves, concurrent issuance through all of them loses and duplicates nothing, a worker that
dies is restarted, and SIGTERM stops them all. Which worker served a connection is read from
its per-RPC log line (every line carries the pid), matched by a serial only that connection
asked about."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.pki import make_csr, spiffe
from tests.test_cli import Server, _ca_server, serving

DEADLINE = 30.0


@dataclass
class Workers:
    server: Server
    data: Path

    @property
    def ready(self) -> dict[str, object]:
        return json.loads((self.data / "serve.json").read_text())  # type: ignore[no-any-return]

    def channel(self, cert: bytes | None = None, key: bytes | None = None) -> grpc.Channel:
        """A channel with a connection of its own (not shared with other channels)."""
        admin = self.data / "admin"
        creds = grpc.ssl_channel_credentials(
            (self.data / "root.pem").read_bytes(),
            key or (admin / "key.pem").read_bytes(),
            cert or (admin / "cert.pem").read_bytes(),
        )
        return grpc.secure_channel(
            str(self.ready["listen"]), creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )

    def rpc_lines(self) -> list[dict[str, object]]:
        lines = []
        for text in self.server.stderr.splitlines():
            if '"event":"rpc"' in text:
                lines.append(json.loads(text))
        return lines

    def worker_of(self, stub: ca_pb2_grpc.CertificateAuthorityStub, marker: int) -> int:
        """The pid of the worker that serves this stub's connection."""
        serial = f"{marker:x}"
        stub.GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=serial), timeout=10
        )
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for line in self.rpc_lines():
                if line.get("serial") == serial:
                    return int(line["pid"])  # type: ignore[call-overload]
            time.sleep(0.02)  # log lines are flushed every 100 ms
        raise AssertionError(f"no log line for serial {serial}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    data = tmp_path / "ca-data"
    init = subprocess.run(
        [*_ca_server(), "init", "--data-dir", str(data)], capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    # Only the cross-worker invalidation can then refuse a revoked caller within a second.
    config = data / "config.toml"
    config.write_text(re.sub(r'auth_cache_ttl = ".*"', 'auth_cache_ttl = "1h"', config.read_text()))
    with serving("--workers", "2", "--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        server.wait_for_line("Try it: ")
        yield Workers(server, data)


def stubs(w: Workers, n: int) -> list[tuple[grpc.Channel, ca_pb2_grpc.CertificateAuthorityStub]]:
    channels = [w.channel() for _ in range(n)]
    return [(ch, ca_pb2_grpc.CertificateAuthorityStub(ch)) for ch in channels]


def test_serve_json_names_every_worker_and_each_one_serves(workers: Workers) -> None:
    ready = workers.ready
    pids = ready["workers"]
    assert isinstance(pids, list) and len(pids) == 2
    assert ready["pid"] == workers.server.proc.pid  # the supervisor
    pairs = stubs(workers, 16)  # 16 connections: all on one worker has odds of 2^-15
    try:
        served = {workers.worker_of(stub, 0xC0DE00 + i) for i, (_, stub) in enumerate(pairs)}
    finally:
        for ch, _ in pairs:
            ch.close()
    assert served == set(pids)
    # One serving certificate for the data directory, made once, not once per worker.
    assert workers.server.stderr.count('"event":"serving_certificate_issued"') == 1
    with closing(sqlite3.connect(workers.data / "ca.db")) as db:  # and one OCSP responder
        kinds = [r[0] for r in db.execute("SELECT action FROM audit WHERE action LIKE 'issue-%'")]
    # the workers share one (init signs no OCSP response, so it made none)
    assert kinds.count("issue-server") == 1 and kinds.count("issue-ocsp-signer") == 1, kinds


def test_concurrent_issuance_through_every_worker_loses_and_duplicates_nothing(
    workers: Workers,
) -> None:
    pairs = stubs(workers, 8)
    csrs = [make_csr(uris=[spiffe(f"load/{i}")])[1] for i in range(160)]

    def sign(i: int) -> str:
        stub = pairs[i % len(pairs)][1]
        reply = stub.SignCertificate(ca_pb2.SignCertificateRequest(csr_pem=csrs[i]), timeout=30)
        return reply.serial_number

    try:
        with ThreadPoolExecutor(16) as pool:
            serials = list(pool.map(sign, range(len(csrs))))
        served = {workers.worker_of(stub, 0xBEEF00 + i) for i, (_, stub) in enumerate(pairs)}
    finally:
        for ch, _ in pairs:
            ch.close()
    assert len(set(serials)) == len(csrs)
    signers = {int(line["pid"]) for line in workers.rpc_lines()  # type: ignore[call-overload]
               if str(line["method"]).endswith("/SignCertificate")}  # fmt: skip
    assert signers == served and len(signers) == 2  # both workers issued
    with closing(sqlite3.connect(workers.data / "ca.db")) as db:
        stored = {row[0] for row in db.execute("SELECT serial FROM certificates")}
        audited = [row[0] for row in db.execute("SELECT serial FROM audit WHERE action='issue'")]
    assert set(serials) <= stored  # every certificate handed out is in the database
    assert sorted(s for s in audited if s in set(serials)) == sorted(serials)  # audited once


def test_a_worker_that_dies_is_restarted(workers: Workers) -> None:
    before = workers.ready["workers"]
    assert isinstance(before, list)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        now = workers.ready["workers"]
        assert isinstance(now, list)
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker {victim} was not replaced: {workers.ready}")
    assert '"event":"worker_died"' in workers.server.stderr
    with workers.channel() as ch:  # and the CA still answers
        stub = ca_pb2_grpc.CertificateAuthorityStub(ch)
        assert stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10).root_certificates_pem


def test_sigterm_stops_every_worker_and_removes_serve_json(workers: Workers) -> None:
    pids = workers.ready["workers"]
    assert isinstance(pids, list)
    assert workers.server.terminate() == 0, workers.server.stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (workers.data / "serve.json").exists()


def on_two_workers(
    w: Workers,
    a: list[ca_pb2_grpc.CertificateAuthorityStub],
    b: list[ca_pb2_grpc.CertificateAuthorityStub],
    marker: int,
) -> tuple[ca_pb2_grpc.CertificateAuthorityStub, ca_pb2_grpc.CertificateAuthorityStub]:
    """A stub from `a` and one from `b` whose connections are served by different workers."""
    where_a = {w.worker_of(stub, marker + i): stub for i, stub in enumerate(a)}
    where_b = {w.worker_of(stub, marker + 0x100 + i): stub for i, stub in enumerate(b)}
    for pid, stub in where_a.items():
        for other, stub_b in where_b.items():
            if other != pid:
                return stub, stub_b
    raise AssertionError(f"all connections on one worker: {where_a} {where_b}")


def test_a_revocation_through_one_worker_is_honoured_by_the_others_within_a_second(
    workers: Workers,
) -> None:
    key, csr = make_csr(uris=[spiffe("web/revoked")])
    admins = stubs(workers, 8)
    issued = admins[0][1].SignCertificate(ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=10)
    from tests.pki import key_pem

    cert = (issued.certificate_pem + issued.chain_pem).encode()
    holders = [workers.channel(cert, key_pem(key)) for _ in range(8)]
    try:
        admin, holder = on_two_workers(
            workers,
            [stub for _, stub in admins],
            [ca_pb2_grpc.CertificateAuthorityStub(ch) for ch in holders],
            0xA000,
        )  # the holder's worker has it cached as good (for an hour, by the config)
        holder.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)
        # And a watch stream on the holder's worker hears of it (the holder itself watching).
        watch = holder.WatchRevocations(ca_pb2.WatchRevocationsRequest(), timeout=30)
        head = next(watch).head_sequence
        admin.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=issued.serial_number, reason=1),
            timeout=10,
        )
        revoked_at = time.monotonic()
        heard = next(e for m in watch for e in m.events if e.sequence > head)
        assert heard.serial_number == issued.serial_number
        assert time.monotonic() - revoked_at < 1.0, "the other worker's watchers heard late"
        while True:
            try:
                holder.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAUTHENTICATED, exc
                assert "revoked" in str(exc.details())
                break
            assert time.monotonic() - revoked_at < 1.0, "still accepted a second after revocation"
            time.sleep(0.01)
    finally:
        for ch in holders:
            ch.close()
        for ch, _ in admins:
            ch.close()
    # Every worker's HTTP listener now serves one CRL, with the same number, listing it.
    http = str(workers.ready["http_listen"])
    numbers = set()
    for _ in range(8):
        with urllib.request.urlopen(f"http://{http}/crl", timeout=10) as reply:
            crl = x509.load_der_x509_crl(reply.read())
        assert crl.get_revoked_certificate_by_serial_number(int(issued.serial_number, 16))
        numbers.add(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    assert len(numbers) == 1


def test_background_work_runs_in_one_worker_and_moves_when_it_dies(workers: Workers) -> None:
    def builders() -> set[int]:
        return {
            int(json.loads(t)["pid"])
            for t in workers.server.stderr.splitlines()
            if '"event":"maintenance_lease"' in t and '"held":true' in t
        }

    deadline = time.monotonic() + DEADLINE
    while not builders() and time.monotonic() < deadline:
        time.sleep(0.05)
    first = builders()
    assert len(first) == 1, workers.server.stderr  # one lease holder, not one per worker
    (leader,) = first
    os.kill(leader, signal.SIGKILL)  # it cannot release the lease: the TTL must pass
    deadline = time.monotonic() + DEADLINE
    while builders() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(builders() - first) == 1, workers.server.stderr
