"""The words around the numbers: the summary printed after the table, and
docs/performance.md (regenerated whole by `bench.py --write-docs`; edit this file, not that)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench_cfssl import CRL_REPEATS
from bench_report import Row, floors_table, markdown_table, replica_table, rows_table

BUSY_CORES = 0.25  # other programs' CPU during a window above which the row is flagged


def table_rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the table: the peak rows, the sustained one, cfssl's."""
    sustained = [results["sustain"]["row"]] if results.get("sustain") else []
    return [*results["rows"], *sustained, *results.get("cfssl_rows", [])]


def _named(results: dict[str, Any], name: str) -> Row | None:
    return next((r for r in results["rows"] if r.name == name), None)


def _load_share(row: Row) -> str:
    total = row.client_cpu_us + row.server_cpu_us
    return f"{row.client_cpu_us / total:.0%}" if total else "-"


def summary_lines(results: dict[str, Any]) -> list[str]:
    out = []
    for row in table_rows(results):
        if row.first_error:
            out.append(f"first error, {row.name}: {row.first_error}")
        if row.note:
            out.append(f"note, {row.name}: {row.note}")
    bg = results.get("background")
    if bg:
        out.append(
            f"machine before the run: {bg['busy_cores']:.2f} cores busy, "
            f"load average {bg['load_average']:.2f}"
        )
    busy = [r.name for r in table_rows(results) if (r.other_cores or 0) > BUSY_CORES]
    if busy:
        out.append(
            f"WARNING: other programs used more than {BUSY_CORES} cores during: "
            + "; ".join(busy)
            + " (see 'other cores')"
        )
    if results.get("server_note"):
        out.append(f"note: {results['server_note']}")
    load = results["load"]
    driver = results["driver"]
    measured = driver.get("measured") or {}
    costs = ", ".join(f"{d} {m['client_cpu_us']:.0f} µs" for d, m in measured.items())
    out.append(
        f"load driver: {driver['chosen']} ({load.processes} processes x {load.inflight} in flight "
        f"over {load.connections} connections each)"
        + (f"; client CPU per call {costs}" if costs else "")
    )
    fresh = _named(results, "fresh mTLS connection + Health/Check")
    enroll = _named(results, "Enroll, fresh TLS connection per call")
    if fresh and enroll and fresh.rps:
        out.append(f"enroll / fresh mTLS connection + Check: {enroll.rps / fresh.rps:.2f}")
    tokens = results.get("tokens")
    if tokens:
        out.append(
            f"bootstrap tokens minted before the Enroll row: {tokens['tokens']} "
            f"in {tokens['seconds']:.1f} s"
        )
    for name in (
        "gRPC Health/Check (floor)",
        "gRPC SignCertificate",
        "HTTP OCSP GET, pre-signed (wrk)",
    ):
        row = _named(results, name)
        if row:
            out.append(
                f"load generator's share of the CPU, {name}: {_load_share(row)} "
                f"({row.client_cpu_us:,.0f} µs client vs {row.server_cpu_us:,.0f} µs server"
                " per call)"
            )
    for c in results["crl"]:
        shape = "" if c["reason_codes"] else ", no reason codes"
        out.append(
            f"CRL {c['entries']:,} entries{shape}: cold build {c['seconds']:.3f} s, rebuilt "
            f"after one more revocation {c['rebuild_seconds']:.3f} s "
            f"(median of {c['repeats']}), {c['bytes'] / 1e6:.2f} MB DER"
        )
    cost = results.get("issuance_cost")
    health = _named(results, "gRPC Health/Check (floor)")
    if cost and health:
        bound = cost["issue_us"] + health.server_cpu_us
        out.append(
            f"issuance's own CPU, in process on one thread: {cost['issue_us']:,.0f} µs per "
            f"certificate (of which parse_csr, the proof-of-possession check included, "
            f"{cost['parse_csr_us']:,.0f} µs); with the transport (health's server CPU per call, "
            f"{health.server_cpu_us:,.0f} µs) a SignCertificate cannot cost the server less than "
            f"{bound:,.0f} µs, before the store write, the caller check and the log line"
        )
    out += _cfssl_lines(results)
    out += _sustain_lines(results)
    return out


