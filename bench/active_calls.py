"""Capacity: one replica holding many active calls with open sidebands.

`uv run python -m bench.active_calls [--calls 1000]` starts a peer process (the project's
fake OpenAI on loopback, scripted so every call's agent calls a company function every
`--function-every-s` seconds, and that function's service), then in this process the
service itself (`create_app`, its lifespan running, its calls process as under `serve`;
`--inline` drives the calls in this process instead):

1. baseline: webhook decisions (signed deliveries through `CallProcessor.handle`, each an
   accept sent to the fake) at a steady rate, with no active call;
2. `--calls` calls are accepted and attached (greeting, then a function call every few
   seconds per call, answered through the service's outbound client);
3. the same webhook run again while they are active.

It reports memory per active call (RSS growth of this process and the calls process /
calls), the webhooks' event-loop lag p99 (a 10 ms ticker), decision latency p50/p99
without and with the active calls, and the CPU share of the service's process, the calls
process and the peer during the run with calls. `--webhooks 5000` gives runs of 100 s,
whose p99 varies less from run to run; `--latencies FILE` keeps every decision's latency
to pool several runs. Timings vary with the machine's load; the collector's
share does not, so it is reported too: the full (generation 2) collections during each
webhook run in this process, with their total and longest pause (`gc.callbacks`), and
with `--inline` objects the collector tracks and asyncio tasks per active call (after a
`gc.collect()`, growth / calls). `--object-types` adds the per-call count of the most
common tracked types. The webhook
path excludes the HTTP server (the same in both runs). The call endpoints (accept, and the
calls' hangups) go to bench/upstream.py, a cheap loopback stand-in in a third process, so
the fake's work for 1,000 sidebands (it validates every event) does not slow the accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from app.app_factory import create_app
from app.metrics import write_metrics_to
from app.rules.simulation import simulated_context
from app.settings import Settings
from app.webhook_signing import signed_test_call

SECRET = "whsec_" + "YmVuY2gtYWN0aXZlLWNhbGxzLXNlY3JldC1vZi0zMg=="
CALLER = "+14155550123"
MAIN_LINE = "+14155550100"
STAY_LINE = "+14155550199"

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  plain: {model: gpt-realtime, instructions: "Answer politely."}
  desk:
    model: gpt-realtime
    instructions: "You answer the phone for Lakeside Clinic."
    greeting: "Lakeside Clinic, how can I help?"
    end_call: true
    functions: [lookup_appointment]
functions:
  lookup_appointment:
    description: Find the caller's next appointment.
    parameters: {type: object, properties: {date_of_birth: {type: string}}}
    url: FUNCTION_URL
rules:
  - name: stay
    when: {called: "+14155550199"}
    accept: {profile: desk}
default: {accept: {profile: plain}}
"""


# --- the peer process: fake OpenAI and the function's service ------------------------------


