"""A credential shared by the workers of one data directory: made once however many ask at
the same time, taken up by the others, replaced once when due; the OCSP responder on top of it
signs with one delegated certificate in every process."""

from __future__ import annotations

import datetime as dt
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ca_server.core.clock import FakeClock
from ca_server.shared_credential import Credential, SharedCredential, SharedSignerSlot, credential
from ca_server.store.sqlite import SqliteStore
from tests.pki import make_key
from tests.test_authority import START, Pki, make_authority, make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def test_many_asking_at_once_make_it_once(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "secrets" / "shared.pem"
    made = []
    start = threading.Barrier(8)

    def make() -> Credential:
        made.append(1)
        return credential(pki.issuer.key, pki.issuer.chain)

    def ask(_: int) -> int:
        start.wait(10)
        return SharedCredential(path).replace(lambda c: c is None, make).certificate.serial_number

    with ThreadPoolExecutor(8) as pool:
        serials = set(pool.map(ask, range(8)))
    assert len(made) == 1 and serials == {pki.issuer.certificate.serial_number}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_change_is_seen_and_taken_up(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "shared.pem"
    mine, theirs = SharedCredential(path), SharedCredential(path)
    assert mine.load() is None
    mine.replace(lambda c: True, lambda: credential(pki.issuer.key, pki.issuer.chain))
    assert not mine.changed() and theirs.changed()
    loaded = theirs.load()
    assert loaded is not None and loaded.key_pem and loaded.chain == pki.issuer.chain
    assert not theirs.changed()
    other = make_key()
    theirs.replace(lambda c: True, lambda: credential(other, pki.issuer.chain))
    assert mine.changed()


def test_two_processes_responders_sign_with_one_delegated_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    clock = FakeClock(START)
    stores = [SqliteStore(tmp_path / "ca.db") for _ in range(2)]
    try:
        first, second = (make_authority(pki, s, clock) for s in stores)
        for ca in (first, second):
            ca.responder.share_signer(SharedSignerSlot(tmp_path / "ocsp-responder.pem"))
        a, b = first.responder.signer(), second.responder.signer()
        assert a.certificate == b.certificate

        clock.advance(dt.timedelta(days=2, hours=1))  # past 2/3 of the 3-day responder life
        rotated = first.responder.signer()
        assert rotated.certificate != a.certificate
        assert second.responder.signer().certificate == rotated.certificate  # taken up
        issued = [e for e in stores[0].audit_events(limit=100) if e.action == "issue-ocsp-signer"]
        assert len(issued) == 2  # the first one and its replacement, not one per process
    finally:
        for s in stores:
            s.close()
