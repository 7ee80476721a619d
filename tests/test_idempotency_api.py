"""request_id and validate_only end to end: over real mTLS (grpcio and grpcurl), through
`ca-server serve --workers 2` (concurrent twins on both workers yield one certificate), and from
the client side: an answer lost after the CA stored the certificate (the CA's writer held up,
the client's deadline passing) is answered again on the retry, by CaClient, the agent and the
ca-client commands, because every retry of one call carries the same request_id."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from ca_client.agent import Agent, AgentConfig
from ca_client.cli import main as ca_client
from ca_client.client import CaClient, Pending, Retry
from ca_client.files import Credentials as FileCredentials
from ca_client.files import read_credentials
from ca_client.serial import serial_hex
from ca_server.store.postgres import PostgresStore
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer
from tests.errdetails import details_of
from tests.pki import make_csr, spiffe
from tests.test_workers import Workers, stubs, workers  # noqa: F401 - the fixture

RID = str(uuid.UUID("4a1f0c2e-9b3d-4e5f-8a6b-7c8d9e0f1a2b"))


def count(ca: CaServer, table: str, where: str = "1 = 1", params: tuple[Any, ...] = ()) -> int:
    return int(ca.store._read_one(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)[0])  # noqa: S608


# -- over gRPC ----------------------------------------------------------------------------------


def test_a_retried_sign_gets_the_same_certificate_over_mtls(
    own_ca: CaServer, own_admin: Any
) -> None:
    _, csr = make_csr(uris=[spiffe("web/retried")])
    request = ca_pb2.SignCertificateRequest(csr_pem=csr, request_id=RID)
    first = own_admin.SignCertificate(request, timeout=30)
    again = own_admin.SignCertificate(request, timeout=30)
    assert (again.serial_number, again.certificate_pem) == (
        first.serial_number,
        first.certificate_pem,
    )
    assert (first.identity, list(first.dns_names)) == (spiffe("web/retried"), [])
    assert count(own_ca, "certificates", "identity = ?", (spiffe("web/retried"),)) == 1


def test_a_different_request_under_the_same_id_is_already_exists(own_admin: Any) -> None:
    _, csr = make_csr(uris=[spiffe("web/one")])
    own_admin.SignCertificate(
        ca_pb2.SignCertificateRequest(csr_pem=csr, request_id=RID), timeout=30
    )
    _, other = make_csr(uris=[spiffe("web/two")])
    with pytest.raises(grpc.RpcError) as info:
        own_admin.SignCertificate(
            ca_pb2.SignCertificateRequest(csr_pem=other, request_id=RID), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"request_id {RID} was already used for a different request" in str(info.value.details())
    assert details_of(info.value).reason == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    "request_id", ["00000000-0000-0000-0000-000000000000", "retry-1", "\u00e9" * 100]
)
def test_a_request_id_that_is_no_uuid_is_invalid_argument(admin: Any, request_id: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        admin.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number="01", request_id=request_id), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in str(info.value.details())
    refused = details_of(info.value)
    assert (refused.reason, refused.violations[0][0]) == ("REQUEST_ID_INVALID", "request_id")


def test_a_retried_token_request_is_refused_without_a_second_token(
    own_ca: CaServer, own_admin: Any
) -> None:
    request = ca_pb2.CreateBootstrapTokenRequest(identity=spiffe("web/new"), request_id=RID)
    first = own_admin.CreateBootstrapToken(request, timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        own_admin.CreateBootstrapToken(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "shown only once" in str(info.value.details())
    assert first.token not in str(info.value.details())
    assert details_of(info.value).reason == "ANSWER_NOT_KEPT"
    assert count(own_ca, "bootstrap_tokens") == 1


def test_validate_only_over_grpcurl_answers_without_a_certificate(own_ca: CaServer) -> None:
    """grpcurl speaks the JSON names of the new fields, as operators will."""
    _, csr = make_csr(uris=[spiffe("web/dry")], dns=["dry.web.internal"])
    body = {"csr_pem": csr, "validity": "7200s", "validate_only": True, "request_id": RID}
    reply = own_ca.grpcurl().call("SignCertificate", body)
    assert "certificate_pem" not in reply and "serial_number" not in reply
    assert reply["identity"] == spiffe("web/dry") and reply["dns_names"] == ["dry.web.internal"]
    lifetime = dt.datetime.fromisoformat(reply["not_after"]) - dt.datetime.fromisoformat(
        reply["not_before"]
    )
    assert lifetime == dt.timedelta(hours=2, minutes=1)  # with the backdate
    # (The CA's own certificates may appear meanwhile: its OCSP responder's, at the first poll.)
    assert count(own_ca, "certificates", "identity = ?", (spiffe("web/dry"),)) == 0
    assert count(own_ca, "audit", "action = 'issue'") == 0
    assert count(own_ca, "request_ids") == 0


# -- two workers --------------------------------------------------------------------------------


def signers_of(workers: Workers, calls: int) -> set[int]:
    """The pids that answered SignCertificate, once all `calls` lines are in (each worker's
    log is flushed every 100 ms)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [line for line in workers.rpc_lines()
                 if str(line["method"]).endswith("/SignCertificate")]  # fmt: skip
        if len(lines) >= calls or time.monotonic() > deadline:
            return {int(line["pid"]) for line in lines}  # type: ignore[call-overload]
        time.sleep(0.02)