def peer(calls: int, every_s: float, duration_s: float) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fake_openai import AgentCallsFunction, AwaitClient, FakeOpenAI, Pause
    from tests.function_service import function_services, json_answer

    fake = FakeOpenAI("sk-bench")
    fake.audio_s = 0.2
    rounds = max(1, int(duration_s / every_s))
    for index in range(calls):
        call_id = f"rtc_bench{index:05d}"
        fake.activate(call_id)
        steps: list[Any] = [AwaitClient("response.create", timeout_s=600)]
        # Spread the calls' function calls evenly over each period.
        steps.append(Pause(every_s * index / calls))
        for round_ in range(rounds):
            steps.append(
                AgentCallsFunction(
                    "lookup_appointment", {"date_of_birth": "1980-02-03"}, f"call_{round_}"
                )
            )
            steps.append(Pause(every_s))
        steps.append(Pause(3600))
        fake.script_sideband(call_id, steps)

    async def serve() -> None:
        async with function_services() as start:
            service = await start(json_answer({"next": "Tuesday 9:00"}), keep_alive=True)
            with fake.serve_on_loopback() as base_url:
                print(json.dumps({"base_url": base_url, "function_url": service.url}), flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(serve())


# --- this process: the service -------------------------------------------------------------


class ToCheapUpstream(httpx.AsyncBaseTransport):
    """The call endpoints' requests, sent to bench/upstream.py instead of the fake."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pids: list[str]) -> int:
    """The resident memory of these processes (`self` is this one), in all."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: str) -> float:
    """The CPU time (user and system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - started - 0.01)


async def webhooks(app: Any, rate: float, count: int) -> list[float]:
    processor = app.state.services.processor
    latencies: list[float] = []

    async def one(index: int) -> None:
        delivery = signed_test_call(
            SECRET, CALLER, MAIN_LINE, now=int(time.time()), call_id=f"rtc_hook{index:08d}"
        )
        started = time.perf_counter()
        answer = await processor.handle(delivery.body, dict(delivery.headers))
        latencies.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.body

    tasks = []
    start = time.perf_counter()
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(index + int(time.time() * 1000))))
    await asyncio.gather(*tasks)
    return latencies


class Collections:
    """The collector's collections while in use, by generation: how many, how long, and
    how many objects each walked (the generations it collects; frozen objects are not)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.walked: dict[int, list[int]] = {0: [], 1: [], 2: []}
        self._started: float | None = None

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generation = info["generation"]
            walked = sum(len(gc.get_objects(g)) for g in range(generation + 1))
            self.walked[generation].append(walked)
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)
            self._started = None

    def summary(self, generation: int) -> dict[str, float]:
        pauses = self.pauses[generation]
        return {
            "count": len(pauses),
            "objects_walked": sum(self.walked[generation]),
            "total_ms": round(sum(pauses) * 1000, 1),
            "max_ms": round(max(pauses, default=0.0) * 1000, 1),
        }

    def young(self) -> dict[str, float]:
        """Generations 0 and 1: how many of each, and the longest pause."""
        return {
            "gen0": len(self.pauses[0]),
            "gen1": len(self.pauses[1]),
            "objects_walked": sum(self.walked[0]) + sum(self.walked[1]),
            "most_walked": max(self.walked[0] + self.walked[1], default=0),
            "max_ms": round(max(self.pauses[0] + self.pauses[1], default=0.0) * 1000, 1),
        }


