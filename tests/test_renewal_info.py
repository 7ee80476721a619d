"""Renewal windows the CA steers (#12): issuing responses and GetRenewalInfo answer the same
window, a pure function of the certificate; RenewNow (and `ca-server renew-now`) pulls chosen
certificates' windows into the past for every process sharing the store, audited; bad input
gets a clear status; real agents and an in-process Identity renew when told to."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from ca_client.agent import AgentConfig
from ca_client.identity import Identity
from ca_server.config import load_config
from ca_server.core.profile import fingerprint_sha256
from ca_server.core.renewal_window import default_window
from ca_server.datadir import DataDir, load_ca
from signet.ca.v1 import ca_pb2, ca_pb2_grpc
from tests.conftest import CaServer
from tests.errdetails import details_of
from tests.test_agent import AgentProcess, _token
from tests.test_cli import _ca_server, _env

Stub = ca_pb2_grpc.CertificateAuthorityStub


def _info(stub: Stub, serial: str) -> ca_pb2.GetRenewalInfoResponse:
    return stub.GetRenewalInfo(ca_pb2.GetRenewalInfoRequest(serial_number=serial), timeout=30)


def _window(
    reply: ca_pb2.GetRenewalInfoResponse | ca_pb2.IssuedCertificate,
) -> tuple[dt.datetime, dt.datetime]:
    w = reply.renewal_window
    return w.start.ToDatetime(dt.UTC), w.end.ToDatetime(dt.UTC)


def _sign(stub: Stub, csr: str, hours: int = 24) -> ca_pb2.IssuedCertificate:
    request = ca_pb2.SignCertificateRequest(csr_pem=csr)
    request.validity.FromTimedelta(dt.timedelta(hours=hours))
    return stub.SignCertificate(request, timeout=30)


def test_issued_certificates_carry_the_window_getrenewalinfo_answers(
    ca: CaServer, admin: Stub
) -> None:
    from tests.pki import make_csr, spiffe

    reply = _sign(admin, make_csr(uris=[spiffe("web/window")])[1])
    issued_at = reply.not_before.ToDatetime(dt.UTC) + dt.timedelta(minutes=1)  # the backdate
    not_after = reply.not_after.ToDatetime(dt.UTC)
    expected = default_window(issued_at, not_after, reply.serial_number)
    assert _window(reply) == (expected.start, expected.end)
    assert reply.retry_after.ToTimedelta() == dt.timedelta(hours=1)  # 24 h / 24
    info = _info(admin, reply.serial_number)
    assert _window(info) == _window(reply) and info.explanation_url == ""
    # In the last third, a quarter of its first 1/20, and another worker computes the same.
    lifetime = not_after - issued_at
    assert issued_at + lifetime * 2 / 3 <= expected.start < expected.end
    assert expected.end <= issued_at + lifetime * (2 / 3 + 1 / 20)
    assert expected.end - expected.start == lifetime / 80
    # grpcurl, an independent client, reads the same window off the wire.
    seen = ca.grpcurl().call("GetRenewalInfo", {"serial_number": reply.serial_number})
    assert seen["renewal_window"]["start"] == expected.start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert seen["retry_after"] == "3600s"


def test_serials_spread_over_the_slots_of_the_span() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    starts = {
        default_window(now, now + dt.timedelta(hours=24), f"{i:032x}").start for i in range(64)
    }
    assert len(starts) == 4  # one per slot: a fleet issued together is cut in four


def test_renew_now_moves_the_window_into_the_past_for_every_process(
    own_ca: CaServer, own_admin: Stub
) -> None:
    from tests.pki import make_csr, spiffe

    target = _sign(own_admin, make_csr(uris=[spiffe("web/compromised")])[1])
    other = _sign(own_admin, make_csr(uris=[spiffe("web/bystander")])[1])
    request = ca_pb2.RenewNowRequest(
        serial_number=target.serial_number, explanation_url="https://status.example/kc-1"
    )
    reply = own_admin.RenewNow(request, timeout=30)
    assert reply.certificates == 1
    now = own_ca.authority.clock.now()
    start, end = _window(_info(own_admin, target.serial_number))
    assert start < end <= now and (start, end) == _window(reply)
    assert _info(own_admin, target.serial_number).explanation_url == "https://status.example/kc-1"
    assert _window(_info(own_admin, other.serial_number)) == _window(other)  # untouched
    # Another process opening the same store (a worker, a replica) answers the same.
    twin = load_ca(load_config(own_ca.data_dir, env={}), None)
    try:
        assert twin.authority.renewal_info(target.serial_number).window.end == end
    finally:
        twin.store.close()
    events = own_admin.ListAuditEvents(
        ca_pb2.ListAuditEventsRequest(action="renew-now"), timeout=30
    ).events
    assert [(e.serial_number, e.actor) for e in events] == [
        (target.serial_number, "spiffe://signet.local/admin")
    ]
    assert "1 certificates" in events[0].detail


def test_renew_now_selects_by_identity_pattern_issue_time_and_issuer(
    own_ca: CaServer, own_admin: Stub
) -> None:
    from tests.pki import make_csr, spiffe

    a = _sign(own_admin, make_csr(uris=[spiffe("web/batch/a")])[1])
    b = _sign(own_admin, make_csr(uris=[spiffe("web/batch/b")])[1])
    c = _sign(own_admin, make_csr(uris=[spiffe("web/solo")])[1])
    moved = own_admin.RenewNow(
        ca_pb2.RenewNowRequest(identity="spiffe://signet.local/web/batch/*"), timeout=30
    )
    assert moved.certificates == 2
    now = own_ca.authority.clock.now()
    assert all(_window(_info(own_admin, x.serial_number))[1] <= now for x in (a, b))
    assert _window(_info(own_admin, c.serial_number)) == _window(c)

    # Nothing was issued before the CA's own creation.
    before = ca_pb2.RenewNowRequest()
    before.issued_before.FromDatetime(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    assert own_admin.RenewNow(before, timeout=30).certificates == 0
    # The root issues no leaves; the intermediate issued every one (c among them).
    root = x509.load_pem_x509_certificate(own_ca.root_pem)
    by_root = ca_pb2.RenewNowRequest(issuer_fingerprint_sha256=fingerprint_sha256(root))
    assert own_admin.RenewNow(by_root, timeout=30).certificates == 0
    intermediate = own_ca.authority.issuer.certificate
    by_issuer = ca_pb2.RenewNowRequest(
        issuer_fingerprint_sha256=fingerprint_sha256(intermediate).upper(),
        identity=str(spiffe("web/solo")),
    )
    assert own_admin.RenewNow(by_issuer, timeout=30).certificates == 1
    assert _window(_info(own_admin, c.serial_number))[1] <= own_ca.authority.clock.now()


def test_a_revoked_certificate_is_due_at_once(ca: CaServer, admin: Stub) -> None:
    victim = ca.issue("web/revoked-window")
    revoked = admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=victim.serial), timeout=30
    )
    assert _window(_info(admin, victim.serial))[1] == revoked.revoked_at.ToDatetime(dt.UTC)


@pytest.mark.parametrize(
    ("request_", "code", "needle", "reason"),
    [
        (
            ca_pb2.RenewNowRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "say which certificates",
            "SELECTOR_EMPTY",
        ),
        (
            ca_pb2.RenewNowRequest(serial_number="zz"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not hexadecimal",
            "SERIAL_INVALID",
        ),
        (
            ca_pb2.RenewNowRequest(serial_number="01"),
            grpc.StatusCode.NOT_FOUND,
            "no certificate",
            "CERTIFICATE_NOT_FOUND",
        ),
        (
            ca_pb2.RenewNowRequest(identity="web/*"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "SPIFFE ID pattern",
            "NAME_INVALID",
        ),
        (
            ca_pb2.RenewNowRequest(identity="spiffe://signet.local/x", explanation_url="ftp://x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not an http",
            "URL_INVALID",
        ),
        (
            ca_pb2.RenewNowRequest(issuer_fingerprint_sha256="abc"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "64 hex",
            "FINGERPRINT_INVALID",
        ),
        (
            ca_pb2.RenewNowRequest(issuer_fingerprint_sha256="ab" * 32),
            grpc.StatusCode.NOT_FOUND,
            "no CA certificate",
            "CERTIFICATE_NOT_FOUND",
        ),
    ],
)
def test_bad_renew_now_requests_get_a_clear_status(
    admin: Stub, request_: ca_pb2.RenewNowRequest, code: grpc.StatusCode, needle: str, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin.RenewNow(request_, timeout=30)
    assert err.value.code() == code and needle in (err.value.details() or "")
    assert details_of(err.value).reason == reason


def test_renew_now_of_a_revoked_serial_is_a_failed_precondition(ca: CaServer, admin: Stub) -> None:
    victim = ca.issue("web/revoked-renew-now")
    admin.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial_number=victim.serial), timeout=30
    )
    with pytest.raises(grpc.RpcError) as err:
        admin.RenewNow(ca_pb2.RenewNowRequest(serial_number=victim.serial), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(err.value).reason == "CERTIFICATE_NOT_LIVE"


@pytest.mark.parametrize(
    ("serial", "code"),
    [("", grpc.StatusCode.INVALID_ARGUMENT), ("xyz", grpc.StatusCode.INVALID_ARGUMENT),
     ("0123", grpc.StatusCode.NOT_FOUND)],
)  # fmt: skip
def test_getrenewalinfo_refuses_bad_and_unknown_serials(
    admin: Stub, serial: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _info(admin, serial)
    assert err.value.code() == code and err.value.details()


def test_ca_server_renew_now_reaches_the_running_server(own_ca: CaServer, own_admin: Stub) -> None:
    victim = own_ca.issue("web/cli-renew-now")
    run = subprocess.run(
        [*_ca_server(), "renew-now", "--data-dir", str(own_ca.data_dir), "--serial", victim.serial,
         "--explanation-url", "https://status.example/rollover", "--json"],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert '"certificates": 1' in run.stdout
    info = _info(own_admin, victim.serial)
    assert _window(info)[1] <= dt.datetime.now(dt.UTC)
    assert info.explanation_url == "https://status.example/rollover"
    bad = subprocess.run(
        [*_ca_server(), "renew-now", "--data-dir", str(own_ca.data_dir)],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert bad.returncode == 1 and "say which certificates" in bad.stderr
    assert DataDir(own_ca.data_dir).exists()


def _await(condition: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(600):  # bounded: at most 60 s of 0.1 s waits on an event never set
        if condition():
            return
        done.wait(0.1)
    raise AssertionError(f"no {what} in time")


LIFETIME = 120  # seconds: retry_after 5 s, the default window from 80 s on


def test_real_agents_renew_when_an_operator_pulls_their_window_forward(
    own_ca: CaServer, own_admin: Stub, tmp_path: Path
) -> None:
    ca = own_ca
    agents = {}
    try:
        for name in ("fleet/a", "fleet/b", "fleet/c", "other/d"):
            minted = _token(ca, f"web/{name}", seconds=LIFETIME)
            agents[name] = AgentProcess(
                "--server", ca.address, "--bootstrap-server", ca.running.bootstrap_address,
                "--token", minted.token, "--root-fingerprint", minted.root_fingerprint_sha256,
                "--out", str(tmp_path / name),
            )  # fmt: skip
        minted = _token(ca, "web/fleet/in-process", seconds=LIFETIME)
        identity = Identity(
            AgentConfig(
                server=ca.address, bootstrap_server=ca.running.bootstrap_address,
                out=tmp_path / "in-process", token=minted.token,
                root_fingerprint=minted.root_fingerprint_sha256,
            )
        ).start()  # fmt: skip
        enrolled = {name: agent.wait_for("enrolled")[0] for name, agent in agents.items()}
        held = identity.credentials.certificate
        renewed = threading.Event()
        identity.on_renew.append(lambda _: renewed.set())

        request = ca_pb2.RenewNowRequest(
            identity="spiffe://signet.local/web/fleet/*",
            explanation_url="https://status.example/kc",
        )
        assert own_admin.RenewNow(request, timeout=30).certificates == 4
        for name in ("fleet/a", "fleet/b", "fleet/c"):
            told = agents[name].wait_for("renewal_window")[0]
            assert told["explanation_url"] == "https://status.example/kc"
            fresh = agents[name].wait_for("renewed")[0]
            assert fresh["serial"] != enrolled[name]["serial"]
            # Before its own window: the CA's word, not the schedule, made it renew.
            window_start = dt.datetime.fromisoformat(enrolled[name]["renew_at"])
            assert dt.datetime.fromisoformat(fresh["timestamp"]) < window_start
        _await(renewed.is_set, "renewal of the in-process Identity")
        assert identity.credentials.certificate.serial_number != held.serial_number
        # The bystander's window stands.
        other = enrolled["other/d"]["serial"]
        assert _window(_info(own_admin, other))[1] > ca.authority.clock.now()
        identity.stop()
    finally:
        for agent in agents.values():
            agent.stop()
