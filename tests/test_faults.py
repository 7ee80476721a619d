"""Store faults against a real ``ca-server serve``: a database locked by another process, made
read-only, or on a full filesystem answers UNAVAILABLE naming the problem (not INTERNAL, not
after 30 s), reads keep answering, and issuance comes back by itself once the fault is gone,
with nothing half-written. Starting on a database that cannot be used is one clear line."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.errdetails import assert_refused
from tests.pki import make_csr, spiffe
from tests.test_cli import _serve_refused
from tests.test_crash import DEADLINE, Served, init_data_dir, served

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def sign(stub: ca_pb2_grpc.CertificateAuthorityStub, name: str) -> ca_pb2.IssuedCertificate:
    _, csr = make_csr(uris=[spiffe(f"faults/{name}")])
    reply: ca_pb2.IssuedCertificate = stub.SignCertificate(
        ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=DEADLINE
    )
    return reply


def refused(stub: ca_pb2_grpc.CertificateAuthorityStub, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        sign(stub, name)
    error: grpc.RpcError = caught.value
    got = assert_refused(error, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert got.retry_seconds == 1  # nothing was written: the same call, a moment later
    return error


def until(condition: Callable[[], bool], what: str) -> None:
    """A bounded poll on something observable (health is set by a background check)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {DEADLINE} s"
        time.sleep(0.05)


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE).status
    return status


def signs_again(
    stub: ca_pb2_grpc.CertificateAuthorityStub, name: str, answered: set[str] | None = None
) -> bool:
    try:
        serial = sign(stub, name).serial_number
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
        return False
    if answered is not None:
        answered.add(serial)
    return True


def status(stub: ca_pb2_grpc.CertificateAuthorityStub, serial: str) -> int:
    request = ca_pb2.GetCertificateStatusRequest(serial_number=serial)
    answer: int = stub.GetCertificateStatus(request, timeout=DEADLINE).status
    return answer


@contextmanager
def admin(s: Served) -> Iterator[tuple[grpc.Channel, ca_pb2_grpc.CertificateAuthorityStub]]:
    with s.channel() as channel:
        yield channel, ca_pb2_grpc.CertificateAuthorityStub(channel)


def test_a_database_locked_by_another_process_is_unavailable_while_reads_answer(
    tmp_path: Path,
) -> None:
    data = init_data_dir(tmp_path)
    with served(data) as s, admin(s) as (channel, stub):
        before = sign(stub, "before")
        # The CA's first OCSP answer issues its delegated responder (a write): not a read.
        assert status(stub, before.serial_number) == ca_pb2.GOOD
        until(lambda: health(channel) == SERVING, "serving")
        with closing(sqlite3.connect(data / "ca.db", isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # what a backup tool or a stray sqlite3 shell does
            error = refused(stub, "locked")
            assert "database is locked by another process" in str(error.details())
            assert status(stub, before.serial_number) == ca_pb2.GOOD
            assert stub.GetCRL(ca_pb2.GetCRLRequest(), timeout=DEADLINE).crl
            until(lambda: health(channel) == NOT_SERVING, "NOT_SERVING while locked")
            other.execute("ROLLBACK")
        until(lambda: signs_again(stub, "after"), "issuing again")
        until(lambda: health(channel) == SERVING, "serving again")


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def test_a_read_only_database_is_unavailable_and_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    # Root ignores file modes, so chmod 0444 would prove nothing here. The immutable flag
    # refuses writes to everyone, root included, and (on this kernel) through descriptors
    # already open, so the server's open connections fail as new ones do.
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed (apt-get install e2fsprogs)")
    data = init_data_dir(tmp_path)
    with served(data) as s, admin(s) as (_, stub):
        sign(stub, "before")
        files = [data / "ca.db", data / "ca.db-wal"]
        try:
            _chattr("+i", *files)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make the database immutable here: {exc.stderr.strip()}")
        try:
            # The first write may meet the old connection (an I/O error); the writer then
            # reopens, and from then on the answer names the read-only file.
            refused(stub, "read-only-1")
            error = refused(stub, "read-only-2")
            assert "the database is read-only" in str(error.details())
        finally:
            _chattr("-i", *files)
        until(lambda: signs_again(stub, "writable"), "issuing again once writable")
    with closing(sqlite3.connect(data / "ca.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: room for a CA and a few hundred certificates."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        # Skipped under CI=true too: CI runs in the same kind of sandbox, where mounting
        # needs privileges a job may not have; failing there would test the sandbox.
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_filesystem_is_unavailable_keeps_nothing_half_written_and_recovers(
    small_filesystem: Path,
) -> None:
    data = init_data_dir(small_filesystem)
    answered: set[str] = set()
    with served(data) as s, admin(s) as (_, stub):
        answered.add(sign(stub, "before").serial_number)
        filler = small_filesystem / "filler"
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # ENOSPC: the filesystem is full
        error = None
        for n in range(500):  # until the WAL needs a page the filesystem cannot give it
            try:
                answered.add(sign(stub, f"full-{n}").serial_number)
            except grpc.RpcError as err:
                error = err
                break
        assert error is not None, "500 certificates issued on a full filesystem"
        assert_refused(error, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert "disk is full" in str(error.details())

        filler.unlink()
        until(lambda: signs_again(stub, "space", answered), "issuing again once there is room")
    with closing(sqlite3.connect(data / "ca.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {
            row[0]
            for row in db.execute(
                "SELECT serial FROM certificates WHERE identity LIKE ?", [spiffe("faults/%")]
            )
        }
        audited = {row[0] for row in db.execute("SELECT serial FROM audit WHERE action = 'issue'")}
    # What was answered is kept; what was refused left no certificate and no audit row.
    assert stored == answered
    assert audited & stored == answered and audited <= stored | {None}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda db: db.write_bytes(os.urandom(64 * 1024)), id="garbage"),
        pytest.param(lambda db: db.write_bytes(db.read_bytes()[:4096]), id="truncated"),
        pytest.param(lambda db: db.write_bytes(b""), id="empty"),
    ],
)
def test_serve_on_a_corrupt_database_exits_1_with_one_line(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    data = init_data_dir(tmp_path)
    for extra in ("ca.db-wal", "ca.db-shm"):
        (data / extra).unlink(missing_ok=True)
    damage(data / "ca.db")
    result = _serve_refused("--data-dir", data, "--listen", "127.0.0.1:0", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("ca-server: error: "), result.stderr
    assert "ca.db" in lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_read_only_database_exits_1_with_one_line(tmp_path: Path, workers: str) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed (apt-get install e2fsprogs)")
    data = init_data_dir(tmp_path)
    files = [p for p in (data / "ca.db", data / "ca.db-wal") if p.exists()]
    try:
        _chattr("+i", *files)  # see the read-only test above: modes do not stop root
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make the database immutable here: {exc.stderr.strip()}")
    try:
        result = _serve_refused(
            "--data-dir", data, "--listen", "127.0.0.1:0", "--workers", workers, cwd=tmp_path
        )
    finally:
        _chattr("-i", *files)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("ca-server: error: "), result.stderr
    assert "read-only" in lines[0], lines[0]
