"""Prometheus metrics of SPEC section 8, on a registry owned by one app instance.

Under `serve --workers N` each worker is its own process; when PROMETHEUS_MULTIPROC_DIR
is set (the CLI sets it for N > 1) the values are written there and /metrics aggregates
every worker's files.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The service's counters, histogram and info gauge."""

    def __init__(self) -> None:
        # `*_created` series double the output and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._ruleset: str | None = None
        self.webhooks = Counter(
            "sip_router_webhooks_total",
            "Webhook deliveries by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "sip_router_decisions_total",
            "Routing decisions by rule and action.",
            ["rule", "action"],
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "sip_router_upstream_requests_total",
            "Requests to OpenAI's call endpoints by verb and HTTP status (error: no answer).",
            ["verb", "status"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "sip_router_decision_seconds",
            "Time from webhook in to upstream answer.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter(
            "sip_router_rules_reloads_total",
            "Rule reloads by result.",
            ["result"],
            registry=self.registry,
        )
        self.ruleset_info = Gauge(
            "sip_router_ruleset_info",
            "The active ruleset version (value 1).",
            ["version"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )

    def set_ruleset(self, version: str) -> None:
        if self._ruleset is not None and self._ruleset != version:
            # Multiprocess files keep every label ever written: mark the old one inactive.
            self.ruleset_info.labels(version=self._ruleset).set(0)
            if self.multiprocess_dir is None:
                self.ruleset_info.remove(self._ruleset)
        self._ruleset = version
        self.ruleset_info.labels(version=version).set(1)

    def upstream_answered(self, verb: str, status: int | None) -> None:
        self.upstream_requests.labels(verb=verb, status=str(status) if status else "error").inc()

    def render(self) -> bytes:
        """The exposition text; all workers' values in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
