"""`ca-client agent` end to end: it enrolls with a token, renews for ever at 2/3 of short
lifetimes (running --on-renew each time), stops cleanly on SIGTERM, and exits non-zero with
a clear message once its identity is revoked and no usable token is left."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca_client.agent import Agent, AgentConfig
from ca_client.cli import main as ca_client
from ca_client.schedule import parse_fraction
from ca_client.serial import serial_hex
from ca_server.core.renewal_window import START, default_window, retry_after
from ca_server.logs import configure_logging
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca

DEADLINE = 60.0


class AgentProcess:
    def __init__(self, *args: str) -> None:
        cli = Path(sys.executable).parent / "ca-client"
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "ca_client.cli"]
        self.proc = subprocess.Popen(
            [*command, "agent", *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            with contextlib.suppress(ValueError):  # not every line is one of our events
                self.events.put(json.loads(line))
        self.events.put(None)

    def wait_for(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        """The first `count` log events named `event`, awaited with a deadline."""
        deadline = time.monotonic() + DEADLINE
        found: list[dict[str, Any]] = []
        while len(found) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {count} x {event!r} in time:\n{''.join(self.lines)}"
            try:
                item = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            assert item is not None, f"agent exited early:\n{''.join(self.lines)}"
            if item.get("event") == event:
                found.append(item)
        return found

    def exit_code(self) -> int:
        """Wait, bounded, for the agent to exit by itself."""
        return self.proc.wait(timeout=DEADLINE)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def short_lived_ca(tmp_path: Path) -> Iterator[CaServer]:
    server = start_ca(tmp_path / "ca-data")
    yield server
    stop_ca(server)


def _token(ca: CaServer, path: str, seconds: int) -> ca_pb2.CreateBootstrapTokenResponse:
    request = ca_pb2.CreateBootstrapTokenRequest(identity=f"spiffe://signet.local/{path}")
    request.certificate_ttl.FromSeconds(seconds)
    with ca.admin_channel() as ch:
        return ca.stub(ch).CreateBootstrapToken(request, timeout=30)


def test_agent_enrolls_then_renews_again_and_again(
    short_lived_ca: CaServer, tmp_path: Path
) -> None:
    ca = short_lived_ca
    minted = _token(ca, "web/agent", seconds=3)
    out, marker = tmp_path / "tls", tmp_path / "renewed.log"
    agent = AgentProcess(
        "--server", ca.address, "--bootstrap-server", ca.running.bootstrap_address,
        "--token", minted.token, "--root-fingerprint", minted.root_fingerprint_sha256,
        "--out", str(out), "--on-renew", f"echo renewed >> {marker}",
    )  # fmt: skip
    try:
        agent.wait_for("enrolled")
        renewals = agent.wait_for("renewed", count=3)
        serials = [r["serial"] for r in renewals]
        assert len(set(serials)) == 3  # when each came: the schedule tests below, exactly
        assert agent.stop() == 0
    finally:
        agent.stop()
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert serial_hex(cert.serial_number) in serials
    assert marker.read_text().count("renewed") >= 3


def test_agent_gives_up_clearly_once_revoked_without_a_usable_token(
    short_lived_ca: CaServer, tmp_path: Path
) -> None:
    ca = short_lived_ca
    minted = _token(ca, "web/doomed-agent", seconds=3)
    agent = AgentProcess(
        "--server", ca.address, "--bootstrap-server", ca.running.bootstrap_address,
        "--token", minted.token, "--root-fingerprint", minted.root_fingerprint_sha256,
        "--out", str(tmp_path / "tls"),
    )  # fmt: skip
    try:
        serial = agent.wait_for("renewed")[0]["serial"]
        with ca.admin_channel() as ch:
            ca.stub(ch).RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(serial_number=serial), timeout=30
            )
        code = agent.proc.wait(timeout=DEADLINE)
        assert code == 1
        assert "token was refused" in "".join(agent.lines)
    finally:
        agent.stop()


def test_agent_backs_off_while_the_ca_is_down_and_recovers_when_it_returns(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "ca-data"
    ca = start_ca(data, server={"listen": f"127.0.0.1:{port}"})
    minted = _token(ca, "web/patient", seconds=10)
    agent = AgentProcess(
        "--server", ca.address, "--bootstrap-server", ca.running.bootstrap_address,
        "--token", minted.token, "--root-fingerprint", minted.root_fingerprint_sha256,
        "--out", str(tmp_path / "tls"),
    )  # fmt: skip
    try:
        agent.wait_for("renewed")
        stop_ca(ca)  # the CA goes away during the next renewal window
        failed = agent.wait_for("renew_failed")[0]
        assert dt.datetime.fromisoformat(failed["retry_at"]) > dt.datetime.fromisoformat(
            failed["timestamp"]
        )
        ca = start_ca(data)  # back, on the same address
        assert ca.address == f"127.0.0.1:{port}"
        recovered = agent.wait_for("renewed")[0]
        assert recovered["serial"]
        assert agent.proc.poll() is None  # still running, renewing
    finally:
        agent.stop()
        stop_ca(ca)


# -- options checked first, and accepted as the help writes them (issue 10, items 6 and 7) --------


def _agent_args(ca: CaServer, minted: ca_pb2.CreateBootstrapTokenResponse, out: Path) -> list[str]:
    return ["--server", ca.address, "--bootstrap-server", ca.running.bootstrap_address,
            "--token", minted.token, "--root-fingerprint", minted.root_fingerprint_sha256,
            "--out", str(out)]  # fmt: skip


def _status(ca: CaServer, serial: str) -> ca_pb2.GetCertificateStatusResponse:
    with ca.admin_channel() as ch:
        return ca.stub(ch).GetCertificateStatus(
            ca_pb2.GetCertificateStatusRequest(serial_number=serial), timeout=30
        )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--renew-at", "1.5"], "between 0 and 1"),
        (["--renew-at", "soon"], "not a fraction"),
        (["--validity", "forever"], "invalid duration"),
        (["--format", "pem,pkcs12"], "password is needed"),
        (["--format", "pem,jks"], "unknown output format"),
        (["--out-is-a-file"], "is a file, not a directory"),
    ],
)
def test_agent_refuses_bad_options_before_spending_the_token(
    short_lived_ca: CaServer, tmp_path: Path, extra: list[str], needle: str
) -> None:
    ca = short_lived_ca
    minted = _token(ca, "web/careful-agent", seconds=60)
    out = tmp_path / "tls"
    if extra == ["--out-is-a-file"]:
        out.write_text("a file\n")
        extra = []
    agent = AgentProcess(*_agent_args(ca, minted, out), *extra)
    try:
        assert agent.exit_code() == 2
    finally:
        agent.stop()
    assert needle in "".join(agent.lines)
    enrolled = ca_client(
        ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
         "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(tmp_path / "later")]
    )  # fmt: skip
    assert enrolled == 0  # the token is still good


@pytest.mark.parametrize("renew_at", ["0.05", "2/3"])
def test_agent_renews_at_any_fraction_the_help_allows(
    short_lived_ca: CaServer, tmp_path: Path, renew_at: str
) -> None:
    ca = short_lived_ca
    minted = _token(ca, "web/early-agent", seconds=3)
    agent = AgentProcess(*_agent_args(ca, minted, tmp_path / "tls"), "--renew-at", renew_at)
    try:
        enrolled = agent.wait_for("enrolled")[0]
        renewed = agent.wait_for("renewed", count=2)
        assert len({enrolled["serial"], *(r["serial"] for r in renewed)}) == 3
        # The schedule is the asked-for fraction of the lifetime, never later.
        start = dt.datetime.fromisoformat(enrolled["timestamp"])
        lifetime = dt.datetime.fromisoformat(enrolled["not_after"]) - start
        limit = start + lifetime * parse_fraction(renew_at)
        assert dt.datetime.fromisoformat(enrolled["renew_at"]) <= limit
        assert agent.stop() == 0
    finally:
        agent.stop()


# -- the agent says what it holds and checks it at start (item 8) ------------------------------


def test_agent_restarted_on_a_revoked_certificate_says_so_and_exits_at_once(
    short_lived_ca: CaServer, tmp_path: Path
) -> None:
    ca = short_lived_ca
    minted = _token(ca, "web/restarted", seconds=3600)
    out = tmp_path / "tls"
    first = AgentProcess(*_agent_args(ca, minted, out))
    try:
        serial = first.wait_for("enrolled")[0]["serial"]
        assert first.stop() == 0
    finally:
        first.stop()
    no_token = ["--server", ca.address, "--out", str(out)]
    good = AgentProcess(*no_token)
    try:
        holding = good.wait_for("holding")[0]
        assert holding["serial"] == serial
        assert holding["identity"] == "spiffe://signet.local/web/restarted"
        assert holding["not_after"] and holding["renew_at"]
        assert good.wait_for("status")[0]["status"] == "GOOD"
        assert good.stop() == 0
    finally:
        good.stop()
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=serial, reason=ca_pb2.KEY_COMPROMISE),
            timeout=30,
        )
    revoked = AgentProcess(*no_token)
    try:
        assert revoked.exit_code() == 1  # long before the renewal an hour's lifetime would bring
    finally:
        revoked.stop()
    said = "".join(revoked.lines)
    assert f"serial {serial}" in said and "no token" in said, said


def test_agent_restarted_on_a_revoked_certificate_re_enrolls_at_once_with_a_token(
    short_lived_ca: CaServer, tmp_path: Path
) -> None:
    ca = short_lived_ca
    out = tmp_path / "tls"
    minted = _token(ca, "web/phoenix", seconds=3600)
    assert ca_client(
        ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
         "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(out)]
    ) == 0  # fmt: skip
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    serial = serial_hex(cert.serial_number)
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial_number=serial), timeout=30
        )
    agent = AgentProcess(*_agent_args(ca, _token(ca, "web/phoenix", seconds=3600), out))
    try:
        refused = agent.wait_for("certificate_refused")[0]
        assert refused["serial"] == serial
        fresh = agent.wait_for("enrolled")[0]
        assert fresh["serial"] != serial
        assert agent.stop() == 0
    finally:
        agent.stop()


def test_agent_validity_applies_to_the_first_certificate(
    short_lived_ca: CaServer, tmp_path: Path
) -> None:
    ca = short_lived_ca
    out = tmp_path / "tls"
    minted = _token(ca, "web/short-first", seconds=3600)
    agent = AgentProcess(*_agent_args(ca, minted, out), "--validity", "10m")
    try:
        enrolled = agent.wait_for("enrolled")[0]
        renewed = agent.wait_for("renewed")[0]  # at once, not at 2/3 of an hour
        assert agent.stop() == 0
    finally:
        agent.stop()
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert serial_hex(cert.serial_number) == renewed["serial"]
    lifetime = cert.not_valid_after_utc - dt.datetime.fromisoformat(renewed["timestamp"])
    assert lifetime <= dt.timedelta(minutes=10)
    assert _status(ca, enrolled["serial"]).status == ca_pb2.REVOKED  # superseded


def test_agent_pointed_at_the_bootstrap_listener_says_so_and_exits(
    short_lived_ca: CaServer, tmp_path: Path
) -> None:
    ca = short_lived_ca
    out = tmp_path / "tls"
    minted = _token(ca, "web/misdirected", seconds=3600)
    assert ca_client(
        ["enroll", "--server", ca.running.bootstrap_address, "--token", minted.token,
         "--root-fingerprint", minted.root_fingerprint_sha256, "--out", str(out)]
    ) == 0  # fmt: skip
    agent = AgentProcess("--server", ca.running.bootstrap_address, "--out", str(out))
    try:
        assert agent.exit_code() == 1
    finally:
        agent.stop()
    assert "that is the bootstrap listener" in "".join(agent.lines)


# -- the schedule itself, with an injected clock (issue 9: "tests that can fail") --------------


@dataclass(frozen=True)
class Wait:
    at: dt.datetime  # what the clock read when the agent asked to wait
    seconds: float
    held: x509.Certificate  # what the agent had just written to cert.pem


class TravellingClock:
    """One fake time for the agent and the CA: each wait the agent asks for returns at once,
    is recorded, and moves the time on by as long (its schedule, with no sleep). The CA runs on
    the same clock and backdates by a day, so that what it issues is valid by real time too
    (what the TLS handshakes check). Stops the agent once it has renewed `certificates`."""

    def __init__(self, out: Path, certificates: int) -> None:
        self.out, self.limit = out, certificates
        self.current = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.waits: list[Wait] = []
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self.current

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        held = x509.load_pem_x509_certificate((self.out / "cert.pem").read_bytes())
        self.waits.append(Wait(self.now(), seconds, held))
        if len({w.held.serial_number for w in self.waits}) > self.limit:
            stop.set()
        else:
            with self._lock:
                self.current += dt.timedelta(seconds=seconds)
        return stop.is_set()

    def renewals(self) -> list[tuple[x509.Certificate, dt.datetime, dt.datetime]]:
        """(certificate, when the agent got it, when it renewed it) for each one renewed."""
        spans: dict[int, list[Wait]] = {}
        for w in self.waits:
            spans.setdefault(w.held.serial_number, []).append(w)
        done = list(spans.values())[:-1]  # the last one held was not renewed
        return [
            (ws[0].held, ws[0].at, ws[-1].at + dt.timedelta(seconds=ws[-1].seconds)) for ws in done
        ]


@pytest.fixture
def travelling_ca(tmp_path: Path) -> Iterator[tuple[CaServer, TravellingClock]]:
    clock = TravellingClock(tmp_path / "tls", certificates=3)
    server = start_ca(tmp_path / "ca-data", clock=clock, issuance={"backdate": "1d"})
    yield server, clock
    stop_ca(server)


def _fractions(clock: TravellingClock) -> list[float]:
    """When each certificate was renewed, as a fraction of its lifetime counted from when the
    agent got it (not from the backdated not_before) to not_after."""
    points = []
    for cert, got, renewed in clock.renewals():
        lifetime = (cert.not_valid_after_utc - got).total_seconds()
        points.append((renewed - got).total_seconds() / lifetime)
    return points


def _assert_renews_at(clock: TravellingClock, fraction: float | None) -> None:
    """In the CA's window (the default, and an explicit fraction later than it), or at the
    fraction less a jitter of at most 1/20 of the lifetime (half the fraction for early ones)."""
    renewals = clock.renewals()
    assert len(renewals) == 3  # stopped at the fourth certificate: three renewed
    for (cert, got, renewed), point in zip(renewals, _fractions(clock), strict=True):
        window = default_window(got, cert.not_valid_after_utc, serial_hex(cert.serial_number))
        if fraction is None or fraction > START:
            assert window.start <= renewed <= window.end, (fraction, point)
        else:
            jitter = min(1 / 20, fraction / 2)
            assert fraction - jitter - 1e-6 <= point <= fraction + 1e-6, (fraction, point)


def _assert_polls_at_retry_after(clock: TravellingClock) -> None:
    """Between renewals the agent asks the CA again after retry_after (+ up to half of it): a
    wait after which it still holds the same certificate ended in a poll."""
    lifetime = dt.timedelta(seconds=HOUR)
    ask = retry_after(clock.current, clock.current + lifetime).total_seconds()
    polls = [
        w.seconds
        for w, after in itertools.pairwise(clock.waits)
        if w.held.serial_number == after.held.serial_number
    ]
    assert len(polls) >= 3 * 10, polls  # 40 minutes of a certificate, a poll every 150-225 s
    assert all(ask - 1e-3 <= s <= 1.5 * ask + 1e-3 for s in polls), (ask, polls)


HOUR = 3600


@pytest.mark.parametrize("fraction", [None, 0.5, 0.9])
def test_the_agent_renews_in_the_cas_window_or_at_an_earlier_fraction(
    travelling_ca: tuple[CaServer, TravellingClock], tmp_path: Path, fraction: float | None
) -> None:
    ca, clock = travelling_ca
    minted = _token(ca, "web/scheduled", seconds=HOUR)
    config = AgentConfig(
        server=ca.address, bootstrap_server=ca.running.bootstrap_address, token=minted.token,
        root_fingerprint=minted.root_fingerprint_sha256, out=clock.out, fraction=fraction,
        bundle_refresh=None,
    )  # fmt: skip
    Agent(config, rng=random.Random(9), clock=clock).run(threading.Event())
    _assert_renews_at(clock, fraction)
    if fraction is None:
        _assert_polls_at_retry_after(clock)


@pytest.mark.parametrize(("renew_at", "fraction"), [(None, None), ("0.5", 0.5), ("90%", 0.9)])
def test_ca_client_agent_renews_at_the_fraction_renew_at_gives(
    travelling_ca: tuple[CaServer, TravellingClock], renew_at: str | None, fraction: float | None
) -> None:
    ca, clock = travelling_ca
    minted = _token(ca, "web/scheduled-cli", seconds=HOUR)
    # Only the plan wakes it (the trust bundle is asked for at each renewal too).
    extra = ["--bundle-refresh", "off"] + ([] if renew_at is None else ["--renew-at", renew_at])
    try:
        assert ca_client(["agent", *_agent_args(ca, minted, clock.out), *extra], clock=clock) == 0
    finally:
        configure_logging("info", json=True)  # as the session had it: the CLI set its own
    _assert_renews_at(clock, fraction)
