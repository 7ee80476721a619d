"""CrlPublisher: CRLs follow revocations (any process's), bursts share one build, and readers
wait for the background builder instead of building on the request path."""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography import x509

from ca_server.core.authority import CertificateAuthority
from ca_server.core.clock import FakeClock
from ca_server.core.revocation import Reason
from ca_server.store.sqlite import SqliteStore

# The fixtures (authority, pki, clock, store) come from test_authority.
from tests.test_authority import (  # noqa: F401
    ADMIN,
    Pki,
    authority,
    clock,
    issue,
    make_authority,
    pki,
    store,
)


def _serials(der: bytes) -> set[int]:
    return {r.serial_number for r in x509.load_der_x509_crl(der)}


def test_a_burst_of_revocations_shares_one_build(
    authority: CertificateAuthority,
) -> None:
    crls = authority.crls
    crls.background = True  # as under the server: revocations only ask for a build
    before = crls.build().number
    issued = [issue(authority) for _ in range(5)]
    for cert in issued:
        authority.revoke(ADMIN, cert.serial, Reason.SUPERSEDED)
    assert crls.wanted.is_set()
    assert crls.run_pending() is True
    assert crls.run_pending() is False  # nothing new since
    crl = crls.current()
    assert crl.number == before + 1
    assert {int(c.serial, 16) for c in issued} <= _serials(crl.der)


def test_a_reader_waits_for_the_background_build_rather_than_building(
    authority: CertificateAuthority,
) -> None:
    crls = authority.crls
    crls.background = True
    crls.build()
    cert = issue(authority)
    authority.revoke(ADMIN, cert.serial, Reason.KEY_COMPROMISE)
    built_by: list[str] = []

    def builder() -> None:
        crls.wanted.wait(timeout=30)  # set by the reader below (and by the revocation)
        crls.run_pending()
        built_by.append(threading.current_thread().name)

    thread = threading.Thread(target=builder, name="publisher")
    thread.start()
    crl = crls.current(wait=30)
    thread.join(timeout=30)
    assert int(cert.serial, 16) in _serials(crl.der)
    assert built_by == ["publisher"]


def test_without_a_background_builder_a_stale_reader_builds(
    authority: CertificateAuthority,
) -> None:
    first = authority.crl()
    cert = issue(authority)
    authority.revoke(ADMIN, cert.serial, Reason.KEY_COMPROMISE)
    second = authority.crl()
    assert second.number == first.number + 1
    assert int(cert.serial, 16) in _serials(second.der)


def test_revocations_by_another_process_are_picked_up(
    authority: CertificateAuthority, pki: Pki, clock: FakeClock, tmp_path: Path
) -> None:
    cert = issue(authority)
    authority.crls.build()
    other = SqliteStore(tmp_path / "ca.db")
    try:
        make_authority(pki, other, clock).revoke(ADMIN, cert.serial, Reason.SUPERSEDED)
    finally:
        other.close()
    assert authority.crls.run_pending() is True
    assert int(cert.serial, 16) in _serials(authority.crls.current().der)