def _sig(value: float) -> str:
    """Three significant figures, without an exponent."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _cfssl_lines(results: dict[str, Any]) -> list[str]:
    cf = results.get("cfssl")
    if cf is None:
        return [f"cfssl: {results.get('cfssl_note', 'skipped')}"]
    out = [
        f"cfssl {cf.version}: gencrl {cf.crl_entries:,} serials in {cf.crl_seconds:.3f} s "
        f"(median of {CRL_REPEATS}, whole command), {cf.crl_bytes / 1e6:.2f} MB DER; "
        f"its OCSP GET answered HTTP {cf.ocsp_get_status}, so OCSP was loaded with {cf.ocsp_method}"
    ]
    for r in results["cfssl_ratios"]:
        out.append(
            f"Signet / cfssl, {r['what']}: {_sig(r['signet'])} / {_sig(r['cfssl'])} {r['unit']}"
            f" = {r['signet_over_cfssl']:.2f}"
        )
    return out


def _sustain_lines(results: dict[str, Any]) -> list[str]:
    s = results.get("sustain")
    if not s:
        return []
    row: Row = s["row"]
    samples = ", ".join(f"{x['t']:.0f}s {x['rss_mb']:.0f}" for x in s["rss_samples"])
    return [
        f"sustain: SignCertificate at {s['target_rps']:,.0f}/s for {s['seconds']:.0f} s: "
        f"got {row.rps:,.0f}/s ({row.rps / s['target_rps']:.0%} of it), p50 {row.p50_ms:.1f} ms,"
        f" p99 {row.p99_ms:.1f} ms (from when each call was due), {row.errors} errors"
        + (f" (first: {row.first_error})" if row.first_error else ""),
        "sustain: calls/s in each 5 s: " + ", ".join(f"{r:,.0f}" for r in s["rps_every_5s"]),
        f"sustain: server RSS MB (server + workers) {samples}",
        f"sustain: RSS {s['rss_growth']:+.1%} from {s['rss_baseline_t']:.0f} s to the end: "
        + ("flat" if s["rss_flat"] else "NOT flat"),
    ]


def replica_lines(replicas: dict[str, Any]) -> list[str]:
    """What the replica table cannot say: where PostgreSQL ran, errors, what was measured."""
    out = [f"PostgreSQL {replicas['postgres_version']}: {replicas['store']}"]
    for row in replicas["rows"]:
        if row.first_error:
            out.append(f"first error, {row.name}: {row.first_error}")
        if row.note:
            out.append(f"note, {row.name}: {row.note}")
    busy = [r.name for r in replicas["rows"] if (r.other_cores or 0) > BUSY_CORES]
    if busy:
        out.append(
            f"WARNING: other programs used more than {BUSY_CORES} cores during: " + "; ".join(busy)
        )
    if replicas["postgres_cpu_measured"]:
        out.append(
            "postgres µs/sign: utime + stime of the postmaster and all its processes (backends"
            " that exited in the window included), over the window, per call"
        )
    else:
        out.append("postgres µs/sign: not measured (the database server is not the bench's own)")
    out.append(
        "server µs/sign: summed over every replica's process tree; with two replicas each "
        "client process's connections are spread evenly over both replicas' API addresses"
    )
    out.append(f"replica rows took {replicas['seconds']:.0f} s with their setup")
    return out


def replica_text(replicas: dict[str, Any]) -> str:
    """The printed replica section: the small table, its floor, the notes."""
    return "\n".join(
        [
            replica_table(replicas["configs"]),
            "",
            floors_table([replicas["floor"]]),
            "",
            *replica_lines(replicas),
        ]
    )


def replica_section(replicas: dict[str, Any]) -> list[str]:
    """docs/performance.md's "Replicas on PostgreSQL" (only when the run measured them)."""
    workers = replicas["workers_per_replica"]
    return [
        "## Replicas on PostgreSQL",
        "",
        "The SignCertificate and GetCertificateStatus rows again, with the same load driver,"
        " processes, calls in flight and connections, against CA replicas sharing one"
        " PostgreSQL database: `ca-server init --store postgresql://…` once, a copy of that"
        f" data directory per replica, `ca-server serve --workers {workers}` on each (a fresh"
        " database per configuration, dropped afterwards). With two replicas each client"
        " process spreads its connections evenly over both replicas' addresses. The SQLite"
        " line is the single node of the table above, from the same run.",
        "",
        replica_table(replicas["configs"], markdown=True),
        "",
        floors_table([replicas["floor"]], markdown=True),
        "",
        rows_table(replicas["rows"], markdown=True),
        "",
        "```",
        *replica_lines(replicas),
        "```",
        "",
    ]


def summary_text(results: dict[str, Any]) -> str:
    return "\n".join(["", *summary_lines(results)])


