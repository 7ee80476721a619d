"""WatchRevocations over real mTLS: the backlog then live events, in one gap-free order; resuming
from a sequence; a caller revoked meanwhile is cut off; the per-process stream cap; a reader
that stops reading is cut off instead of holding its thread; shutdown ends streams."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ca_server.core.policy import Caller
from ca_server.core.revocation import Reason
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca
from tests.errdetails import details_of
from tests.pki import make_key, spiffe

TIMEOUT = 30


def _watch(
    ca: CaServer, since: int = 0, chain: bytes | None = None, key: bytes | None = None
) -> Iterator[ca_pb2.WatchRevocationsResponse]:
    if chain is None:
        chain, key = ca.admin_credentials()
    channel = ca.channel(chain, key)
    stream = ca.stub(channel).WatchRevocations(
        ca_pb2.WatchRevocationsRequest(since_sequence=since), timeout=TIMEOUT
    )
    try:
        yield from stream
    finally:
        stream.cancel()
        channel.close()


def _events(
    stream: Iterator[ca_pb2.WatchRevocationsResponse], count: int
) -> list[ca_pb2.RevocationEvent]:
    """The next `count` events, skipping heartbeats."""
    got: list[ca_pb2.RevocationEvent] = []
    while len(got) < count:
        got.extend(next(stream).events)
    return got


def _revoke(ca: CaServer, serial: str, reason: int = 1) -> None:
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=serial, reason=reason), timeout=TIMEOUT
        )


def test_backlog_then_live_events_in_one_gap_free_order(own_ca: CaServer) -> None:
    first = [own_ca.issue(f"web/w{n}").serial for n in range(3)]
    for serial in first:
        _revoke(own_ca, serial)
    stream = _watch(own_ca)
    backlog = _events(stream, 3)
    assert [e.sequence for e in backlog] == [1, 2, 3]
    assert [e.serial_number for e in backlog] == first
    assert all(e.kind == ca_pb2.RevocationEvent.REVOKED for e in backlog)
    assert all(e.reason == ca_pb2.KEY_COMPROMISE for e in backlog)
    # Live: a hold, then its release, arrive as they happen (the stream is caught up).
    held = own_ca.issue("web/held").serial
    _revoke(own_ca, held, reason=ca_pb2.CERTIFICATE_HOLD)
    (event,) = _events(stream, 1)
    assert (event.sequence, event.serial_number, event.reason) == (
        4,
        held,
        ca_pb2.CERTIFICATE_HOLD,
    )
    _revoke(own_ca, held, reason=ca_pb2.REMOVE_FROM_CRL)
    (event,) = _events(stream, 1)
    assert (event.sequence, event.kind) == (5, ca_pb2.RevocationEvent.RELEASED)
    assert event.not_after.ToDatetime(dt.UTC) > dt.datetime.now(dt.UTC)


def test_resuming_from_a_sequence_continues_after_it(own_ca: CaServer) -> None:
    serials = [own_ca.issue(f"web/r{n}").serial for n in range(4)]
    for serial in serials:
        _revoke(own_ca, serial)
    assert [e.serial_number for e in _events(_watch(own_ca, since=2), 2)] == serials[2:]


def test_a_caught_up_reader_gets_a_heartbeat_with_the_head_at_once(own_ca: CaServer) -> None:
    _revoke(own_ca, own_ca.issue("web/h").serial)
    first = next(_watch(own_ca, since=1))
    assert list(first.events) == [] and first.head_sequence == 1
    first = next(_watch(own_ca, since=0))
    assert len(first.events) == 1 and first.head_sequence == 1


def test_a_sequence_ahead_of_the_ca_is_out_of_range(own_ca: CaServer) -> None:
    with pytest.raises(grpc.RpcError) as err:
        next(_watch(own_ca, since=7))
    assert err.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert "watch again from 0" in str(err.value.details())
    assert details_of(err.value).reason == "SEQUENCE_AHEAD"


def test_a_watcher_revoked_meanwhile_is_cut_off(own_ca: CaServer) -> None:
    creds = own_ca.issue("web/watcher")
    stream = _watch(own_ca, chain=creds.fullchain, key=creds.key_pem)
    assert next(stream).head_sequence == 0
    _revoke(own_ca, creds.serial)
    heard: list[str] = []
    with pytest.raises(grpc.RpcError) as err:
        for message in stream:
            heard.extend(e.serial_number for e in message.events)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in str(err.value.details())
    assert heard == [creds.serial]  # told of its own revocation before being cut off


def test_streams_beyond_max_watchers_are_refused_with_retry_info(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca-data", server={"max_watchers": "1"})
    try:
        stream = _watch(ca)
        next(stream)  # the one stream allowed is open
        with pytest.raises(grpc.RpcError) as err:
            next(_watch(ca))
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_watchers" in str(err.value.details())
        refused = details_of(err.value)
        assert (refused.reason, refused.retry_seconds) == ("WATCHERS_EXHAUSTED", 5)
        stream.close()  # and once it is closed, another may open
        _wait_until(lambda: _opens(ca))
    finally:
        stop_ca(ca)


def _opens(ca: CaServer) -> bool:
    try:
        next(_watch(ca))
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    return True


def _wait_until(condition: object) -> None:
    """Retry a condition the server reaches on its own (the closed stream's thread ending)."""
    deadline = threading.Event()
    for _ in range(300):
        if condition():  # type: ignore[operator]
            return
        deadline.wait(0.05)
    raise AssertionError("condition not reached")


def test_a_reader_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca-data", server={"watch_stall_timeout": "1s"})
    try:
        admin = Caller(spiffe("admin"), "", is_admin=True)
        key = make_key("ec-p256").public_key()
        total = 1200  # 3 pages, ~120 kB of events: more than the reader's flow-control window
        for n in range(total):  # through the core: 2,400 RPCs would take longer
            issued = ca.authority.issue_for(
                public_key=key,
                identity=spiffe(f"web/bulk{n}"),
                lifetime=dt.timedelta(hours=1),
                actor="test",
                action="issue",
            )
            ca.authority.revoke(admin, issued.serial, Reason.KEY_COMPROMISE)
        chain, pkey = ca.admin_credentials()
        channel = grpc.secure_channel(
            ca.address,
            grpc.ssl_channel_credentials(ca.root_pem, pkey, chain),
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)],
        )
        stream = ca.stub(channel).WatchRevocations(
            ca_pb2.WatchRevocationsRequest(), timeout=TIMEOUT
        )
        assert next(stream).events  # reading, then no more
        governor = ca.running.watch
        assert governor is not None
        _wait_until(lambda: governor.cut_off == 1)
        received = 0
        with pytest.raises(grpc.RpcError) as err:
            for message in stream:
                received += len(message.events)
        assert err.value.code() is grpc.StatusCode.CANCELLED
        assert received < total
        channel.close()
    finally:
        stop_ca(ca)


