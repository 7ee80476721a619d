"""Prometheus metrics: instruments the adapters and background jobs update, and what a scrape of
``GET /metrics`` computes from the CA's state (CRL, expiries, live certificates).

With several workers the counters and histograms live in files under PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multi-process mode, set by the supervisor before any worker starts), so a
scrape answered by any worker adds them all up. prometheus_client picks that mode when it is
first imported, so it is imported here lazily, never at module import.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cryptography import x509

from .core.profile import serial_hex
from .core.store import StoredCrl

if TYPE_CHECKING:
    from .core.authority import CertificateAuthority
    from .serving import ServingCertificate

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ISSUING = {
    "/signet.ca.v1.CertificateAuthority/SignCertificate": "sign",
    "/signet.ca.v1.CertificateAuthority/RenewCertificate": "renew",
    "/signet.ca.v1.CertificateAuthority/Enroll": "enroll",
}
_ENROLL = "/signet.ca.v1.CertificateAuthority/Enroll"
FLUSH_EVERY = 1.0  # seconds: how stale the batched OCSP counts may be in a scrape


class Metrics:
    """The process's instruments (one set per process: see instruments())."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_total = Counter(
            "signet_rpc_requests", "RPCs answered, by method and status code",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.rpc_seconds = Histogram(
            "signet_rpc_duration_seconds", "Time to answer an RPC, by method",
            ["method"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.issued = Counter(
            "signet_certificates_issued", "Certificates issued, by method (sign, renew, enroll)",
            ["method"], registry=r,
        )  # fmt: skip
        self.revoked = Counter(
            "signet_revocations", "Certificates revoked, by reason", ["reason"], registry=r
        )
        self.bootstrap = Counter(
            "signet_bootstrap_attempts", "Enroll attempts, by outcome (a gRPC status code)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.ocsp = Counter(
            "signet_ocsp_responses", "OCSP responses over HTTP, by status and cache hit",
            ["status", "cache"], registry=r,
        )  # fmt: skip
        self.store_commit_seconds = Histogram(
            "signet_store_commit_duration_seconds",
            "Time a group commit held the database's write lock", buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.store_batch = Histogram(
            "signet_store_commit_batch_size", "Writes committed together in one transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r,
        )  # fmt: skip
        self._pending: dict[tuple[str, bool], int] = {}
        self._pending_lock = threading.Lock()
        threading.Thread(target=self._flush_forever, name="metrics-flush", daemon=True).start()
        self.job_success = Gauge(
            "signet_background_job_last_success_timestamp_seconds",
            "When a background job last finished without error, by job", ["job"],
            multiprocess_mode="max", registry=r,
        )  # fmt: skip

    # -- what the adapters call ---------------------------------------------------------------
    def rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_total.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)
        if code == "OK" and method in _ISSUING:
            self.issued.labels(_ISSUING[method]).inc()
        if method == _ENROLL:
            self.bootstrap.labels(code.lower()).inc()

    def revocation(self, reason: str) -> None:
        self.revoked.labels(reason.lower()).inc()

    def ocsp_answer(self, status: str, cached: bool) -> None:
        """Counted here and added to the shared counter by flush(): an OCSP answer costs ~40 µs
        and a multi-process counter increment ~3 µs, so they are not paid one by one."""
        key = (status, cached)
        with self._pending_lock:
            self._pending[key] = self._pending.get(key, 0) + 1

    def flush(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for (status, cached), n in pending.items():
            self.ocsp.labels(status, "hit" if cached else "miss").inc(n)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            self.flush()

    def commit(self, batch: int, seconds: float) -> None:
        self.store_batch.observe(batch)
        self.store_commit_seconds.observe(seconds)

    def job_done(self, job: str) -> None:
        self.job_success.labels(job).set(time.time())


_lock = threading.Lock()
_instruments: Metrics | None = None


def instruments() -> Metrics:
    """This process's instruments, made on first use (after fork, in a worker)."""
    global _instruments
    with _lock:
        if _instruments is None:
            _instruments = Metrics()
        return _instruments


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class CaState:
    """Collected at scrape time from the CA this process serves (the same for every worker)."""

    def __init__(self, authority: CertificateAuthority, serving: ServingCertificate) -> None:
        self._ca = authority
        self._serving = serving
        self._counted: tuple[int, int] | None = None

    def describe(self) -> list[Any]:
        return []  # computed at collect time only

    def _entries(self, crl: StoredCrl) -> int:
        """Entries of a CRL, counted once per CRL number (a 100k-entry CRL is megabytes)."""
        if self._counted is None or self._counted[0] != crl.number:
            self._counted = (crl.number, len(x509.load_der_x509_crl(crl.der)))
        return self._counted[1]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ca = self._ca
        expiry = GaugeMetricFamily(
            "signet_ca_certificate_expiry_timestamp_seconds",
            "When each certificate the CA itself uses expires, by role; the roots and "
            "intermediates by serial and state (active, or retiring in a rollover)",
            labels=["role", "serial", "state"],
        )
        hierarchy = ca.hierarchy
        for role, entries in (
            ("root", hierarchy.roots),
            ("intermediate", hierarchy.intermediates),
            ("cross", hierarchy.crosses),
        ):
            for e in entries:
                when = e.certificate.not_valid_after_utc.timestamp()
                expiry.add_metric([role, e.serial, e.record.state], when)
        serving = self._serving.current.certificate
        expiry.add_metric(
            ["serving", serial_hex(serving.serial_number), "active"],
            serving.not_valid_after_utc.timestamp(),
        )
        responder = ca.responder.signer_certificate()
        if responder is not None:
            expiry.add_metric(
                ["ocsp_responder", serial_hex(responder.serial_number), "active"],
                responder.not_valid_after_utc.timestamp(),
            )
        yield expiry
        crl = ca.crls.ready() or ca.crls.follow()  # the newest, even while a build is due
        if crl is not None:
            yield GaugeMetricFamily("signet_crl_number", "Number of the current CRL", crl.number)
            yield GaugeMetricFamily(
                "signet_crl_bytes", "Size of the current CRL (DER)", len(crl.der)
            )
            yield GaugeMetricFamily(
                "signet_crl_entries", "Revoked certificates on the current CRL", self._entries(crl)
            )
            yield GaugeMetricFamily(
                "signet_crl_age_seconds",
                "Seconds since the current CRL's thisUpdate",
                max(0.0, time.time() - crl.this_update.timestamp()),
            )
        now = ca.clock.now()
        live, soon = ca.store.count_live(now, 24 * 3600)
        yield GaugeMetricFamily(
            "signet_certificates_live", "Unrevoked, unexpired certificates", live
        )
        yield GaugeMetricFamily(
            "signet_certificates_expiring_24h",
            "Unrevoked certificates that expire within 24 hours",
            soon,
        )


def exposition(state: CaState | None) -> bytes:
    """The text of GET /metrics: every worker's counters, and the CA's state."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    instruments().flush()  # this process's batched counts; other workers' within FLUSH_EVERY
    if multiprocess():
        counters = CollectorRegistry()
        MultiProcessCollector(counters)  # type: ignore[no-untyped-call]
    else:
        counters = instruments().registry
    text = generate_latest(counters)
    if state is not None:
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(state)
        text += generate_latest(gauges)
    return text