class LostLeases(logging.Handler):
    """Counts calls whose lease ran out: the replica was too slow (an overloaded machine)
    to renew it, which makes the run's other figures meaningless."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "call_lease_lost":
            self.count += 1


def tracked_objects() -> tuple[int, Counter[str]]:
    """What the collector tracks outside the frozen start-up objects, after a collection."""
    gc.collect()
    objects = gc.get_objects()
    return len(objects), Counter(type(o).__qualname__ for o in objects)


async def measure(args: argparse.Namespace, urls: dict[str, Any]) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    rules = folder / "rules.yaml"
    rules.write_text(RULES.replace("FUNCTION_URL", urls["function_url"]), encoding="utf-8")
    settings = Settings(
        _env_file=None,
        openai_api_key="sk-bench",
        openai_webhook_secret=SECRET,
        openai_base_url=urls["base_url"],
        rules=rules,
        log_level="warning",
        outbound_secret="whsec_" + "YmVuY2gtb3V0Ym91bmQtc2VjcmV0LW9mLTMyLWJ5dGVz",
    )
    inline = args.inline
    if not inline:
        # As under `serve`: the calls process's metrics are read from this directory.
        write_metrics_to(tempfile.mkdtemp(prefix="bench-metrics-"))
    transport = ToCheapUpstream(urls["upstream_port"])
    app = create_app(settings, transport=transport, watch_interval_s=None, calls_process=not inline)
    results: dict[str, Any] = {
        "calls": args.calls,
        "function_every_s": args.function_every_s,
        "calls_process": not inline,
        "peer_competes": args.peer_competes,
    }
    results["load_average_at_start"] = [round(load, 2) for load in os.getloadavg()]
    async with app.router.lifespan_context(app):
        lost_leases = LostLeases()
        logging.getLogger("sip_router.sideband").addHandler(lost_leases)
        if args.gc_threshold:
            gc.set_threshold(*args.gc_threshold)
        results["gc_threshold"] = list(gc.get_threshold())
        services = app.state.services
        metrics = services.metrics
        keeper = services.processor._keeper
        # The processes that hold the calls: this one, and the calls process if there is one.
        pids = ["self"] if inline else ["self", str(keeper.pid)]
        lag: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.ensure_future(loop_lag(lag, stop))

        await webhooks(app, args.rate, min(100, args.webhooks))  # warm-up: connections
        lag.clear()
        with Collections() as collections:
            base = await webhooks(app, args.rate, args.webhooks)
        results["baseline"] = summary(base)
        results["baseline_full_collections"] = collections.summary(2)
        results["baseline_young_collections"] = collections.young()
        results["baseline_loop_lag_p99_ms"] = round(percentile(lag, 0.99) * 1000, 2)
        lag.clear()

        # A control: processes that only burn CPU, started for the second run, tell the
        # machine's contention apart from the service's own work.
        neighbours = [start_neighbour(share) for share in args.neighbour]
        objects_before, types_before = tracked_objects()
        tasks_before = len(asyncio.all_tasks())
        rss_before = rss_bytes(pids)
        ruleset = services.rules.current
        for index in range(args.calls):
            call_id = f"rtc_bench{index:05d}"
            ctx = simulated_context(ruleset, CALLER, STAY_LINE, ruleset_now(), call_id=call_id)
            decision = ruleset.decide(ctx)
            await keeper.stay_with(call_id, decision, {"e164": CALLER}, {"e164": STAY_LINE})
        deadline = time.monotonic() + 120
        connected = 0.0
        while time.monotonic() < deadline:
            connected = metric(metrics, "sip_router_sideband_connections_total", CONNECTED)
            if connected >= args.calls:
                break
            await asyncio.sleep(0.2)
        # Every call has had a function call (a run with rare ones waits 10 s at most).
        await asyncio.sleep(min(args.function_every_s, 10.0))
        rss_after = rss_bytes(pids)
        results["connected"] = int(connected)
        results["memory_per_call_kib"] = round((rss_after - rss_before) / args.calls / 1024, 1)
        if inline:
            # The calls' function calls in flight come and go: the fewest of three samples.
            samples = []
            for _ in range(3):
                samples.append(tracked_objects())
                await asyncio.sleep(0.5)
            objects_after, types_after = min(samples, key=lambda sample: sample[0])
            per_call = max(1, args.calls)
            results["tracked_objects_per_call"] = round(
                (objects_after - objects_before) / per_call, 1
            )
            results["tasks_per_call"] = round(
                (len(asyncio.all_tasks()) - tasks_before) / per_call, 2
            )
            if args.object_types:
                types_after.subtract(types_before)
                results["tracked_types_per_call"] = {
                    name: round(count / per_call, 2) for name, count in types_after.most_common(20)
                }
        lag.clear()
        before_functions = metric(metrics, "sip_router_function_calls_total", FUNCTION_OK)
        rss_before_run = rss_bytes(pids)
        # Whose CPU the run took: the service's process, the calls process, the peer.
        shares = {"service": "self", "calls_process": pids[-1], "peer": urls["peer_pid"]}
        if inline:
            del shares["calls_process"]
        cpu_before = {name: cpu_seconds(pid) for name, pid in shares.items()}
        run_started = time.monotonic()
        with Collections() as collections:
            loaded = await webhooks(app, args.rate, args.webhooks)
        run_s = time.monotonic() - run_started
        results["cpu_share_during_run"] = {
            name: round((cpu_seconds(pid) - cpu_before[name]) / run_s, 3)
            for name, pid in shares.items()
        }
        results["rss_growth_during_run_mib"] = round((rss_bytes(pids) - rss_before_run) / 2**20, 1)
        results["with_calls"] = summary(loaded)
        results["with_calls_full_collections"] = collections.summary(2)
        results["with_calls_young_collections"] = collections.young()
        results["with_calls_loop_lag_p99_ms"] = round(percentile(lag, 0.99) * 1000, 2)
        results["function_calls_during_run"] = (
            metric(metrics, "sip_router_function_calls_total", FUNCTION_OK) - before_functions
        )
        results["active_calls"] = int(
            metric(metrics, "sip_router_active_calls", {"api": "realtime"})
        )
        if inline:  # the calls process logs its own lost leases (`call_lease_lost`)
            results["leases_lost"] = lost_leases.count
        for neighbour in neighbours:
            neighbour.kill()
            neighbour.wait()
        stop.set()
        await ticker
    if args.latencies:
        # Every decision's latency, to pool several runs' (their p99 over more decisions).
        raw = {"baseline": base, "with_calls": loaded}
        Path(args.latencies).write_text(json.dumps(raw), encoding="utf-8")
    results["p50_ratio"] = round(results["with_calls"]["p50_ms"] / results["baseline"]["p50_ms"], 3)
    results["p99_ratio"] = round(results["with_calls"]["p99_ms"] / results["baseline"]["p99_ms"], 3)
    return results


CONNECTED = {"api": "realtime", "outcome": "connected"}
FUNCTION_OK = {"function": "lookup_appointment", "outcome": "ok"}


def metric(metrics: Any, name: str, labels: dict[str, str]) -> float:
    """A sample's value as /metrics shows it (every process's, with the calls process)."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def start_neighbour(share: float) -> subprocess.Popen[bytes]:
    """A process that keeps a CPU busy `share` of the time, in 1 ms bursts."""
    return subprocess.Popen([sys.executable, "-m", "bench.active_calls", "--burn", str(share)])


