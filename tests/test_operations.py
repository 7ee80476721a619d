"""docs/operations.md's alert rules and dashboard: the rules load in promtool, and every metric
the rules and the dashboard name is one a real CA or a real agent exports. Also the agent's own
/metrics: the certificate it keeps, its next renewal, renewals and failures."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ca_client.agent import Agent, AgentConfig
from ca_client.files import read_credentials
from ca_client.metrics import serve_metrics
from tests.conftest import CaServer
from tests.test_agent import _token
from tests.tools import need_tool

DOCS = Path(__file__).resolve().parent.parent / "docs"
# PromQL words that are not metric names.
_PROMQL = {
    "sum", "by", "rate", "increase", "time", "histogram_quantile", "le", "method", "code",
    "reason", "outcome", "status", "cache", "role", "state", "job", "instance", "and", "or",
    "on",
}  # fmt: skip


def _get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
        return str(reply.read().decode())


def _scrape(address: str) -> dict[str, float]:
    text = _get(address)
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _exported(address: str) -> set[str]:
    """Every series name the endpoint declares, also for families with no sample yet (a
    labelled counter nothing has counted)."""
    names = set()
    for family in text_string_to_metric_families(_get(address)):
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def _names_in(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w.startswith("signet_") and w not in _PROMQL}


def _documented() -> set[str]:
    rules = (DOCS / "alerts.yml").read_text()
    names = set()
    for line in re.findall(r"expr:\s*>?\s*\n?((?:.*\n)(?:\s{10,}.*\n)*)", rules):
        names |= _names_in(line)
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= _names_in(target["expr"])
    return names


def test_the_alert_rules_load_in_promtool() -> None:
    promtool = need_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(DOCS / "alerts.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_every_metric_the_rules_and_dashboard_name_is_exported(
    ca: CaServer, tmp_path: Path
) -> None:
    ca.issue("web/operations")  # so that counters of issuance have samples
    exported = _exported(ca.running.metrics_address)
    _, address, stop, thread = _running_agent(ca, tmp_path)
    try:
        exported |= _exported(address)
    finally:
        stop.set()
        thread.join(timeout=30)
    documented = _documented()
    assert len(documented) > 15, documented
    assert documented - exported == set()


def _running_agent(
    ca: CaServer, tmp_path: Path
) -> tuple[Agent, str, threading.Event, threading.Thread]:
    out = tmp_path / "tls"
    minted = _token(ca, "web/metered-agent", seconds=3600)
    config = AgentConfig(
        server=ca.address, bootstrap_server=ca.running.bootstrap_address, token=minted.token,
        root_fingerprint=minted.root_fingerprint_sha256, out=out,
    )  # fmt: skip
    agent = Agent(config)
    enrolled = threading.Event()
    agent.renewed.append(lambda creds: enrolled.set())
    address = serve_metrics(agent, "127.0.0.1:0")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    assert enrolled.wait(30), "the agent did not enroll"
    return agent, address, stop, thread


def test_the_agent_exports_its_certificate_and_next_renewal(ca: CaServer, tmp_path: Path) -> None:
    agent, address, stop, thread = _running_agent(ca, tmp_path)
    try:
        samples = _scrape(address)
        creds = read_credentials(agent.config.out)
        assert creds is not None
        assert samples["signet_agent_certificate_expiry_timestamp_seconds"] == (
            creds.not_after.timestamp()
        )
        assert samples["signet_agent_certificate_not_before_timestamp_seconds"] == (
            creds.not_before.timestamp()
        )
        renew_at = samples["signet_agent_next_renewal_timestamp_seconds"]
        assert creds.not_before.timestamp() < renew_at < creds.not_after.timestamp()
        assert samples["signet_agent_renewals_total"] == 1
        assert time.time() < renew_at
    finally:
        stop.set()
        thread.join(timeout=30)
