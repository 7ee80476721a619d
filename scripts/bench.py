"""The benchmark that tells the truth: Signet measured end to end on this machine, in one run.

    python scripts/bench.py                 # full run (~3-4 min): table, JSON, PNG
    python scripts/bench.py --quick         # 1 s per row, no sustain, no cfssl: a smoke run
    python scripts/bench.py --sustain 60 --write-docs   # what docs/performance.md shows
    python scripts/bench.py --store auto    # and replicas on a throwaway PostgreSQL cluster
    python scripts/bench.py --ml-dsa        # and the ML-DSA-65 chain's sign and status rows

It starts a real `ca-server serve --workers N` on a fresh data directory (127.0.0.1 only) and
loads it from P client processes with one load driver for every gRPC row, then with wrk over
HTTP; builds CRLs with the code the server runs; runs cfssl beside it when cfssl and wrk are
installed; and checks the floors. With --store (a postgresql:// URL, or auto for a throwaway
cluster) it then runs the SignCertificate and GetCertificateStatus rows again against one and
two CA replicas sharing a fresh PostgreSQL database, beside the SQLite node's figures. Every
loop is bounded in count and in time. Figures are
comparable only within one run: the load generator shares the machine's cores with the server,
and its own CPU per call is reported so the reader can see how much it took.

Exit status: 0 when the report was produced (even with failed floors), 1 when setup failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.util
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bench_docs
from bench_cfssl import SIGNED_FOR_OCSP, CfsslResults, have_cfssl, run_cfssl
from bench_http import WrkResult, have_wrk, ocsp_get_path, ocsp_request_der, post_script, run_wrk
from bench_load import REPO, ClientPool, RowSpec, SetupError, Window, percentile
from bench_proc import (
    load_average,
    machine,
    machine_busy_seconds,
    tree_cpu_seconds,
    tree_rss_bytes,
)
from bench_report import (
    RSS_FLAT,
    Row,
    cfssl_ratios,
    find,
    floors,
    floors_table,
    plot,
    replica_floor,
    rows_table,
    write_json,
)
from bench_server import Admin, Server, start_server

sys.path.insert(0, str(REPO))  # ca_server, signet and tests.pki, from this checkout

SIGN_POOL_RATE = 4000  # CSRs made per second of a sign/renew row; a faster server exhausts it
RSS_EVERY = 5.0  # seconds between RSS samples in the sustain phase
CRL_SIZES = (1_000, 10_000, 100_000)


# --- sampling the server around a window ----------------------------------------------------


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@dataclass
class Sampler:
    """Reads the server's CPU and the machine's (and optionally RSS every few seconds) during a
    window. `also`: more server processes (other replicas), whose trees' CPU is added to the
    server's; `postgres`: the postmaster whose tree's CPU is PostgreSQL's, read separately."""

    pid: int
    rss_every: float = 0.0
    also: tuple[int, ...] = ()
    postgres: int | None = None
    cpu_seconds: float = 0.0
    postgres_seconds: float = 0.0
    machine_seconds: float = 0.0
    rss: list[tuple[float, int]] = field(default_factory=list)

    def _server_cpu(self) -> float:
        return sum(tree_cpu_seconds(pid) for pid in (self.pid, *self.also))

    def _postgres_cpu(self) -> float:
        return tree_cpu_seconds(self.postgres, reaped=True) if self.postgres else 0.0

    def __call__(self, t_measure: float, t_end: float) -> None:
        _sleep_until(t_measure)
        cpu, pg, busy = self._server_cpu(), self._postgres_cpu(), machine_busy_seconds()
        if self.rss_every:
            ticks = int((t_end - t_measure) // self.rss_every)
            for k in range(ticks + 1):
                _sleep_until(t_measure + k * self.rss_every)
                self.rss.append((time.monotonic() - t_measure, tree_rss_bytes(self.pid)))
        _sleep_until(t_end)
        self.cpu_seconds = self._server_cpu() - cpu
        self.postgres_seconds = self._postgres_cpu() - pg
        self.machine_seconds = machine_busy_seconds() - busy


# --- gRPC rows --------------------------------------------------------------------------------


@dataclass
class Load:
    """How hard every gRPC row pushes (the same for all of them)."""

    processes: int
    connections: int
    inflight: int
    warmup: float
    seconds: float
    max_calls: int
    driver: str = "futures"


def _row_from(name: str, window: Window, seconds: float, sampler: Sampler) -> Row:
    latencies = sorted(x for r in window.results for x in r.latencies)
    errors = sum(r.errors for r in window.results)
    calls = len(latencies)
    first_error = next((r.first_error for r in window.results if r.first_error), "")
    note = (
        "ran out of pre-made requests: the rate is a lower bound"
        if any(r.exhausted for r in window.results)
        else ""
    )
    per_call = 1e6 / max(1, calls)
    client_cpu = sum(r.cpu_seconds for r in window.results)
    measured = sampler.cpu_seconds + sampler.postgres_seconds + client_cpu
    return Row(
        name=name,
        group="grpc",
        rps=calls / seconds,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        errors=errors,
        server_cpu_us=sampler.cpu_seconds * per_call,
        client_cpu_us=client_cpu * per_call,
        calls=calls,
        first_error=first_error,
        note=note,
        other_cores=(sampler.machine_seconds - measured) / seconds,
        per_second=[sum(s) for s in zip(*(r.per_second for r in window.results), strict=True)],
        postgres_cpu_us=sampler.postgres_seconds * per_call if sampler.postgres else None,
    )


def grpc_row(
    pool: ClientPool,
    server: Server,
    load: Load,
    name: str,
    base: RowSpec,
    per_process: Callable[[int], dict[str, Any]] | None = None,
    seconds: float | None = None,
    sampler: Sampler | None = None,
) -> Row:
    """Run one row on every client process; `per_process(p)` gives fields that differ."""
    seconds = seconds or load.seconds
    specs = [
        replace(base, index=p, processes=pool.size, **(per_process(p) if per_process else {}))
        for p in range(pool.size)
    ]
    sampler = sampler or Sampler(server.pid)
    window = pool.run(specs, load.warmup, seconds, sampler)
    row = _row_from(name, window, seconds, sampler)
    print(
        f"  {name:<40} {row.rps:10,.0f}/s  p99 {row.p99_ms:8.2f} ms  errors {row.errors}"
        f"  (prepared in {window.prepare_seconds:.1f} s)",
        flush=True,
    )
    return row


def base_spec(
    server: Server, load: Load, kind: str, calls: int | None = None, **fields: Any
) -> RowSpec:
    """The spec every process of a row shares; `calls` bounds each process (default: its share
    of --max-calls) and is the size of its pool of pre-made requests."""
    return RowSpec(
        kind=kind,
        data_dir=str(server.data),
        api=server.listen,
        bootstrap=server.bootstrap,
        connections=load.connections,
        inflight=load.inflight,
        driver=load.driver,
        max_calls=calls or max(1, load.max_calls // load.processes),
        **fields,
    )


def pool_size(load: Load, rate: float, seconds: float) -> int:
    """Per-process count of pre-made requests for `rate` calls/s over warm-up + seconds."""
    total = math.ceil(rate * (load.warmup + seconds) * 1.1) + 64
    return max(1, min(load.max_calls, total) // load.processes)


def choose_driver(
    pool: ClientPool, server: Server, load: Load, seconds: float, rounds: int
) -> dict[str, Any]:
    """Health/Check with each driver, alternating (A B, B A, ...) so drift in the machine's
    load hits both alike; keep the one that costs the client less CPU per call on average."""
    short = replace(load, seconds=seconds, warmup=min(load.warmup, 0.5))
    samples: dict[str, list[Row]] = {"futures": [], "threads": []}
    for n in range(rounds):
        for driver in ("futures", "threads") if n % 2 == 0 else ("threads", "futures"):
            spec = base_spec(server, replace(short, driver=driver), "health")
            row = grpc_row(pool, server, short, f"calibrate: Health/Check, {driver}", spec)
            if row.errors:
                raise SetupError(f"Health/Check failed while calibrating: {row.first_error}")
            samples[driver].append(row)
    costs = {
        d: {
            "rps": statistics.mean(r.rps for r in rows),
            "client_cpu_us": statistics.mean(r.client_cpu_us for r in rows),
            "rounds": len(rows),
        }
        for d, rows in samples.items()
    }
    chosen = min(costs, key=lambda d: costs[d]["client_cpu_us"])
    print(
        f"  driver: {chosen} (client CPU per call, mean of {rounds}: futures "
        f"{costs['futures']['client_cpu_us']:.0f} µs, threads "
        f"{costs['threads']['client_cpu_us']:.0f} µs)",
        flush=True,
    )
    return {"chosen": chosen, "measured": costs}


def grpc_rows(
    pool: ClientPool, server: Server, load: Load, admin: Admin, serial: str
) -> tuple[list[Row], dict[str, Any]]:
    rows = [
        grpc_row(pool, server, load, "gRPC Health/Check (floor)", base_spec(server, load, "health"))
    ]
    csrs = pool_size(load, SIGN_POOL_RATE, load.seconds)
    rows.append(
        grpc_row(pool, server, load, "gRPC SignCertificate", base_spec(server, load, "sign", csrs))
    )
    rows.append(
        grpc_row(
            pool, server, load, "gRPC RenewCertificate", base_spec(server, load, "renew", csrs)
        )
    )
    rows.append(
        grpc_row(
            pool,
            server,
            load,
            "gRPC GetCertificateStatus",
            base_spec(server, load, "status", serial=serial),
        )
    )
    rows.append(grpc_row(pool, server, load, "gRPC GetCRL", base_spec(server, load, "crl")))
    fresh = grpc_row(
        pool,
        server,
        load,
        "fresh mTLS connection + Health/Check",
        base_spec(server, load, "fresh_health"),
    )
    rows.append(fresh)
    # Enough tokens for 1.5x the fresh-connection rate: Enroll does that handshake and more.
    count = min(load.max_calls, math.ceil(max(fresh.rps, 50) * (load.warmup + load.seconds) * 1.5))
    began = time.monotonic()
    tokens = admin.mint_tokens(count)
    minted = {"tokens": count, "seconds": time.monotonic() - began}
    print(f"  minted {count} bootstrap tokens in {minted['seconds']:.1f} s", flush=True)
    rows.append(
        grpc_row(
            pool,
            server,
            load,
            "Enroll, fresh TLS connection per call",
            base_spec(server, load, "enroll"),
            lambda p: {"tokens": tuple(tokens[p :: pool.size])},
        )
    )
    health = rows[0].rps
    for row in rows:
        row.vs_health = row.rps / health if health else None
    return rows, minted


# --- replicas on PostgreSQL -------------------------------------------------------------------


def replica_pair(
    pool: ClientPool, servers: list[Server], load: Load, label: str, postmaster: int | None
) -> tuple[Row, Row]:
    """SignCertificate and GetCertificateStatus with the same driver, P, C and K as the SQLite
    rows; with several replicas each process's K connections are spread evenly over their API
    addresses, and the server CPU is summed over every replica's process tree."""
    first = servers[0]
    admin = Admin(first)
    try:
        known = admin.sign("bench/known")
    finally:
        admin.close()
    apis = tuple(s.listen for s in servers) if len(servers) > 1 else ()
    others = tuple(s.pid for s in servers[1:])
    csrs = pool_size(load, SIGN_POOL_RATE, load.seconds)
    rows = []
    for name, spec in (
        ("gRPC SignCertificate", base_spec(first, load, "sign", csrs, apis=apis)),
        (
            "gRPC GetCertificateStatus",
            base_spec(first, load, "status", serial=known.serial_number, apis=apis),
        ),
    ):
        sampler = Sampler(first.pid, also=others, postgres=postmaster)
        row = grpc_row(pool, first, load, f"{label}: {name}", spec, sampler=sampler)
        row.group = "postgres"
        rows.append(row)
    return rows[0], rows[1]


def replica_rows(
    pool: ClientPool, load: Load, args: argparse.Namespace, tmp: Path, rows: list[Row]
) -> dict[str, Any]:
    """One replica, then two, each on a fresh database of the --store server (dropped after),
    beside the SQLite node's SignCertificate and GetCertificateStatus rows of this run."""
    from bench_pg import postgres, replicas

    began = time.monotonic()
    workers = args.replica_workers or args.workers
    configs: list[dict[str, Any]] = [
        {
            "name": f"SQLite, 1 node (--workers {args.workers})",
            "store": "sqlite",
            "replicas": 1,
            "workers": args.workers,
            "sign": find(rows, "gRPC SignCertificate"),
            "status": find(rows, "gRPC GetCertificateStatus"),
        }
    ]
    pg_rows: list[Row] = []
    commands: list[list[str]] = []
    with postgres(args.store) as pg:
        print(f"replicas on PostgreSQL {pg.version}: {pg.description}", flush=True)
        for count in (1, 2):
            label = "1 replica" if count == 1 else f"{count} replicas"
            base = tmp / f"pg-{count}"
            print(f"starting {label} (--workers {workers} each) on a fresh database", flush=True)
            with pg.database(f"{count}r") as url, replicas(base, url, count, workers) as servers:
                sign, status = replica_pair(
                    pool, servers, load, f"PostgreSQL {label}", pg.postmaster
                )
                commands = [s.command for s in servers]
            pg_rows += [sign, status]
            each = " each" if count > 1 else ""
            configs.append(
                {
                    "name": f"PostgreSQL, {label} (--workers {workers}{each})",
                    "store": "postgresql",
                    "replicas": count,
                    "workers": workers,
                    "sign": sign,
                    "status": status,
                }
            )
        measured = pg.postmaster is not None
        description, version = pg.description, pg.version
    return {
        "store": description,
        "postgres_version": version,
        "postgres_cpu_measured": measured,
        "workers_per_replica": workers,
        "server_commands": [
            ["DIR" if part.endswith("ca-data") else part for part in c] for c in commands
        ],
        "configs": configs,
        "rows": pg_rows,
        "floor": replica_floor(configs),
        "seconds": time.monotonic() - began,
    }


# --- the post-quantum chain -------------------------------------------------------------------


def ml_dsa_rows(pool: ClientPool, load: Load, args: argparse.Namespace, tmp: Path) -> list[Row]:
    """SignCertificate and GetCertificateStatus, with the same driver, P, C and K, against a
    second server whose data directory was initialised with --key-type ml-dsa-65 (an ML-DSA-65
    root and intermediate signing EC P-256 leaves and the OCSP responder): what a post-quantum
    chain costs beside the ECDSA rows of this run. Started after the first server stopped."""
    data, logs = tmp / "ml-dsa" / "ca-data", tmp / "ml-dsa"
    logs.mkdir()
    print(f"starting ca-server (--workers {args.workers}) initialised with ml-dsa-65", flush=True)
    server = start_server(data, logs, args.workers, {"SIGNET_KEY_TYPE": "ml-dsa-65"})
    try:
        admin = Admin(server)
        try:
            known = admin.sign("bench/known")
        finally:
            admin.close()
        csrs = pool_size(load, SIGN_POOL_RATE, load.seconds)
        rows = []
        for name, spec in (
            ("gRPC SignCertificate", base_spec(server, load, "sign", csrs)),
            (
                "gRPC GetCertificateStatus",
                base_spec(server, load, "status", serial=known.serial_number),
            ),
        ):
            row = grpc_row(pool, server, load, f"ML-DSA-65 chain: {name}", spec)
            row.group = "ml-dsa"
            rows.append(row)
    finally:
        server.stop()
    return rows


# --- HTTP rows --------------------------------------------------------------------------------


def _http_get(address: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        method = "POST" if body is not None else "GET"
        headers = {"Content-Type": "application/ocsp-request"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _check_ocsp(address: str, path: str, body: bytes | None) -> None:
    from cryptography.x509 import ocsp

    status, reply = _http_get(address, path, body)
    if status != 200:
        raise SetupError(f"Signet OCSP at {path[:40]}... answered HTTP {status}")
    response = ocsp.load_der_ocsp_response(reply)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise SetupError(f"Signet OCSP answered {response.response_status}")
    if response.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise SetupError(f"Signet OCSP says {response.certificate_status} for a fresh certificate")


def wrk_row(name: str, group: str, result: WrkResult, note: str = "") -> Row:
    return Row(
        name=name,
        group=group,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        server_cpu_us=result.server_cpu_us,
        client_cpu_us=result.client_cpu_us,
        calls=result.requests,
        first_error=f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors"
        if result.errors
        else "",
        note=note,
        other_cores=result.other_cores,
    )


def http_rows(server: Server, leaf_pem: str, seconds: float, workdir: Path) -> list[Row]:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    issuer = x509.load_pem_x509_certificate((server.data / "intermediate.pem").read_bytes())
    request = ocsp_request_der(leaf, issuer)
    get_path = "/ocsp/" + ocsp_get_path(request)
    _check_ocsp(server.http, get_path, None)
    _check_ocsp(server.http, "/ocsp", request)
    status, crl = _http_get(server.http, "/crl")
    if status != 200:
        raise SetupError(f"Signet GET /crl answered HTTP {status}")
    crl_note = f"the CRL served is {len(crl):,} bytes (nothing revoked)"
    base = f"http://{server.http}"
    lua = post_script(workdir / "signet-ocsp.lua", request, "application/ocsp-request")
    rows = []
    for name, url, script, note in (
        ("HTTP OCSP GET, pre-signed (wrk)", base + get_path, None, ""),
        ("HTTP OCSP POST, pre-signed (wrk)", base + "/ocsp", lua, ""),
        ("HTTP GET /crl (wrk)", base + "/crl", None, crl_note),
    ):
        row = wrk_row(name, "http", run_wrk(url, seconds, server.pid, script), note)
        print(
            f"  {name:<40} {row.rps:10,.0f}/s  p99 {row.p99_ms:8.2f} ms  errors {row.errors}",
            flush=True,
        )
        rows.append(row)
    return rows


# --- sustain ----------------------------------------------------------------------------------


def sustain(
    pool: ClientPool, server: Server, load: Load, peak: float, seconds: float
) -> dict[str, Any]:
    """SignCertificate at 80% of the measured peak for `seconds`, sampling the server's RSS."""
    rate = max(1.0, 0.8 * peak)
    per_process = rate / load.processes
    count = math.ceil(per_process * (load.warmup + seconds)) + 16
    spec = base_spec(server, load, "sign", count, rate=per_process, id_offset=10_000_000)
    sampler = Sampler(server.pid, rss_every=RSS_EVERY)
    row = grpc_row(
        pool,
        server,
        load,
        f"sustain: SignCertificate at {rate:,.0f}/s",
        spec,
        seconds=seconds,
        sampler=sampler,
    )
    samples = sampler.rss
    # Caches fill during the first seconds; judge flatness from 10 s in when the run is long.
    base_at = next((i for i, (t, _) in enumerate(samples) if t >= 10.0), 0) if seconds >= 20 else 0
    first, last = samples[base_at][1], samples[-1][1]
    growth = (last - first) / first if first else 0.0
    every = int(RSS_EVERY)
    rates = [
        sum(row.per_second[i : i + every]) / every for i in range(0, len(row.per_second), every)
    ]
    return {
        "target_rps": rate,
        "seconds": seconds,
        "row": row,
        "rps_every_5s": rates,
        "rss_samples": [{"t": round(t, 1), "rss_mb": round(b / 2**20, 1)} for t, b in samples],
        "rss_baseline_t": round(samples[base_at][0], 1),
        "rss_growth": growth,
        "rss_flat": abs(growth) <= RSS_FLAT,
    }


# --- CRL builds -------------------------------------------------------------------------------


def issuance_cost(calls: int = 1000, repeats: int = 3) -> dict[str, float]:
    """CPU µs per certificate of the issuance's own work, in this process on one thread, with
    the code the server runs: the CSR parsed and its proof of possession verified
    (parse_csr), the leaf built and signed (build_leaf), DER, fingerprint and PEM. With the
    transport (the health row's server CPU per call) it bounds what SignCertificate can cost
    below; median of `repeats`."""
    from cryptography.hazmat.primitives import serialization

    from ca_server.core.csr import parse_csr
    from ca_server.core.keys import generate_key
    from ca_server.core.profile import (
        Issuer,
        LeafRequest,
        PublicUrls,
        build_intermediate,
        build_leaf,
        build_root,
        ca_name,
        fingerprint_sha256,
        pem,
        random_serial,
    )
    from tests.pki import make_csr, spiffe

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    root_key, key = generate_key("ec-p256"), generate_key("ec-p256")
    root = build_root(root_key, ca_name("bench", "root"), now, now + dt.timedelta(days=9))
    inter = build_intermediate(
        Issuer(root, root_key, ()), key.public_key(), ca_name("bench", "i"), now,
        now + dt.timedelta(days=9),
    )  # fmt: skip
    issuer, urls = Issuer(inter, key, (inter,)), PublicUrls("http://127.0.0.1:8080")
    csr = make_csr(uris=[spiffe("bench/cost")], dns=["cost.bench.internal"])[1]

    def leaf() -> Any:
        parsed = parse_csr(csr)
        return build_leaf(
            issuer,
            LeafRequest(
                public_key=parsed.public_key, identity=parsed.uris[0],
                dns_names=parsed.dns_names, ip_addresses=(), common_name=None,
                not_before=now, not_after=now + dt.timedelta(hours=24), serial=random_serial(),
            ),
            urls,
        )  # fmt: skip

    def issue() -> None:
        cert = leaf()
        cert.public_bytes(serialization.Encoding.DER)
        fingerprint_sha256(cert)
        pem(cert)

    def per_call(fn: Callable[[], object]) -> float:
        fn()
        runs = []
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(calls):
                fn()
            runs.append((time.process_time() - start) / calls * 1e6)
        return statistics.median(runs)

    return {"issue_us": per_call(issue), "parse_csr_us": per_call(lambda: parse_csr(csr))}


def crl_builds(repeats: int) -> list[dict[str, Any]]:
    """build_crl (what the server's publisher runs) at 1k/10k/100k entries: a cold build (a
    fresh process, every entry encoded) and a rebuild after one more revocation (what a
    revocation costs a running server: entries already encoded are reused), median of
    `repeats`; plus 100k without reason codes, the shape cfssl gencrl makes."""
    from ca_server.core import crl as crl_module
    from ca_server.core.keys import generate_key
    from ca_server.core.profile import Issuer, build_root, ca_name, random_serial
    from ca_server.core.revocation import Reason, RevokedEntry

    key = generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    root = build_root(key, ca_name("bench", "bench"), now, now + dt.timedelta(days=1))
    issuer = Issuer(root, key, ())
    cases = [(n, True) for n in CRL_SIZES] + [(CRL_SIZES[-1], False)]

    def build(entries: list[Any]) -> tuple[float, int]:
        start = time.perf_counter()
        size = len(crl_module.build_crl(issuer, entries, 1, now, now + dt.timedelta(hours=24)))
        return time.perf_counter() - start, size

    out = []
    for n, reasons in cases:
        entries = [
            RevokedEntry(random_serial(), now, Reason(i % 6) if reasons else Reason.UNSPECIFIED)
            for i in range(n)
        ]
        cold, rebuilt, size = [], [], 0
        for _ in range(repeats):
            crl_module._revoked.cache_clear()
            seconds, size = build(entries)
            cold.append(seconds)
            entries.append(RevokedEntry(random_serial(), now, Reason.KEY_COMPROMISE))
            rebuilt.append(build(entries)[0])
        out.append(
            {
                "entries": n,
                "reason_codes": reasons,
                "seconds": statistics.median(cold),
                "rebuild_seconds": statistics.median(rebuilt),
                "bytes": size,
                "repeats": repeats,
            }
        )
        print(
            f"  CRL {n:>7,} entries{'' if reasons else ', no reasons'}: cold "
            f"{statistics.median(cold):.3f} s, rebuilt after one more revocation "
            f"{statistics.median(rebuilt):.3f} s, {size / 1e6:.2f} MB",
            flush=True,
        )
    crl_module._revoked.cache_clear()
    return out


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per row")
    p.add_argument("--warmup", type=float, default=1.0, help="untimed load before each window")
    p.add_argument("--workers", type=int, default=2, help="passed to ca-server serve --workers")
    p.add_argument("--processes", type=int, default=2, help="client processes (P)")
    p.add_argument("--inflight", type=int, default=16, help="calls in flight per process (C)")
    p.add_argument("--connections", type=int, default=8, help="mTLS connections per process (K)")
    p.add_argument(
        "--driver",
        choices=["auto", "futures", "threads"],
        default="auto",
        help="auto: measure both on Health/Check, keep the cheaper one for the client",
    )
    p.add_argument("--max-calls", type=int, default=60_000, help="upper bound of calls per row")
    p.add_argument(
        "--sustain",
        type=float,
        default=0.0,
        help="seconds of SignCertificate at 80%% of peak after the rows (docs use 60)",
    )
    p.add_argument("--quick", action="store_true", help="1 s per row, no sustain, no cfssl")
    p.add_argument("--no-cfssl", action="store_true", help="skip the cfssl comparison")
    p.add_argument("--json-out", type=Path, default=Path("bench-results.json"))
    p.add_argument("--png-out", type=Path, default=REPO / "docs" / "performance.png")
    p.add_argument("--write-docs", action="store_true", help="regenerate docs/performance.md")
    p.add_argument(
        "--store",
        help="also measure 1 and 2 CA replicas on PostgreSQL: a postgresql:// URL of a server "
        "where the bench may CREATE DATABASE (a fresh signet_bench_* per configuration, dropped "
        "after), or 'auto' for a throwaway local cluster (started and deleted by the bench)",
    )
    p.add_argument(
        "--ml-dsa",
        action="store_true",
        help="also run SignCertificate and GetCertificateStatus against a second server "
        "initialised with --key-type ml-dsa-65 (adds two rows, about 2 x (--warmup + --seconds))",
    )
    p.add_argument(
        "--replica-workers",
        type=int,
        help="ca-server serve --workers for each PostgreSQL replica (default: --workers)",
    )
    args = p.parse_args(argv)
    if args.store and not (
        args.store == "auto" or args.store.startswith(("postgresql://", "postgres://"))
    ):
        p.error("--store takes 'auto' or a postgresql:// URL")
    if args.quick:
        args.seconds, args.warmup, args.sustain, args.no_cfssl = 1.0, 0.3, 0.0, True
    return args


def background(seconds: float = 1.0) -> dict[str, float]:
    """How busy the machine is before the bench starts anything: other people's work competes
    with the server and the clients, and the reader should know."""
    busy = machine_busy_seconds()
    time.sleep(seconds)
    cores = (machine_busy_seconds() - busy) / seconds
    print(f"machine before start: {cores:.2f} cores busy, load average {load_average():.2f}")
    return {"busy_cores": cores, "load_average": load_average()}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load = Load(
        args.processes, args.connections, args.inflight, args.warmup, args.seconds, args.max_calls
    )
    results: dict[str, Any] = {"background": background()}
    print(f"starting ca-server (--workers {args.workers}) on a fresh data directory", flush=True)
    server = start_server(tmp / "ca-data", tmp, args.workers)
    pool = ClientPool(args.processes)  # spawned before this process makes any gRPC object
    try:
        rows = sqlite_node(pool, server, load, args, tmp, results)
        if args.ml_dsa:
            for row in ml_dsa_rows(pool, load, args, tmp):
                ecdsa = find(rows, row.name.removeprefix("ML-DSA-65 chain: "))
                if ecdsa.rps:
                    row.note = f"{row.rps / ecdsa.rps:.2f}x the rate of the ECDSA P-256 chain's row"
                rows.append(row)
        if args.store:
            results["replicas"] = replica_rows(pool, load, args, tmp, rows)
    finally:
        pool.close()
    shown = ["DIR" if part == str(server.data) else part for part in server.command]
    results.update(rows=rows, server_command=shown, server_note=server.note, load=load)
    print("CRL builds (ca_server.core.crl.build_crl)", flush=True)
    results["crl"] = crl_builds(1 if args.quick else 3)
    print("issuance's own CPU (parse_csr + build_leaf + DER/PEM, one thread)", flush=True)
    results["issuance_cost"] = issuance_cost(200 if args.quick else 1000)
    results["cfssl"] = None
    if args.no_cfssl:
        results["cfssl_note"] = "skipped (--quick or --no-cfssl)"
    elif not (have_cfssl() and have_wrk()):
        results["cfssl_note"] = "skipped: cfssl or wrk is not on PATH"
    else:
        print("cfssl beside it", flush=True)
        from tests.pki import make_csr, spiffe

        csrs = [
            make_csr(uris=[spiffe(f"bench/cfssl/{n}")], cn="bench.internal")[1]
            for n in range(SIGNED_FOR_OCSP + 1)
        ]
        results["cfssl"] = run_cfssl(tmp / "cfssl", csrs, args.seconds, CRL_SIZES[-1])
        results["cfssl_ratios"] = cfssl_ratios(rows, results["cfssl"], results["crl"])
    results["floors"] = floors(
        rows, results["crl"], results.get("sustain"), results.get("replicas")
    )
    return results


def sqlite_node(
    pool: ClientPool,
    server: Server,
    load: Load,
    args: argparse.Namespace,
    tmp: Path,
    results: dict[str, Any],
) -> list[Row]:
    """Every row against the single node on SQLite (stopped at the end)."""
    try:
        admin = Admin(server)
        known = admin.sign("bench/known")
        print(
            f"gRPC rows: {args.processes} processes x {args.inflight} in flight over "
            f"{args.connections} connections each",
            flush=True,
        )
        if args.driver == "auto":
            quick = args.quick
            results["driver"] = choose_driver(
                pool, server, load, 0.5 if quick else 1.5, 1 if quick else 2
            )
            load.driver = results["driver"]["chosen"]
        else:
            load.driver = args.driver
            results["driver"] = {"chosen": args.driver, "measured": {}}
        rows, results["tokens"] = grpc_rows(pool, server, load, admin, known.serial_number)
        admin.close()
        if have_wrk():
            print("HTTP rows (wrk -t2 -c64)", flush=True)
            rows += http_rows(server, known.certificate_pem, args.seconds, tmp)
        else:
            raise SetupError("wrk is not on PATH: the HTTP rows and floors need it")
        sign_peak = find(rows, "gRPC SignCertificate").rps
        if args.sustain > 0:
            results["sustain"] = sustain(pool, server, load, sign_peak, args.sustain)
    finally:
        server.stop()
    return rows


def report(args: argparse.Namespace, results: dict[str, Any], command: str) -> None:
    rows: list[Row] = results["rows"]
    cf: CfsslResults | None = results["cfssl"]
    beside: dict[str, Row] = {}
    if cf is not None:
        cf_sign = wrk_row("cfssl POST /api/v1/cfssl/sign (wrk)", "cfssl", cf.sign)
        cf_ocsp = wrk_row(f"cfssl ocspserve {cf.ocsp_method}, pre-signed (wrk)", "cfssl", cf.ocsp)
        beside = {
            "gRPC SignCertificate": cf_sign,
            f"HTTP OCSP {cf.ocsp_method}, pre-signed (wrk)": cf_ocsp,
        }
        results["cfssl_rows"] = [cf_sign, cf_ocsp]
    print()
    print(rows_table(bench_docs.table_rows(results)))
    print(bench_docs.summary_text(results))
    if results.get("replicas"):
        print()
        print(bench_docs.replica_text(results["replicas"]))
    print()
    print(floors_table(results["floors"]))
    results["machine"] = machine()
    results["command"] = command
    results["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(args.json_out, results)
    print(f"\nwrote {args.json_out}")
    signet_rows = [r for r in rows if r.group in ("grpc", "http")]
    title = (
        f"Signet ({results['machine']['nproc']} cores, {results['machine']['cpu_model']}), "
        f"{results['when']}; cfssl beside where it does the same job"
    )
    plot(args.png_out, signet_rows, beside, title)
    print(f"wrote {args.png_out}")
    if args.write_docs:
        path = REPO / "docs" / "performance.md"
        path.write_text(bench_docs.page(results, args.png_out, path.parent))
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    import grpc

    args = parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        print("bench: matplotlib is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    from bench_pg import redacted

    given = sys.argv[1:] if argv is None else argv
    shown = [redacted(a) if a.startswith(("postgresql://", "postgres://")) else a for a in given]
    shown = [
        "--store=" + redacted(a[8:]) if a.startswith("--store=") else a for a in shown
    ]  # a password in --store goes no further than this process
    command = "python " + shlex.join(["scripts/bench.py", *shown])
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="signet-bench-") as tmp:
            results = run(args, Path(tmp))
    except (SetupError, subprocess.SubprocessError, OSError, grpc.RpcError) as exc:
        print(f"bench: setup failed: {exc}", file=sys.stderr)
        return 1
    results["wall_seconds"] = time.monotonic() - began
    report(args, results, command)
    print(f"total {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
