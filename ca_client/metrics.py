"""The agent's Prometheus metrics (``ca-client agent --metrics-listen``): the certificate it
keeps on disk (its expiry is what alerts watch, like cert-manager's
certmanager_certificate_expiration_timestamp_seconds), when it will renew, and how renewals
went."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .agent import Agent
from .files import read_credentials


class _Holding:
    """Read at each scrape from the files themselves: what the served process really uses."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        try:
            creds = read_credentials(self._agent.config.out)
        except (OSError, ValueError):
            creds = None
        if creds is not None:
            yield GaugeMetricFamily(
                "signet_agent_certificate_expiry_timestamp_seconds",
                "When the certificate on disk expires",
                creds.not_after.timestamp(),
            )
            yield GaugeMetricFamily(
                "signet_agent_certificate_not_before_timestamp_seconds",
                "When the certificate on disk became valid",
                creds.not_before.timestamp(),
            )
        renew_at = self._agent.next_renewal
        if renew_at is not None:
            yield GaugeMetricFamily(
                "signet_agent_next_renewal_timestamp_seconds",
                "When the agent will renew next",
                renew_at.timestamp(),
            )


def _reason(error: Exception) -> str:
    if isinstance(error, grpc.RpcError):
        return str(error.code().name).lower()
    return type(error).__name__.lower()


def serve_metrics(agent: Agent, listen: str) -> str:
    """Start GET /metrics on `listen` (HOST:PORT, port 0 picks one); return the address."""
    registry = CollectorRegistry()
    renewals = Counter(
        "signet_agent_renewals", "Certificates obtained (enrollments and renewals)",
        registry=registry,
    )  # fmt: skip
    failures = Counter(
        "signet_agent_renewal_failures", "Failed attempts, by reason", ["reason"],
        registry=registry,
    )  # fmt: skip
    registry.register(_Holding(agent))
    agent.renewed.append(lambda creds: renewals.inc())
    agent.failed.append(lambda error: failures.labels(_reason(error)).inc())
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), host.strip("[]") or "127.0.0.1", registry)
    bound_host, bound_port = server.server_address[:2]
    return f"{bound_host!s}:{bound_port}"