METHOD = """\
## What is measured, and how

- **The server** is a real `ca-server serve --workers N` (N = `--workers`, default 2) on a
  fresh data directory, listening on 127.0.0.1 only, log level `warning`. If the server does
  not know `--workers` yet, the bench says so and runs one server process.
- **gRPC rows** all use the same load driver: P client processes (`--processes`, default 2,
  started with multiprocessing's `spawn`, so no gRPC state crosses a fork) each keep C calls in
  flight (`--inflight`, 16) over K mTLS connections of their own (`--connections`, 8; channel
  option `grpc.use_local_subchannel_pool` so they really are K connections). Calls are kept in
  flight either with `stub.Method.future()` and completion callbacks or with one thread per
  call in flight; the bench measures both on Health/Check first and keeps the one that costs
  the client less CPU per call. Every row warms up (`--warmup`, 1 s), then counts for
  `--seconds` (5 s); only calls that complete inside the window count, latency runs from send
  to completion, and any non-OK status anywhere is an error. Each row is also bounded in count.
- Requests are made *before* the window: CSRs with distinct SPIFFE IDs
  (`spiffe://signet.local/bench/N`) for SignCertificate; for RenewCertificate each connection
  authenticates as its own workload (first issued by SignCertificate) and every call brings a
  CSR for a new key; bootstrap tokens are minted with CreateBootstrapToken for Enroll.
- **Fresh-connection rows** (Enroll on the bootstrap listener, server TLS, name
  `ca.signet.invalid`; and the reference "fresh mTLS connection + Health/Check" on the API
  listener) open a new channel for every call and close it after, from 8 threads per process.
- **Server CPU per call** is utime + stime from `/proc/<pid>/stat` of the server and every
  descendant (its workers), read at the start and end of the window. **Client CPU per call** is
  what the client processes (getrusage, over the same window) or wrk (RUSAGE_CHILDREN) used:
  the load generator competes with the server for the same cores, so it is shown, not hidden.
  **Other cores** is what the whole machine was busy with (`/proc/stat`) minus those two, over
  the window: other programs (or kernel work charged to no process, such as loopback
  networking). Rows where it exceeds 0.25 cores are flagged; treat their rates as low.
- Pools of pre-made requests are finite (SignCertificate/RenewCertificate: enough for
  4,000 calls/s; Enroll: 1.5x the fresh-connection rate in tokens). A row that runs out says so
  ("the rate is a lower bound") instead of reporting a rate it did not sustain.
- **HTTP rows** are `wrk -t2 -c64 -d<seconds>s --latency` against the relying-party listener:
  OCSP GET and POST of an RFC 5019 request (SHA-1 CertID, no nonce, answered from pre-signed
  responses) for an issued certificate, and `GET /crl`. Non-2xx answers and socket errors are
  errors.
- **CRL builds** time `ca_server.core.crl.build_crl` (what the server's CRL publisher runs) for
  1k/10k/100k revoked entries with reason codes, and 100k without (the shape cfssl makes); the
  store read that precedes a build in the server is not included.
- **cfssl 1.2** (Debian `golang-cfssl`) does the same jobs with its own tools: its sign API over
  plain HTTP loaded by wrk with one fixed CSR, `ocspserve` with responses pre-signed by
  `cfssl ocspsign`, and `cfssl gencrl` for 100k serials (wall time of the whole command).
- **Sustain** (`--sustain SECONDS`) runs SignCertificate at 80% of the peak this run measured,
  rate-limited (a call's latency counts from when it was due, so falling behind shows), and
  samples the server's RSS (VmRSS summed over its processes) every 5 s.

## Reading it honestly

- The client processes, wrk and the server share the machine's cores; a row's rate is what the
  server did *while* the load generator took the "client µs/call" shown beside it.
- cfssl's sign row does less than Signet's: plain HTTP instead of mTLS, no database write
  (Signet commits every certificate and its audit record to SQLite with `synchronous=FULL`
  before answering), and it ignores the CSR's URI SAN. (Neither signs an OCSP response at
  issuance: Signet signs one when first asked for.)
  The ratio is the price of that work, not a like-for-like race.
- cfssl 1.2's OCSP GET handler cannot decode any request (it keeps the leading `/` of the path
  and turns `+` into a space), so cfssl's OCSP is loaded with POST, and Signet's POST row is
  the like-for-like comparison.
- Numbers compare within one run only (same machine, same moment). Run it twice before
  calling a change a regression: on a shared machine a figure that moves with *other cores*
  is noise.
"""


def page(results: dict[str, Any], png: Path, docs_dir: Path) -> str:
    m = results["machine"]
    machine_rows = [
        ["nproc", str(m["nproc"])],
        ["CPU", m["cpu_model"]],
        ["kernel", m["kernel"]],
        ["python", m["python"]],
        ["grpcio", m["grpcio"]],
        ["cryptography", m["cryptography"]],
    ]
    image = os.path.relpath(png.resolve(), docs_dir.resolve())
    parts = [
        "# Performance",
        "",
        "<!-- Generated by `python scripts/bench.py --write-docs`; edit scripts/bench_docs.py,"
        " not this file. -->",
        "",
        f"Measured {results['when']} in {results['wall_seconds']:.0f} s with (from the repository,"
        " in a venv made with `pip install -e '.[test,bench]'`):",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        f"Server: `ca-server {' '.join(results['server_command'][3:])}` (DIR: a fresh temporary"
        " directory), with SIGNET_LISTEN, SIGNET_HTTP_LISTEN and SIGNET_BOOTSTRAP_LISTEN at"
        " 127.0.0.1:0 and SIGNET_LOG_LEVEL=warning.",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], machine_rows),
        "",
        "## Results",
        "",
        rows_table(table_rows(results), markdown=True),
        "",
        f"![throughput and p99 per row, cfssl beside]({image})",
        "",
        "```",
        *summary_lines(results),
        "```",
        "",
        "## Floors",
        "",
        floors_table(results["floors"], markdown=True),
        "",
    ]
    if results.get("replicas"):
        parts += replica_section(results["replicas"])
    cf = results.get("cfssl")
    if cf is not None:
        parts += ["## cfssl commands that worked", "", "```sh", *cf.commands, "```", ""]
    parts += [METHOD]
    return "\n".join(parts)