def burn(share: float) -> None:
    busy_s = 0.001
    idle_s = busy_s * (1 - share) / share
    while True:
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            pass
        time.sleep(idle_s)


def ruleset_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(tz=UTC)


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.active_calls")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--function-every-s", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks per second")
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument(
        "--inline",
        action="store_true",
        help="drive the calls in the service's process (SIP_ROUTER_CALLS_PROCESS=false)",
    )
    parser.add_argument(
        "--object-types",
        action="store_true",
        help="with --inline: the most common tracked types per call",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        nargs=3,
        metavar=("GEN0", "GEN1", "GEN2"),
        help="collector thresholds to try (gc.set_threshold) once the service has started",
    )
    parser.add_argument(
        "--neighbour",
        type=float,
        action="append",
        default=[],
        metavar="SHARE",
        help="a control: during the run with calls, also a process that only keeps a CPU busy"
        " SHARE (0-1) of the time (repeatable); with --calls 1 it shows what the machine's"
        " contention alone does to the decisions",
    )
    parser.add_argument(
        "--peer-competes",
        action="store_true",
        help="run the peer (fake OpenAI, the function's service) at normal CPU priority,"
        " competing with the replica for this machine's CPUs",
    )
    parser.add_argument(
        "--latencies",
        metavar="FILE",
        help="write every decision's latency (seconds) of both runs to FILE as JSON",
    )
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--burn", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    duration_s = 120 + 2 * args.webhooks / args.rate
    if args.burn:
        burn(args.burn)
    if args.peer:
        if not args.peer_competes:
            # The peer stands in for OpenAI and the company's service, which run on other
            # machines: it takes only the CPU the replica leaves (Linux's idle priority).
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        peer(args.calls, args.function_every_s, duration_s)
        return 0
    command = [sys.executable, "-m", "bench.active_calls", "--peer", "--calls", str(args.calls)]
    command += ["--function-every-s", str(args.function_every_s)]
    command += ["--rate", str(args.rate), "--webhooks", str(args.webhooks)]
    if args.peer_competes:
        command.append("--peer-competes")
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port)], stdout=subprocess.PIPE
    )
    assert upstream.stdout is not None
    upstream.stdout.readline()  # listening
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        urls = {**json.loads(child.stdout.readline()), "upstream_port": port}
        urls["peer_pid"] = str(child.pid)
        try:
            # uvloop, as under `serve` (uvicorn's choice) and in the calls process.
            results = uvloop.run(measure(args, urls))
        finally:
            child.stdin.close()
            child.wait(timeout=30)
            upstream.terminate()
            upstream.wait(timeout=10)
    results["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
