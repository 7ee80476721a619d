"""Turning one run's results into the printed table, the floors, the JSON, the PNG and
docs/performance.md. Nothing here measures anything."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_cfssl import CfsslResults

RSS_FLAT = 0.10  # sustain: last RSS within 10% of the first sample after warm-up


@dataclass
class Row:
    """One measured row, gRPC or HTTP, Signet or cfssl."""

    name: str
    group: str  # grpc | http | cfssl
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float  # per call, the server's whole process tree
    client_cpu_us: float  # per call, the load generator (client processes or wrk)
    calls: int
    first_error: str = ""
    note: str = ""
    vs_health: float | None = None  # gRPC rows: rate / Health/Check rate of this run
    # Cores busy with neither the server nor the load generator during the window (other
    # programs on the machine): anything well above 0 means the row was measured on a busy box.
    other_cores: float | None = None
    per_second: list[int] = field(default_factory=list)  # gRPC rows: OK calls in each second
    # Rows on PostgreSQL: the postgres processes' CPU per call (None: SQLite, or not measured
    # because the database server is not the bench's own).
    postgres_cpu_us: float | None = None


@dataclass
class Floor:
    name: str
    measured: str
    required: str
    passed: bool


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


COLUMNS = ("row", "calls/s", "p50 ms", "p99 ms", "errors", "server µs/call", "client µs/call")
OTHER = "other cores"


def _cells(row: Row) -> list[str]:
    return [
        row.name,
        _num(row.rps),
        _num(row.p50_ms, 2),
        _num(row.p99_ms, 2),
        str(row.errors),
        _num(row.server_cpu_us),
        _num(row.client_cpu_us),
        _num(row.vs_health, 2) if row.vs_health is not None else "",
        _num(row.other_cores, 2),
    ]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def rows_table(rows: list[Row], markdown: bool = False) -> str:
    headers = [*COLUMNS, "vs health", OTHER]
    cells = [_cells(r) for r in rows]
    return markdown_table(headers, cells) if markdown else text_table(headers, cells)


def floors_table(floors: list[Floor], markdown: bool = False) -> str:
    headers = ["floor", "measured", "required", "result"]
    cells = [[f.name, f.measured, f.required, "PASS" if f.passed else "FAIL"] for f in floors]
    return markdown_table(headers, cells) if markdown else text_table(headers, cells)


def find(rows: list[Row], name: str) -> Row:
    return next(r for r in rows if r.name == name)


def floors(
    rows: list[Row],
    crl: list[dict[str, Any]],
    sustained: dict[str, Any] | None,
    replicas: dict[str, Any] | None = None,
) -> list[Floor]:
    sign = find(rows, "gRPC SignCertificate")
    status = find(rows, "gRPC GetCertificateStatus")
    ocsp_get = find(rows, "HTTP OCSP GET, pre-signed (wrk)")
    enroll = find(rows, "Enroll, fresh TLS connection per call")
    fresh = find(rows, "fresh mTLS connection + Health/Check")
    crl100k = next(c for c in crl if c["entries"] == 100_000 and c["reason_codes"])
    errors = sum(r.errors for r in rows) + (sustained["row"].errors if sustained else 0)
    errors += sum(r.errors for r in replicas["rows"]) if replicas else 0
    ratio = enroll.rps / fresh.rps if fresh.rps else 0.0
    out = [
        Floor("SignCertificate rate", f"{sign.rps:,.0f}/s", ">= 2,000/s", sign.rps >= 2000),
        Floor("SignCertificate p99", f"{sign.p99_ms:.1f} ms", "<= 50 ms", sign.p99_ms <= 50),
        Floor(
            "server CPU per issued certificate",
            f"{sign.server_cpu_us:,.0f} µs",
            "<= 600 µs",
            sign.server_cpu_us <= 600,
        ),
        Floor(
            "GetCertificateStatus rate", f"{status.rps:,.0f}/s", ">= 4,000/s", status.rps >= 4000
        ),
        Floor(
            "HTTP OCSP (GET) rate", f"{ocsp_get.rps:,.0f}/s", ">= 15,000/s", ocsp_get.rps >= 15000
        ),
        Floor(
            "CRL of 100k entries rebuilt after a revocation",
            f"{crl100k['rebuild_seconds']:.3f} s",
            "<= 0.5 s",
            crl100k["rebuild_seconds"] <= 0.5,
        ),
        Floor(
            "CRL of 100k entries, cold (once per start)",
            f"{crl100k['seconds']:.3f} s",
            "<= 0.5 s",
            crl100k["seconds"] <= 0.5,
        ),
        Floor("Enroll / fresh mTLS+Check", f"{ratio:.2f}x", ">= 0.60x", ratio >= 0.6),
        Floor("failed calls, all rows", str(errors), "0", errors == 0),
    ]
    if replicas:
        out.append(replicas["floor"])
    if sustained:
        out.append(
            Floor(
                "RSS flat under sustained signing",
                f"{sustained['rss_growth']:+.1%}",
                f"within ±{RSS_FLAT:.0%}",
                sustained["rss_flat"],
            )
        )
    return out


REPLICA_FLOOR = "two PostgreSQL replicas sign >= one SQLite node"


def replica_floor(configs: list[dict[str, Any]]) -> Floor:
    """The last configuration (two replicas) against the first (one SQLite node)."""
    sqlite, two = configs[0]["sign"], configs[-1]["sign"]
    ratio = two.rps / sqlite.rps if sqlite.rps else math.nan
    return Floor(
        REPLICA_FLOOR,
        f"{two.rps:,.0f}/s vs {sqlite.rps:,.0f}/s ({ratio:.2f}x)",
        ">= 1.00x",
        two.rps >= sqlite.rps,
    )


REPLICA_COLUMNS = (
    "configuration",
    "sign calls/s",
    "sign p99 ms",
    "server µs/sign",
    "postgres µs/sign",
    "status calls/s",
    "status p99 ms",
    "errors",
)


def replica_table(configs: list[dict[str, Any]], markdown: bool = False) -> str:
    """SQLite 1 node / PostgreSQL 1 replica / 2 replicas, one line each."""
    cells = []
    for c in configs:
        sign, status = c["sign"], c["status"]
        if c["store"] == "sqlite":
            pg = "-"
        elif sign.postgres_cpu_us is None:
            pg = "not measured"
        else:
            pg = _num(sign.postgres_cpu_us)
        cells.append(
            [
                c["name"],
                _num(sign.rps),
                _num(sign.p99_ms, 2),
                _num(sign.server_cpu_us),
                pg,
                _num(status.rps),
                _num(status.p99_ms, 2),
                str(sign.errors + status.errors),
            ]
        )
    headers = list(REPLICA_COLUMNS)
    return markdown_table(headers, cells) if markdown else text_table(headers, cells)


def cfssl_ratios(
    rows: list[Row], cf: CfsslResults, crl: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each Signet figure over cfssl's (>1 is Signet ahead for rates, behind for times)."""
    sign = find(rows, "gRPC SignCertificate")
    ocsp_same = find(rows, f"HTTP OCSP {cf.ocsp_method}, pre-signed (wrk)")
    ocsp_get = find(rows, "HTTP OCSP GET, pre-signed (wrk)")
    crl_like = next(c for c in crl if c["entries"] == cf.crl_entries and not c["reason_codes"])
    crl_std = next(c for c in crl if c["entries"] == cf.crl_entries and c["reason_codes"])

    def ratio(what: str, signet: float, cfssl: float, unit: str) -> dict[str, Any]:
        return {
            "what": what,
            "signet": signet,
            "cfssl": cfssl,
            "unit": unit,
            "signet_over_cfssl": signet / cfssl if cfssl else math.nan,
        }

    return [
        ratio("sign rate (Signet gRPC mTLS vs cfssl HTTP API)", sign.rps, cf.sign.rps, "/s"),
        ratio("sign p99", sign.p99_ms, cf.sign.p99_ms, "ms"),
        ratio(f"OCSP rate ({cf.ocsp_method} both)", ocsp_same.rps, cf.ocsp.rps, "/s"),
        ratio(f"OCSP rate (Signet GET vs cfssl {cf.ocsp_method})", ocsp_get.rps, cf.ocsp.rps, "/s"),
        ratio(
            "CRL 100k build time, no reason codes (as cfssl)",
            crl_like["seconds"],
            cf.crl_seconds,
            "s",
        ),
        ratio(
            "CRL 100k build time, Signet with reason codes", crl_std["seconds"], cf.crl_seconds, "s"
        ),
    ]


