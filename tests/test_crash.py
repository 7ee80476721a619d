"""Crash safety of a real ``ca-server serve``: client threads issue and revoke over mTLS while
the server is SIGKILLed five times (each time after a counted number of answered calls, not
after a sleep) and restarted on the same data directory. Whatever a client was told is
kept: every certificate answered OK is stored byte for byte, no serial is handed out twice,
every revocation answered OK is in the CRL and answers REVOKED over OCSP, and SQLite finds
the database intact."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.pki import make_csr, spiffe
from tests.test_cli import TRY_IT, Server, _run

KILLS = 5
CLIENTS = 4
CALLS_PER_ROUND = 24  # answered calls between two kills
DEADLINE = 30.0
# Codes a call may end with while the server is killed (CANCELLED: the test then closes the
# dead server's channel under the call).
IN_DOUBT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


@dataclass
class Served:
    """A `ca-server serve` subprocess on a data directory, at the addresses its serve.json
    names (written once it is ready; ports are 0, so they change on every start)."""

    server: Server
    data: Path
    ready: dict[str, str]

    @property
    def http(self) -> str:
        return f"http://{self.ready['http_listen']}"

    def channel(self) -> grpc.Channel:
        admin = self.data / "admin"
        creds = grpc.ssl_channel_credentials(
            (self.data / "root.pem").read_bytes(),
            (admin / "key.pem").read_bytes(),
            (admin / "cert.pem").read_bytes(),
        )
        return grpc.secure_channel(self.ready["listen"], creds)


def init_data_dir(cwd: Path) -> Path:
    data = cwd / "ca-data"
    result = _run("init", "--data-dir", data, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return data


def start(data: Path, *args: str) -> Served:
    server = Server("--data-dir", data, "--listen", "127.0.0.1:0", *args, cwd=data.parent)
    try:
        server.wait_for_line(TRY_IT)
    except BaseException:
        server.kill()
        raise
    return Served(server, data, json.loads((data / "serve.json").read_text()))


@contextmanager
def served(data: Path, *args: str) -> Iterator[Served]:
    s = start(data, *args)
    try:
        yield s
    finally:
        s.server.kill()


def ocsp_status(s: Served, cert: x509.Certificate) -> ocsp.OCSPCertStatus:
    """The answer a relying party gets from POST /ocsp."""
    issuer = x509.load_pem_x509_certificate((s.data / "intermediate.pem").read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    http = urllib.request.Request(  # noqa: S310 - our own listener
        f"{s.http}/ocsp",
        data=request.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(http, timeout=DEADLINE) as reply:  # noqa: S310
        response = ocsp.load_der_ocsp_response(reply.read())
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    return response.certificate_status


def fetch_crl(s: Served) -> x509.CertificateRevocationList:
    with urllib.request.urlopen(f"{s.http}/crl", timeout=DEADLINE) as reply:  # noqa: S310
        return x509.load_der_x509_crl(reply.read())


@dataclass
class Ledger:
    """What the clients were told, and the stub they currently talk to."""

    issued: list[tuple[str, bytes]] = field(default_factory=list)  # serial, DER; answered OK
    revoked: set[str] = field(default_factory=set)  # answered OK
    revoke_tried: set[str] = field(default_factory=set)  # whatever the answer
    unexpected: list[str] = field(default_factory=list)
    answered: int = 0
    stub: ca_pb2_grpc.CertificateAuthorityStub | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def answer(self) -> None:
        with self.changed:
            self.answered += 1
            self.changed.notify_all()

    def await_answers(self, count: int) -> None:
        with self.changed:
            done = self.changed.wait_for(lambda: self.answered >= count, DEADLINE)
        assert done, f"only {self.answered} of {count} calls answered; {self.unexpected}"

    def point_at(self, stub: ca_pb2_grpc.CertificateAuthorityStub | None) -> None:
        with self.changed:
            self.stub = stub
            self.changed.notify_all()

    def await_other_stub(
        self, stub: ca_pb2_grpc.CertificateAuthorityStub, stop: threading.Event
    ) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.stub is not stub or stop.is_set(), DEADLINE)

    def current_stub(self, stop: threading.Event) -> ca_pb2_grpc.CertificateAuthorityStub | None:
        with self.changed:
            self.changed.wait_for(lambda: self.stub is not None or stop.is_set(), DEADLINE)
            return self.stub


def client(number: int, ledger: Ledger, stop: threading.Event) -> None:
    """Issue one certificate after another and revoke every second one."""
    n = 0
    while not stop.is_set():
        stub = ledger.current_stub(stop)
        if stub is None:
            continue
        n += 1
        _, csr = make_csr(uris=[spiffe(f"crash/{number}/{n}")])
        try:
            reply = stub.SignCertificate(ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=10)
            der = x509.load_pem_x509_certificate(reply.certificate_pem.encode()).public_bytes(
                serialization.Encoding.DER
            )
            with ledger.changed:
                ledger.issued.append((reply.serial_number, der))
            ledger.answer()
            if n % 2:
                continue
            with ledger.changed:
                ledger.revoke_tried.add(reply.serial_number)
            stub.RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    serial_number=reply.serial_number, reason=ca_pb2.KEY_COMPROMISE
                ),
                timeout=10,
            )
            with ledger.changed:
                ledger.revoked.add(reply.serial_number)
            ledger.answer()
        except grpc.RpcError as err:
            if err.code() not in IN_DOUBT:
                with ledger.changed:
                    ledger.unexpected.append(f"{err.code()}: {err.details()}")
            # The server is down: wait for the next one rather than spin against a dead port.
            ledger.await_other_stub(stub, stop)


def test_sigkill_under_load_loses_no_answered_certificate_or_revocation(tmp_path: Path) -> None:
    data = init_data_dir(tmp_path)
    ledger, stop = Ledger(), threading.Event()
    threads = [
        threading.Thread(target=client, args=(i, ledger, stop), daemon=True) for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    kills = 0
    try:
        for _ in range(KILLS):
            s = start(data)
            channel = s.channel()
            try:
                ledger.point_at(ca_pb2_grpc.CertificateAuthorityStub(channel))
                ledger.await_answers(ledger.answered + CALLS_PER_ROUND)
                s.server.proc.send_signal(signal.SIGKILL)  # calls are in flight: no goodbye
                assert s.server.wait_exit() == -signal.SIGKILL
                kills += 1
            finally:
                ledger.point_at(None)
                s.server.kill()
                channel.close()
    finally:
        stop.set()
        ledger.point_at(None)
        for t in threads:
            t.join(timeout=DEADLINE)
    assert kills == KILLS
    assert not ledger.unexpected, ledger.unexpected
    serials = [serial for serial, _ in ledger.issued]
    assert len(set(serials)) == len(serials), "a serial was handed out twice"
    assert len(ledger.revoked) >= KILLS  # the revocations below were really exercised

    with served(data) as s:
        crl = fetch_crl(s)
        in_crl = {entry.serial_number for entry in crl}
        missing = {serial for serial in ledger.revoked if int(serial, 16) not in in_crl}
        assert not missing, f"revoked (answered OK) but not in the CRL: {missing}"
        certs = {serial: x509.load_der_x509_certificate(der) for serial, der in ledger.issued}
        for serial in ledger.revoked:
            assert ocsp_status(s, certs[serial]) is ocsp.OCSPCertStatus.REVOKED, serial
        untouched = [serial for serial in serials if serial not in ledger.revoke_tried]
        for serial in untouched[:10]:
            assert ocsp_status(s, certs[serial]) is ocsp.OCSPCertStatus.GOOD, serial
        assert s.server.terminate() == 0, s.server.stderr

    with closing(sqlite3.connect(data / "ca.db")) as db:
        stored = dict(db.execute("SELECT serial, der FROM certificates"))
        status = dict(db.execute("SELECT serial, status FROM certificates"))
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for serial, der in ledger.issued:
        assert stored.get(serial) == der, f"{serial}: answered OK but not stored as sent"
    assert all(status[serial] == "revoked" for serial in ledger.revoked)
    assert in_crl <= {int(serial, 16) for serial in status}, "the CRL names an unknown serial"
