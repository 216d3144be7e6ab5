"""Prometheus metrics (README "Observing it"), on a registry owned by one app instance.

Under `serve --workers N` each worker is its own process; when PROMETHEUS_MULTIPROC_DIR
is set (the CLI sets it for N > 1) the values are written there and /metrics aggregates
every worker's files: counters and the histogram add up over all workers, living or
not; `sip_router_ruleset_info` shows the versions that living workers serve now.
"""

from __future__ import annotations

import glob
import os
from collections import Counter as Tally
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RULESET_INFO = "sip_router_ruleset_info"
_RULESET_INFO_HELP = "The active ruleset version (value 1)."

# Each process clears the ruleset files a dead process with its pid may have left, once.
_cleared_for_pid: int | None = None


# Children kept per metric by _BoundChildren before it starts over (label values such as an
# upstream status come from outside).
MAX_BOUND_CHILDREN = 256


class _BoundChildren:
    """A labelled metric's children by their label values, looked up once per values:
    `labels()` checks the values and takes a lock on every call."""

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def __call__(self, *values: str) -> Counter:
        child = self._children.get(values)
        if child is None:
            if len(self._children) >= MAX_BOUND_CHILDREN:
                self._children.clear()
            child = self._children[values] = self._metric.labels(*values)
        return child

    def __len__(self) -> int:
        return len(self._children)


def write_metrics_to(directory: str) -> None:
    """Have every metric made from now on write its values under `directory`, where /metrics
    reads every process's (`PROMETHEUS_MULTIPROC_DIR`). prometheus_client reads that
    variable once, when it is imported; the CLI sets it after that, so it is read again."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class Metrics:
    """The service's counters, histogram and info gauge, and this process's rule hits."""

    def __init__(self) -> None:
        # `*_created` series double the output and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        if self.multiprocess_dir is not None:
            _clear_files_of_an_earlier_process_with_this_pid(self.multiprocess_dir)
        self._ruleset: str | None = None
        # Decisions per rule since this process started (the admin API's `rule_hits`).
        self.rule_hits: Tally[str] = Tally()
        self.webhooks = Counter(
            "sip_router_webhooks_total",
            "Webhook deliveries by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "sip_router_decisions_total",
            "Calls decided, by the rule, the action it chose and the profile of an accept"
            " (empty for other actions; one per call).",
            ["rule", "action", "profile"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "sip_router_fallbacks_total",
            "Calls whose chosen action failed, by rule and the on_error action that ran.",
            ["rule", "action"],
            registry=self.registry,
        )
        self.consults = Counter(
            "sip_router_consult_total",
            "Services asked by consult rules, by service and what became of the request"
            " (answered, continue, timeout, error, invalid).",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "sip_router_upstream_requests_total",
            "Requests to OpenAI's call endpoints by verb and HTTP status (error: no answer).",
            ["verb", "status"],
            registry=self.registry,
        )
        self._webhook = _BoundChildren(self.webhooks)
        self._decision = _BoundChildren(self.decisions)
        self._fallback = _BoundChildren(self.fallbacks)
        self._upstream = _BoundChildren(self.upstream_requests)
        self._consult = _BoundChildren(self.consults)
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
        # In multiprocess mode each worker writes its own file (`liveall`, one per pid);
        # LiveRulesetCollector turns those into the versions living workers serve.
        self.ruleset_info = Gauge(
            RULESET_INFO,
            _RULESET_INFO_HELP,
            ["version"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )

        # --- calls sip-router stays with after the accept ---------------
        self.active_calls = Gauge(
            "sip_router_active_calls",
            "Calls with a live sideband, by API.",
            ["api"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.sideband_connections = Counter(
            "sip_router_sideband_connections_total",
            "Sideband WebSocket connection attempts and ends, by API and outcome.",
            ["api", "outcome"],
            registry=self.registry,
        )
        self.function_calls = Counter(
            "sip_router_function_calls_total",
            "Function calls answered on a call's sideband, by function and outcome.",
            ["function", "outcome"],
            registry=self.registry,
        )
        self.transfers = Counter(
            "sip_router_transfers_total",
            "Refers carried out on live calls, by outcome.",
            ["outcome"],
            registry=self.registry,
        )

    def set_ruleset(self, version: str) -> None:
        if self._ruleset is not None and self._ruleset != version:
            # Multiprocess files keep every label ever written: mark the old one inactive.
            self.ruleset_info.labels(version=self._ruleset).set(0)
            if self.multiprocess_dir is None:
                self.ruleset_info.remove(self._ruleset)
        self._ruleset = version
        self.ruleset_info.labels(version=version).set(1)

    def webhook_handled(self, outcome: str) -> None:
        """One webhook delivery answered, with its outcome."""
        self._webhook(outcome).inc()

    def decided(self, rule: str, action: str, profile: str | None = None) -> None:
        """One call decided by `rule` (`default` when no rule matched) to `action`."""
        self._decision(rule, action, profile or "").inc()
        self.rule_hits[rule] += 1

    def consulted(self, service: str, outcome: str) -> None:
        """One request to a service of `services` and what became of it."""
        self._consult(service, outcome).inc()

    def fell_back(self, rule: str, action: str) -> None:
        """The action `rule` chose failed and on_error's `action` ran instead."""
        self._fallback(rule, action).inc()

    def upstream_answered(self, verb: str, status: int | None) -> None:
        self._upstream(verb, str(status) if status else "error").inc()

    def render(self) -> bytes:
        """The exposition text; all workers' values in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        combined.register(LiveRulesetCollector(self.multiprocess_dir))
        return generate_latest(combined)


class LiveRulesetCollector:
    """prometheus_client's multiprocess collector, with `sip_router_ruleset_info` made true.

    The library shows a `liveall` gauge per pid, keeps the versions a worker served
    before (at 0) and the files of workers that died without `mark_process_dead`. Here
    the gauge is the set of versions a living worker serves now, without a `pid` label.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        merged: Iterable[Metric] = multiprocess.MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        live = GaugeMetricFamily(RULESET_INFO, _RULESET_INFO_HELP, labels=["version"])
        versions: set[str] = set()
        for metric in merged:
            if metric.name != RULESET_INFO:
                yield metric
                continue
            for sample in metric.samples:
                pid = sample.labels.get("pid", "")
                if sample.value == 1 and pid.isdigit() and _process_lives(int(pid)):
                    versions.add(sample.labels["version"])
        for version in sorted(versions):
            live.add_metric([version], 1)
        yield live


def _process_lives(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_files_of_an_earlier_process_with_this_pid(path: str) -> None:
    """A reused pid must not inherit the versions a crashed worker left behind."""
    global _cleared_for_pid
    pid = os.getpid()
    if _cleared_for_pid != pid:
        _cleared_for_pid = pid
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