def write_json(path: Path, results: dict[str, Any]) -> None:
    def encode(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        if isinstance(value, float) and math.isnan(value):
            return None
        raise TypeError(f"cannot encode {type(value).__name__}")

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=encode) + "\n")


def plot(path: Path, rows: list[Row], beside: dict[str, Row], title: str) -> None:
    """Throughput and p99 per Signet row, with cfssl's bar beside the row it compares to
    (`beside` maps a Signet row name to the cfssl row). Log scales: the rows span 100x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    y = list(range(len(rows)))
    pair = 0.2 if beside else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 2), sharey=True)
    for ax, attr, label in ((axes[0], "rps", "calls/s"), (axes[1], "p99_ms", "p99 latency, ms")):
        signet = [getattr(r, attr) for r in rows]
        _bars(ax, [v - pair for v in y], signet, "Signet", "#3b6ea8", 0.4 if beside else 0.6)
        cf = [
            (v + pair, getattr(beside[r.name], attr))
            for v, r in zip(y, rows, strict=True)
            if r.name in beside
        ]
        if cf:
            _bars(ax, [p for p, _ in cf], [v for _, v in cf], "cfssl 1.2", "#d9822b", 0.4)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
        )
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label + " (log scale)")
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.margins(x=0.15)
    axes[0].set_yticks(y, [r.name for r in rows])
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(
    ax: Any, ys: list[float], values: list[float], label: str, color: str, height: float
) -> None:
    shown = [max(v, 1e-3) if not math.isnan(v) else 1e-3 for v in values]
    ax.barh(ys, shown, height=height, label=label, color=color)
    for y, v in zip(ys, values, strict=True):
        ax.annotate(
            _num(v, 0 if v >= 10 else 1),
            (max(v, 1e-3), y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