def test_stopping_the_server_ends_open_streams_with_unavailable(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "ca-data")
    try:
        stream = _watch(ca)
        next(stream)
        ca.running.stop(30)  # not after the grace: the stream is told at once
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in str(err.value.details())
        assert details_of(err.value).reason == "SHUTTING_DOWN"
    finally:
        ca.store.close()


# -- ca_client.RevocationSet: a relying party's set that follows the stream ------------------


def test_a_revocation_set_follows_revocations_releases_and_a_ca_restart(tmp_path: Path) -> None:
    from ca_client.revocations import RevocationSet
    from tests.test_nginx import _free_port

    data, port = tmp_path / "ca-data", _free_port()
    ca = start_ca(data, server={"listen": f"127.0.0.1:{port}"})
    before = ca.issue("web/before").serial
    _revoke(ca, before)
    chain, key = ca.admin_credentials()
    channel = ca.channel(chain, key)
    revoked = RevocationSet(channel, first_retry=0.05, max_retry=0.2).start()
    try:
        assert revoked.is_revoked(before) and revoked.sequence == 1  # the backlog, at start
        held = ca.issue("web/held").serial
        _revoke(ca, held, reason=ca_pb2.CERTIFICATE_HOLD)
        assert revoked.wait_for(2, TIMEOUT) and revoked.is_revoked(held.upper())
        _revoke(ca, held, reason=ca_pb2.REMOVE_FROM_CRL)
        assert revoked.wait_for(3, TIMEOUT) and not revoked.is_revoked(held)
        # The CA goes away and comes back (same address): the set resumes where it was.
        stop_ca(ca)
        ca = start_ca(data)
        during = ca.issue("web/after-restart").serial
        _revoke(ca, during)
        assert revoked.wait_for(4, TIMEOUT), revoked.last_error
        assert revoked.is_revoked(during) and revoked.is_revoked(before)
        assert revoked.last_error is not None  # it did lose the stream meanwhile
    finally:
        revoked.stop()
        channel.close()
        stop_ca(ca)


# -- WatchTrustBundle -----------------------------------------------------------------------


def test_watch_trust_bundle_sends_the_bundle_at_once_then_each_change(own_ca: CaServer) -> None:
    from ca_server.cli import main as ca_server_main

    chain, key = own_ca.admin_credentials()
    with own_ca.channel(chain, key) as channel:
        stub = own_ca.stub(channel)
        before = stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
        stream = stub.WatchTrustBundle(ca_pb2.WatchTrustBundleRequest(), timeout=TIMEOUT)
        assert next(stream) == before
        # An intermediate rotation (by the operator's command, through the store): the stream
        # sends the new bundle, as GetTrustBundle now answers it.
        assert ca_server_main(["intermediate", "rotate", "--data-dir", str(own_ca.data_dir)]) == 0
        changed = next(stream)
        assert changed.intermediate_certificates_pem != before.intermediate_certificates_pem
        assert changed.root_certificates_pem == before.root_certificates_pem
        assert changed == stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
        stream.cancel()


def test_unary_calls_run_at_most_max_workers_at_once_while_streams_have_their_own_threads(
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.pki import make_csr
    from tests.test_store_writer import hold_writer

    ca = start_ca(tmp_path / "ca-data", server={"max_workers": "1"})
    release, holder = hold_writer(ca.store)  # the one unary call below waits on the writer
    try:
        chain, key = ca.admin_credentials()
        with ca.channel(chain, key) as channel, ThreadPoolExecutor(1) as pool:
            stub = ca.stub(channel)
            _, csr = make_csr(uris=[spiffe("web/slot")])
            signing = pool.submit(
                stub.SignCertificate, ca_pb2.SignCertificateRequest(csr_pem=csr), timeout=TIMEOUT
            )
            _wait_until(lambda: ca.store._writer._queue.qsize() >= 1)  # inside its handler
            with pytest.raises(grpc.RpcError) as err:  # no second unary call meanwhile
                stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=1)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            stream = stub.WatchRevocations(ca_pb2.WatchRevocationsRequest(), timeout=TIMEOUT)
            assert next(stream).head_sequence == 0  # a stream still opens
            stream.cancel()
            release.set()
            assert signing.result(TIMEOUT).serial_number
            assert stub.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=TIMEOUT)
    finally:
        release.set()
        holder.join(TIMEOUT)
        stop_ca(ca)
