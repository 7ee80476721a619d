"""``ca-server serve --workers 2``, as an operator runs it: the workers share the ports and each
serves, concurrent issuance through all of them loses and duplicates nothing, a worker that
dies is restarted, and SIGTERM stops them all. Which worker served a connection is read from
its per-RPC log line (every line carries the pid), matched by a serial only that connection
asked about."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.pki import make_csr, spiffe
from tests.test_cli import Server, serving

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
    with serving("--workers", "2", "--listen", "127.0.0.1:0", cwd=tmp_path) as server:
        server.wait_for_line("Try it: ")
        yield Workers(server, tmp_path / "ca-data")


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
