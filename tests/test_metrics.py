"""Prometheus metrics on their own listener: GET /metrics (the text format, parsed here with
prometheus_client's own parser) counts RPCs, issuance, OCSP answers and commits and reports the
CA's state; with --workers the counts of every worker add up whichever answers the scrape; and
GET /healthz tells the truth."""

from __future__ import annotations

import datetime as dt
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ca_server.core.clock import FakeClock
from signet.ca.v1 import ca_pb2
from tests.conftest import CaServer, start_ca, stop_ca
from tests.pki import make_csr, spiffe
from tests.test_workers import Workers, stubs, workers  # noqa: F401 - fixture

SIGN = "/signet.ca.v1.CertificateAuthority/SignCertificate"


def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)  # type: ignore[no-any-return]


def _healthz(address: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def clocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaServer, FakeClock]]:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    server = start_ca(tmp_path_factory.mktemp("metrics") / "ca-data", clock=clock)
    yield server, clock
    stop_ca(server)


def test_metrics_count_what_the_ca_did_and_report_its_state(clocked) -> None:  # type: ignore[no-untyped-def]
    ca, _ = clocked
    address = ca.running.metrics_address
    before = _scrape(address)
    issued = ca.issue("web/metered")
    with ca.admin_channel() as ch:
        ca.stub(ch).RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(
                serial_number=issued.serial, reason=ca_pb2.KEY_COMPROMISE
            ),
            timeout=30,
        )
    ca.authority.crl()  # awaits the CRL that holds the revocation
    after = _scrape(address)
    for name, labels in (
        ("signet_rpc_requests_total", {"method": SIGN, "code": "OK"}),
        ("signet_certificates_issued_total", {"method": "sign"}),
        ("signet_revocations_total", {"reason": "key_compromise"}),
        ("signet_rpc_duration_seconds_count", {"method": SIGN}),
    ):
        assert _value(after, name, **labels) == _value(before, name, **labels) + 1, name
    assert _value(after, "signet_store_commit_batch_size_count") > 0
    expiry = {
        dict(labels)["role"]: v
        for (name, labels), v in after.items()
        if name == "signet_ca_certificate_expiry_timestamp_seconds"
    }
    assert set(expiry) >= {"root", "intermediate", "serving"}
    assert expiry["intermediate"] == ca.authority.issuer.certificate.not_valid_after_utc.timestamp()
    assert _value(after, "signet_certificates_live") >= 1
    assert _value(after, "signet_crl_entries") >= 1  # the revocation above
    assert _value(after, "signet_crl_number") >= 1


def test_ocsp_answers_are_counted_by_status_and_cache_hit(clocked) -> None:  # type: ignore[no-untyped-def]
    from tests.test_http import _ocsp_request

    ca, _ = clocked
    issued = ca.issue("web/ocsp-metered")
    from cryptography import x509

    der = _ocsp_request(
        x509.load_pem_x509_certificate(issued.cert_pem), ca.authority.issuer.certificate
    )
    before = _scrape(ca.running.metrics_address)
    for _ in range(2):
        request = urllib.request.Request(
            f"http://{ca.running.http_address}/ocsp",
            data=der,
            headers={"Content-Type": "application/ocsp-request"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - http://
            reply.read()
    after = _scrape(ca.running.metrics_address)
    name = "signet_ocsp_responses_total"
    assert _value(after, name, status="good", cache="miss") == (
        _value(before, name, status="good", cache="miss") + 1
    )
    assert _value(after, name, status="good", cache="hit") == (
        _value(before, name, status="good", cache="hit") + 1
    )


def _grpc_health(ca: CaServer) -> int:
    """What grpc.health.v1 answers for the whole server (asked of the servicer itself: with
    the clock years ahead, a re-issued serving certificate is not yet valid for a real TLS
    client)."""
    from grpc_health.v1 import health_pb2

    reply = ca.running.health.Check(health_pb2.HealthCheckRequest(), None)  # type: ignore[arg-type]
    return int(reply.status)


def _await_grpc_health(ca: CaServer, status: int) -> None:
    deadline = time.monotonic() + 10  # the maintenance thread looks every 250 ms
    while _grpc_health(ca) != status:
        assert time.monotonic() < deadline, f"gRPC health never became {status}"
        time.sleep(0.05)


def test_health_says_serving_until_the_issuing_ca_has_expired(clocked) -> None:  # type: ignore[no-untyped-def]
    from grpc_health.v1 import health_pb2

    ca, clock = clocked
    assert _healthz(ca.running.metrics_address) == (200, "ok\n")
    assert _grpc_health(ca) == health_pb2.HealthCheckResponse.SERVING
    expires = ca.authority.issuer.certificate.not_valid_after_utc
    clock.set(expires + dt.timedelta(seconds=1))
    try:
        code, text = _healthz(ca.running.metrics_address)
        _await_grpc_health(ca, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        clock.set(dt.datetime.now(dt.UTC))
    assert code == 503 and "issuing CA certificate has expired" in text
    _await_grpc_health(ca, health_pb2.HealthCheckResponse.SERVING)


def test_an_unknown_path_is_404_and_the_api_port_serves_no_metrics(clocked) -> None:  # type: ignore[no-untyped-def]
    ca, _ = clocked
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://{ca.running.metrics_address}/nope", timeout=30)
    assert ca.running.metrics_address != ca.address


def test_with_two_workers_every_scrape_adds_up_both(workers: Workers, tmp_path: Path) -> None:
    address = str(workers.ready["metrics_listen"])
    pairs = stubs(workers, 8)  # connections spread over both workers
    try:
        served = {workers.worker_of(stub, 0xBEEF00 + i) for i, (_, stub) in enumerate(pairs)}
        assert len(served) == 2  # both took calls
        before = _value(_scrape(address), "signet_certificates_issued_total", method="sign")
        for i, (_, stub) in enumerate(pairs * 3):
            stub.SignCertificate(
                ca_pb2.SignCertificateRequest(csr_pem=make_csr(uris=[spiffe(f"m/{i}")])[1]),
                timeout=30,
            )
    finally:
        for ch, _ in pairs:
            ch.close()
    # Several scrapes over new connections reach either worker: each sees the sum.
    for _ in range(6):
        samples = _scrape(address)
        assert _value(samples, "signet_certificates_issued_total", method="sign") == before + 24


def test_ca_server_status_tells_a_person_and_a_script_the_cas_state(
    clocked, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.test_cli import _run

    ca, _ = clocked
    text = _run("status", "--data-dir", ca.data_dir, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "Signet CA in" in text.stdout and "intermediate" in text.stdout
    assert "server        running" in text.stdout and ca.address in text.stdout
    as_json = _run("status", "--data-dir", ca.data_dir, "--json", cwd=tmp_path)
    report = json.loads(as_json.stdout)
    assert report["intermediate"]["not_after"] == (
        ca.authority.issuer.certificate.not_valid_after_utc.isoformat()
    )
    assert report["server"]["listen"] == ca.address
    assert report["certificates"]["live"] >= 1 and report["crl"]["number"] >= 1
    assert report["root_key_online"] is True and report["root_crl_next_update"]
    missing = _run("status", "--data-dir", tmp_path / "nothing", cwd=tmp_path)
    assert missing.returncode == 1 and "holds no Signet CA" in missing.stderr