def test_concurrent_twins_through_two_workers_yield_one_certificate(workers: Workers) -> None:
    pairs = stubs(workers, 16)
    try:
        by_worker: dict[int, list[Any]] = {}
        for i, (_, stub) in enumerate(pairs):
            by_worker.setdefault(workers.worker_of(stub, 0x1DE000 + i), []).append(stub)
        assert len(by_worker) == 2, "all 16 connections on one worker"
        chosen = [stub for group in by_worker.values() for stub in group[:4]]
        _, csr = make_csr(uris=[spiffe("web/twin")])
        request = ca_pb2.SignCertificateRequest(csr_pem=csr, request_id=RID)
        start = threading.Barrier(len(chosen))
        serials: list[str] = []

        def send(stub: Any) -> None:
            start.wait()
            serials.append(stub.SignCertificate(request, timeout=30).serial_number)

        threads = [threading.Thread(target=send, args=(s,)) for s in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for ch, _ in pairs:
            ch.close()
    assert len(serials) == len(chosen) and len(set(serials)) == 1
    assert signers_of(workers, len(chosen)) == set(by_worker)  # both workers answered twins
    with closing(sqlite3.connect(workers.data / "ca.db")) as db:
        stored = db.execute(
            "SELECT serial FROM certificates WHERE identity = ?", [spiffe("web/twin")]
        ).fetchall()
    assert stored == [(serials[0],)]


# -- the client: a lost answer, retried ---------------------------------------------------------


class HeldWrites:
    """Holds up every write of the CA's store while held, as a stalled disk or database
    would: SQLite's writers queue on their shared lock file, PostgreSQL's inserts of request
    records on a table lock. The RPC that writes cannot answer meanwhile."""

    def __init__(self, ca: CaServer) -> None:
        self._ca = ca
        self._release: Any = None

    def hold(self) -> None:
        store = self._ca.store
        if isinstance(store, PostgresStore):
            import psycopg

            conn = psycopg.connect(store.url)
            conn.execute("LOCK TABLE request_ids IN EXCLUSIVE MODE")
            self._release = conn.close  # closing rolls the transaction back
        else:
            fd = os.open(store.path.with_name(store.path.name + "-writer.lock"), os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._release = lambda: os.close(fd)

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


@pytest.fixture
def held(own_ca: CaServer) -> Iterator[HeldWrites]:
    h = HeldWrites(own_ca)
    yield h
    h.release()


def _workload(ca: CaServer, tmp_path: Path, path: str) -> tuple[Path, FileCredentials]:
    issued = ca.issue(path)
    out = tmp_path / "tls"
    issued.write(out)
    (out / "ca.pem").write_bytes(ca.root_pem)
    creds = read_credentials(out)
    assert creds is not None
    return out, creds


def _serial(cert: x509.Certificate) -> str:
    return serial_hex(cert.serial_number)


def test_a_renewal_whose_answer_was_lost_is_answered_with_the_same_certificate(
    own_ca: CaServer, held: HeldWrites, tmp_path: Path
) -> None:
    identity = spiffe("web/lost")
    _, creds = _workload(own_ca, tmp_path, "web/lost")
    retries: list[float] = []

    def between_attempts(seconds: float) -> None:  # the retry's wait: the CA's disk recovers
        retries.append(seconds)
        held.release()

    held.hold()
    retry = Retry(attempts=2, delay=0.0, sleep=between_attempts)
    with CaClient(own_ca.address, creds, retry=retry, timeout=1.0) as client:
        fresh = client.renew()
    assert len(retries) == 1  # the first attempt's answer never came
    assert count(own_ca, "certificates", "identity = ?", (identity,)) == 2  # the first + one
    renewed = own_ca.store._read(
        "SELECT serial FROM certificates WHERE identity = ? AND serial != ?",
        [identity, _serial(creds.certificate)],
    )
    assert renewed == [(_serial(fresh.certificate),)]
    assert fresh.key.public_key() == fresh.certificate.public_key()


def test_the_same_pending_call_sent_again_gets_the_same_certificate(
    own_ca: CaServer, tmp_path: Path
) -> None:
    _, creds = _workload(own_ca, tmp_path, "web/pending")
    pending = Pending.new()
    with CaClient(own_ca.address, creds) as client:
        first, again = client.renew(pending=pending), client.renew(pending=pending)
        other = client.renew()
    assert first.certificate == again.certificate
    assert other.certificate != first.certificate


class HoldingClock:
    """The agent's clock: its first wait (until the renewal is due) returns at once and holds
    up the CA's writes, so the renewal's answer is lost; the backoff wait after it lets them
    go; the wait after the next renewal ends the run. Time reads the wall clock."""

    def __init__(self, held: HeldWrites) -> None:
        self.held = held
        self.waits = 0
        self.renewed = threading.Event()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        self.waits += 1
        if self.waits == 1:
            self.held.hold()
        else:
            self.held.release()
        if self.renewed.is_set():
            stop.set()
        return stop.is_set()


def test_the_agent_retries_a_lost_renewal_with_the_same_key_and_request_id(
    own_ca: CaServer, held: HeldWrites, tmp_path: Path
) -> None:
    identity = spiffe("web/agent-lost")
    out, creds = _workload(own_ca, tmp_path, "web/agent-lost")
    clock = HoldingClock(held)
    # Renewing at 1% of the lifetime: before the agent's first poll of the CA's window.
    config = AgentConfig(
        server=own_ca.address, out=out, rpc_timeout=1.0, fraction=0.01, bundle_refresh=None
    )
    agent = Agent(config, clock=clock)
    failures: list[Exception] = []
    agent.failed.append(failures.append)
    agent.renewed.append(lambda _: clock.renewed.set())
    agent.run(threading.Event())
    assert len(failures) == 1 and isinstance(failures[0], grpc.RpcError)
    assert failures[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert agent.renewals == 1
    held_now = read_credentials(out)
    assert held_now is not None and held_now.certificate != creds.certificate
    assert count(own_ca, "certificates", "identity = ?", (identity,)) == 2  # no second renewal


def test_ca_client_commands_send_a_request_id(
    own_ca: CaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = _workload(own_ca, tmp_path, "web/cli-ids")
    base = ["--server", own_ca.address, "--out", str(out), "--json"]
    assert ca_client(["renew", *base]) == 0
    renewed = json.loads(capsys.readouterr().out)["serial_number"]
    assert ca_client(["revoke", *base, renewed, "--reason", "SUPERSEDED"]) == 0
    methods = own_ca.store._read(
        "SELECT method FROM request_ids WHERE scope = ? ORDER BY created_at",
        [spiffe("web/cli-ids")],
    )
    assert sorted(m for (m,) in methods) == ["RenewCertificate", "RevokeCertificate"]
