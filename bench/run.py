"""Run the benchmarks and write bench/RESULTS.md: `uv run python -m bench [--quick] [--only ...]`.

Phases (all against 127.0.0.1 only, every process started here and stopped here):
  latency     service vs the floor app and the OpenAI example receiver at 50, 200, 500,
              1000 webhooks/s (30 s each)
  info        the service at 500/s with the default log level (info)
  throughput  highest rate held for 30 s with p99 < 50 ms and no errors (1 worker)
  workers2    the same with `--workers 2` and Redis
  reload      ten rule reloads during a 200/s run
  rules       rule engine compile time, memory and per-decision time by size
  profile     py-spy on the service at 1000/s (needs `--profile`; uses `uv run --with py-spy`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
SIP_ROUTER = str(Path(sys.executable).parent / "sip-router")
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1rZXktb2YtMzItYnl0ZXMh"  # fixed: results are comparable
ADMIN_TOKEN = "bench-admin-token"
LATE_S = 5.0
INFO_RATE = 200
PROFILE_RATE = 150  # sustained by the service: the profile shows work, not queueing
PHASES = ("latency", "info", "throughput", "workers2", "reload", "rules", "clients", "profile")
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Placement:
    """Which CPUs the service and the harness (load generator, upstream) may use."""

    service: set[int] | None
    harness: set[int] | None

    everything: set[int] = field(default_factory=lambda: set(os.sched_getaffinity(0)))

    def pin(self, pid: int, cpus: set[int] | None) -> None:
        """Pin `pid` to `cpus`; None means every CPU (children inherit the orchestrator's)."""
        os.sched_setaffinity(pid, cpus if cpus is not None else self.everything)


def placement(pin: bool) -> Placement:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return Placement(None, None)
    return Placement({cpus[0]}, set(cpus[1:]))


class Process:
    """A child in its own session, logging to a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd or ROOT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        self.handle.close()


def wait_http(url: str, timeout_s: float = 30.0, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(
                f"process exited; see {process.log}:\n{process.log.read_text()[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    return sum(tree_cpu_by_pid(pid).values())


def tree_cpu_by_pid(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and of each live descendant."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted = {pid}
    changed = True
    while changed:
        changed = False
        for child, (parent, _) in stats.items():
            if parent in wanted and child not in wanted:
                wanted.add(child)
                changed = True
    return {member: stats[member][1] for member in wanted if member in stats}


def system_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all CPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, busy_limit: float = 0.25) -> float:
    """Wait until other work uses under `busy_limit` CPUs (at most max_wait_s); return it."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, t0 = system_busy_s(), time.monotonic()
        time.sleep(1.0)
        busy = (system_busy_s() - before) / (time.monotonic() - t0)
        if busy < busy_limit or time.monotonic() >= deadline:
            return busy


class Bench:
    """Starts the pieces of one measurement in a scratch directory."""

    def __init__(
        self, scratch: Path, place: Placement, warmup_s: float, quiet_wait_s: float
    ) -> None:
        self.quiet_wait_s = quiet_wait_s
        self.scratch = scratch
        self.place = place
        self.warmup_s = warmup_s
        self.counter = 0
        self.upstream_pids: dict[int, int] = {}

    def _log(self, name: str) -> Path:
        self.counter += 1
        return self.scratch / f"{self.counter:02d}-{name}.log"

    @contextlib.contextmanager
    def upstream(self) -> Iterator[int]:
        port = free_port()
        proc = Process([PYTHON, "-m", "bench.upstream", "--port", str(port)], self._log("upstream"))
        self.place.pin(proc.pid, self.place.harness)
        self.upstream_pids[port] = proc.pid
        try:
            wait_http(f"http://127.0.0.1:{port}/__records", process=proc)
            yield port
        finally:
            proc.stop()

    @contextlib.contextmanager
    def floor(
        self, upstream: int, client: str = "httpx", extra_packages: tuple[str, ...] = ()
    ) -> Iterator[tuple[int, Process]]:
        port = free_port()
        python = [PYTHON]
        if extra_packages:
            # An experiment only: packages the project does not depend on, for this process.
            python = ["uv", "run", "--no-sync", *(f"--with={p}" for p in extra_packages), "python"]
        args = [*python, "-m", "bench.floor_app", "--port", str(port), "--client", client]
        args += ["--upstream", f"http://127.0.0.1:{upstream}/v1"]
        proc = Process(args, self._log(f"floor-{client}"))
        self.place.pin(proc.pid, self.place.service)
        try:
            wait_for_port(port, proc, 120.0)
            yield port, proc
        finally:
            proc.stop()

    @contextlib.contextmanager
    def peer(self, upstream: int) -> Iterator[tuple[int, Process]]:
        """The receiver from OpenAI's FastAPI SIP example (bench/openai_example_app.py)."""
        port = free_port()
        args = [PYTHON, "-m", "bench.openai_example_app", "--port", str(port)]
        args += ["--upstream", f"http://127.0.0.1:{upstream}/v1", "--secret", SECRET]
        proc = Process(args, self._log("peer"))
        self.place.pin(proc.pid, self.place.service)
        try:
            wait_for_port(port, proc, 120.0)
            yield port, proc
        finally:
            proc.stop()

    @contextlib.contextmanager
    def service(
        self,
        upstream: int,
        *,
        rules: Path,
        log_level: str = "warning",
        workers: int = 1,
        redis_url: str | None = None,
        pinned: bool = True,
    ) -> Iterator[tuple[int, Process]]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIP_ROUTER_", "OPENAI_"))}
        env.update(
            {
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1",
                "OPENAI_WEBHOOK_SECRET": SECRET,
                "SIP_ROUTER_RULES": str(rules),
                "SIP_ROUTER_LOG_LEVEL": log_level,
                "SIP_ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
            }
        )
        if redis_url:
            env["SIP_ROUTER_REDIS_URL"] = redis_url
        args = [SIP_ROUTER, "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--workers", str(workers)]
        # The scratch directory as cwd: a developer's .env must not change the numbers.
        proc = Process(args, self._log("service"), env=env, cwd=self.scratch)
        # Set before uvicorn starts its workers, which inherit it.
        self.place.pin(proc.pid, self.place.service if pinned else None)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", process=proc)
            yield port, proc
        finally:
            proc.stop()

    @contextlib.contextmanager
    def redis(self) -> Iterator[str]:
        port = free_port()
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no"]
        proc = Process(args, self._log("redis"))
        self.place.pin(proc.pid, None)
        try:
            wait_for_port(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.stop()

    def load(
        self, port: int, rate: float, duration_s: float, *, pinned: bool = True
    ) -> subprocess.Popen[bytes]:
        self.counter += 1
        out = self.scratch / f"{self.counter:02d}-load-{int(rate)}.json"
        args = [PYTHON, "-m", "bench.loadgen", "--port", str(port), "--rate", str(rate)]
        args += ["--duration", str(duration_s), "--warmup", str(self.warmup_s)]
        args += ["--secret", SECRET, "--out", str(out)]
        proc = subprocess.Popen(args, cwd=ROOT)
        self.place.pin(proc.pid, self.place.harness if pinned else None)
        proc.out = out  # type: ignore[attr-defined]
        return proc


def _own_cpu_s() -> float:
    usage = os.times()
    return usage.user + usage.system


def wait_for_port(port: int, process: Process, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"process exited; see {process.log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout_s} s")


def fetch_records(upstream: int) -> dict[str, list[tuple[str, float]]]:
    text = httpx.get(f"http://127.0.0.1:{upstream}/__records", timeout=30).text
    records: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line:
            item = json.loads(line)
            records.setdefault(item["call_id"], []).append((item["verb"], item["at"]))
    return records


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, int(-(-q * len(values) // 1)) - 1))
    return values[rank]


def dist(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


@dataclass
class RunStats:
    label: str
    rate: float
    duration_s: float
    requests: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    achieved_rate: float
    upstream_ms: dict[str, float]
    round_trip_ms: dict[str, float]
    round_trip_from_send_ms: dict[str, float]
    send_lag_ms: dict[str, float]
    server_cpu_pct: float
    loadgen_cpu_pct: float
    connections: int
    verbs: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def passes(self, p99_limit_ms: float = 50.0) -> bool:
        return (
            self.errors == 0
            and self.round_trip_ms["p99"] < p99_limit_ms
            and self.achieved_rate >= 0.97 * self.rate
        )


def analyze(
    label: str,
    load: dict[str, Any],
    records: dict[str, list[tuple[str, float]]],
    server_cpu_s: float,
    wall_s: float,
) -> RunStats:
    measured = load["calls"][load["warmup_count"] :]
    upstream, round_trip, from_send, lag = [], [], [], []
    errors: Counter[str] = Counter()
    verbs: Counter[str] = Counter()
    ok = 0
    last_done = 0.0
    for call_id, _kind, due, sent, done, http_status, answer in measured:
        seen = [r for r in records.get(call_id, ()) if r[0] != "hangup"]
        if done == 0.0:
            errors[answer or "no answer"] += 1
            continue
        # OpenAI would have given up on a late delivery and sent it again: an error, though
        # its latency still counts in the distributions.
        late = done - due > LATE_S
        if late:
            errors[f"answered after {LATE_S:.0f} s"] += 1
        if http_status != 200 or answer != "processed":
            errors[f"HTTP {http_status} {answer}"] += 1
            continue
        if not seen:
            errors["no upstream request"] += 1
            continue
        if len(seen) > 1:
            errors["more than one upstream request"] += 1
            continue
        ok += 0 if late else 1
        verbs[seen[0][0]] += 1
        upstream.append((seen[0][1] - due) * 1000)
        round_trip.append((done - due) * 1000)
        from_send.append((done - sent) * 1000)
        lag.append((sent - due) * 1000)
        last_done = max(last_done, done)
    first_due = measured[0][2] if measured else 0.0
    span = max(last_done - first_due, load["duration"]) if ok else load["duration"]
    return RunStats(
        label=label,
        rate=load["rate"],
        duration_s=load["duration"],
        requests=len(measured),
        ok=ok,
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        achieved_rate=ok / span,
        upstream_ms=dist(upstream),
        round_trip_ms=dist(round_trip),
        round_trip_from_send_ms=dist(from_send),
        send_lag_ms=dist(lag),
        server_cpu_pct=100 * server_cpu_s / wall_s if wall_s else float("nan"),
        loadgen_cpu_pct=100 * load["cpu_s"] / wall_s if wall_s else float("nan"),
        connections=load["connections_opened"],
        verbs=dict(verbs),
    )


def measure(
    bench: Bench,
    label: str,
    target: tuple[int, Process],
    upstream: int,
    rate: float,
    duration_s: float,
    *,
    pinned: bool = True,
    during: Any = None,
) -> RunStats:
    port, server = target
    fetch_records(upstream)  # forget anything earlier
    idle_before = wait_for_quiet(bench.quiet_wait_s)
    up_pid = bench.upstream_pids[upstream]
    per_pid0 = tree_cpu_by_pid(server.pid)
    cpu0, up0, t0 = sum(per_pid0.values()), tree_cpu_s(up_pid), time.monotonic()
    sys0, me0 = system_busy_s(), _own_cpu_s()
    proc = bench.load(port, rate, duration_s, pinned=pinned)
    extra = during(proc) if during is not None else None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({label})")
    per_pid1 = tree_cpu_by_pid(server.pid)
    cpu1, up1, t1 = sum(per_pid1.values()), tree_cpu_s(up_pid), time.monotonic()
    sys1, me1 = system_busy_s(), _own_cpu_s()
    load = json.loads(proc.out.read_text())  # type: ignore[attr-defined]
    # Preparation (signing) happens before the clock starts; count CPU over sending only.
    wall = max(t1 - t0 - load["prep_s"], 1e-9)
    stats = analyze(label, load, fetch_records(upstream), cpu1 - cpu0, wall)
    ours = (cpu1 - cpu0) + (up1 - up0) + usage.ru_utime + usage.ru_stime + (me1 - me0)
    stats.extra["other_load_cpus"] = max(0.0, (sys1 - sys0) - ours) / (t1 - t0)
    stats.extra["other_load_before_cpus"] = idle_before
    stats.extra["upstream_cpu_pct"] = 100 * (up1 - up0) / wall
    # Per process of the server (workers), to see how evenly the work was spread.
    stats.extra["server_cpu_s_by_process"] = sorted(
        (round(per_pid1[p] - per_pid0.get(p, 0.0), 2) for p in per_pid1), reverse=True
    )
    # Per answered webhook: a server that fell behind did not finish every one it was sent.
    answered = sum(1 for call in load["calls"] if call[4])
    stats.extra["cpu_ms_per_request"] = 1000 * (cpu1 - cpu0) / max(1, answered)
    if extra is not None:
        stats.extra.update(extra)
        stats.extra["calls"] = load["calls"][load["warmup_count"] :]
    print(
        f"  {label:<34} {rate:>6.0f}/s  ok {stats.ok:>6}  err {stats.errors:>4}"
        f"  upstream p50 {stats.upstream_ms['p50']:7.2f} p99 {stats.upstream_ms['p99']:7.2f}"
        f"  rtt p99 {stats.round_trip_ms['p99']:7.2f} max {stats.round_trip_ms['max']:7.1f} ms"
        f"  cpu {stats.server_cpu_pct:4.0f}% {stats.extra['cpu_ms_per_request']:.2f} ms/req"
        f"  other load {stats.extra['other_load_cpus']:.2f} CPUs",
        flush=True,
    )
    return stats


# ---------------------------------------------------------------- phases


@dataclass
class Config:
    quick: bool
    duration_s: float
    rates: tuple[int, ...]
    example_rules: Path
    profile: bool = False


def phase_latency(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    rows = []
    with bench.upstream() as up:
        for rate in cfg.rates:
            with bench.floor(up) as target:
                floor = measure(bench, "floor", target, up, rate, cfg.duration_s)
            with bench.peer(up) as target:
                peer = measure(bench, "OpenAI example receiver", target, up, rate, cfg.duration_s)
            with bench.service(up, rules=cfg.example_rules) as target:
                ours = measure(bench, "sip-router (log warning)", target, up, rate, cfg.duration_s)
            rows.append(
                {
                    "rate": rate,
                    "floor": asdict(floor),
                    "peer": asdict(peer),
                    "service": asdict(ours),
                }
            )
    out["latency"] = rows


def phase_info(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    # A rate every configuration sustains, so the log level's cost is not hidden by queueing.
    rate = INFO_RATE
    with bench.upstream() as up, bench.service(up, rules=cfg.example_rules, log_level="info") as t:
        out["info"] = asdict(measure(bench, "sip-router (log info)", t, up, rate, cfg.duration_s))


def _search(
    label: str,
    run: Any,
    max_steps: int,
    known: list[dict[str, Any]] | None = None,
    first: int = 1000,
) -> dict[str, Any]:
    """Find the highest passing rate: `first`, then up by 25% or bisect down (to 25/s)."""
    tried: list[dict[str, Any]] = []
    passed = [r["rate"] for r in known or [] if _passed(r)]
    failed = [r["rate"] for r in known or [] if not _passed(r)]
    for _ in range(max_steps):
        low = max(passed, default=0)
        high = min((r for r in failed if r > low), default=None)
        if high is None:
            rate = first if low < first else int(round(low * 1.25 / 50) * 50)
        else:
            rate = int(round((low + high) / 2 / 25) * 25)
            if rate in (low, high):
                break
        stats = asdict(run(rate))
        tried.append(stats)
        (passed if _passed(stats) else failed).append(rate)
    best = max(passed, default=None)
    return {"label": label, "best": best, "tried": tried, "known": known or []}


def _passed(row: dict[str, Any]) -> bool:
    return bool(
        row["errors"] == 0
        and row["round_trip_ms"]["p99"] < 50.0
        and row["achieved_rate"] >= 0.97 * row["rate"]
    )


def phase_throughput(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    with bench.upstream() as up:

        def run(rate: int) -> RunStats:
            with bench.service(up, rules=cfg.example_rules) as target:
                return measure(bench, "sip-router 1 worker", target, up, rate, cfg.duration_s)

        # The latency runs had the same configuration: they count as tries.
        known = [row["service"] for row in out.get("latency", [])]
        out["throughput"] = _search("1 worker", run, 2 if cfg.quick else 4, known)


def phase_workers2(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    with bench.redis() as redis_url, bench.upstream() as up:

        def run(rate: int) -> RunStats:
            with bench.service(
                up, rules=cfg.example_rules, workers=2, redis_url=redis_url, pinned=False
            ) as target:
                return measure(
                    bench,
                    "sip-router 2 workers + Redis",
                    target,
                    up,
                    rate,
                    cfg.duration_s,
                    pinned=False,
                )

        # Two workers can at best double one worker's rate: start there, not at 1,000/s.
        one = (out.get("throughput") or {}).get("best")
        first = min(1000, int(round(2 * one / 25) * 25)) if one else 1000
        out["workers2"] = _search("2 workers + Redis", run, 1 if cfg.quick else 3, first=first)


def phase_reload(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    rules_dir = bench.scratch / "reload-rules"
    shutil.copytree(cfg.example_rules.parent, rules_dir, dirs_exist_ok=True)
    rules = rules_dir / cfg.example_rules.name
    original = rules.read_text()
    count = 3 if cfg.quick else 10
    rate = 200
    with bench.upstream() as up:
        with bench.service(up, rules=rules) as target:
            baseline = measure(bench, "sip-router, no reloads", target, up, rate, cfg.duration_s)
        with bench.service(up, rules=rules) as target:
            port = target[0]

            def reload_during(_proc: subprocess.Popen[bytes]) -> dict[str, Any]:
                events = []
                # The load generator prepares its requests first; its clock starts after.
                time.sleep(1.5 + bench.warmup_s)
                spacing = cfg.duration_s / count
                with httpx.Client(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                    timeout=30,
                ) as client:
                    for k in range(count):
                        started = time.time()
                        fresh = rules.with_suffix(".tmp")
                        fresh.write_text(original + f"\n# reload {k} at {started}\n")
                        os.replace(fresh, rules)
                        answer = client.post("/admin/reload")
                        finished = time.time()
                        events.append(
                            {
                                "start": started,
                                "end": finished,
                                "status": answer.status_code,
                                "version": answer.json().get("version"),
                            }
                        )
                        time.sleep(max(0.0, spacing - (finished - started)))
                    metrics = client.get("/metrics").text
                return {"reloads": events, "metrics_reloads": _reload_counts(metrics)}

            stats = measure(
                bench,
                "sip-router, reloads",
                target,
                up,
                rate,
                cfg.duration_s,
                during=reload_during,
            )
    rules.write_text(original)
    events = stats.extra["reloads"]
    calls = stats.extra.pop("calls")
    near: list[float] = []
    far: list[float] = []
    for _call_id, _kind, due, _sent, done, status, answer in calls:
        if done == 0.0 or status != 200 or answer != "processed":
            continue
        close = any(e["start"] - 0.05 <= due <= e["end"] + 0.25 for e in events)
        (near if close else far).append((done - due) * 1000)
    stats.extra["near_reload_ms"] = dist(near) | {"n": len(near)}
    stats.extra["away_from_reload_ms"] = dist(far) | {"n": len(far)}
    stats.extra["reload_duration_ms"] = dist([(e["end"] - e["start"]) * 1000 for e in events])
    out["reload"] = {"baseline": asdict(baseline), "reloads": asdict(stats)}


def _reload_counts(metrics: str) -> dict[str, float]:
    counts = {}
    for match in re.finditer(
        r'^sip_router_rules_reloads_total\{result="(\w+)"\} ([0-9.e+]+)$', metrics, re.M
    ):
        counts[match.group(1)] = float(match.group(2))
    return counts


# (rules, list entries, rule shapes): "numbers" has no header rules (all rules indexable).
RULE_SIZES_FULL = (
    (10, 10, "mixed"),
    (1000, 10, "mixed"),
    (10000, 10, "mixed"),
    (10, 1_000_000, "mixed"),
    (1000, 100_000, "mixed"),
    (1000, 1_000_000, "mixed"),
    (1000, 1_000_000, "numbers"),
    (10000, 1_000_000, "mixed"),
)
RULE_SIZES_QUICK = ((10, 10, "mixed"), (1000, 100_000, "mixed"), (1000, 100_000, "numbers"))


def phase_rules(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    from bench.rule_scale import write_list_file, write_rule_file

    directory = bench.scratch / "rule-files"
    directory.mkdir(exist_ok=True)
    rows = []
    sizes = RULE_SIZES_QUICK if cfg.quick else RULE_SIZES_FULL
    samples: dict[int, Path] = {}
    for rules, entries, shapes in sizes:
        list_name = f"list-{entries}.txt"
        if entries not in samples:
            sample = write_list_file(directory / list_name, entries)
            samples[entries] = directory / f"list-{entries}.json"
            samples[entries].write_text(json.dumps(sample))
        path = write_rule_file(directory, rules, list_name, headers=shapes == "mixed")
        result = directory / f"result-{rules}-{entries}-{shapes}.json"
        args = [PYTHON, "-m", "bench.rule_scale", "--file", str(path), "--tenants", str(rules - 2)]
        args += ["--blocked-sample", str(samples[entries]), "--out", str(result)]
        args += ["--budget", "1" if cfg.quick else "3"]
        proc = subprocess.Popen(args, cwd=ROOT)
        bench.place.pin(proc.pid, bench.place.service)
        if proc.wait() != 0:
            raise RuntimeError(f"rule scale run failed for {rules} rules, {entries} entries")
        row = json.loads(result.read_text()) | {"list_entries": entries, "shapes": shapes}
        rows.append(row)
        print(
            f"  rules {rules:>6} {shapes:<7} list {entries:>8}: compile {row['compile_s']:6.2f} s"
            f"  rss {row['rss_after_mib']:6.1f} MiB (peak {row['rss_peak_mib']:6.1f})"
            f"  decide p50 {row['all']['p50_us']:7.1f} p99 {row['all']['p99_us']:7.1f} us",
            flush=True,
        )
    # The example file, for reference: its default renders a template.
    result = directory / "result-example.json"
    args = [PYTHON, "-m", "bench.rule_scale", "--file", str(cfg.example_rules), "--tenants", "0"]
    args += ["--out", str(result), "--budget", "1"]
    subprocess.run(args, cwd=ROOT, check=True)
    example = json.loads(result.read_text())
    out["rules"] = {"sizes": rows, "example": example}
    if cfg.profile:
        out["rules"]["profile"] = profile_compile(bench, directory, samples[10])


PROFILED_RULES = 3000


def profile_compile(bench: Bench, directory: Path, sample: Path) -> dict[str, Any]:
    """py-spy over a separate compile of a 3,000-rule file (its numbers are not reported)."""
    from bench.rule_scale import write_rule_file

    path = write_rule_file(directory, PROFILED_RULES, "list-10.txt")
    raw = BENCH / "profiles" / f"rules-{PROFILED_RULES}-compile.txt"
    raw.parent.mkdir(exist_ok=True)
    args = ["uv", "run", "--no-sync", "--with", "py-spy", "py-spy", "record", "--rate", "100"]
    args += ["--format", "raw", "--output", str(raw), "--", PYTHON, "-m", "bench.rule_scale"]
    args += ["--file", str(path), "--tenants", str(PROFILED_RULES - 2), "--budget", "0.2"]
    args += ["--blocked-sample", str(sample), "--out", str(directory / "profiled.json")]
    proc = subprocess.Popen(args, cwd=ROOT)
    bench.place.pin(proc.pid, bench.place.service)
    proc.wait()
    return {
        "rules": PROFILED_RULES,
        "file": str(raw.relative_to(ROOT)),
        "functions": summarize_app_functions(raw) if raw.exists() else [],
    }


CLIENT_VARIANTS = (
    ("httpx", (), "httpx over aiohttp (httpx-aiohttp), the service's client"),
    ("httpcore", (), "httpx over httpcore, httpx's default transport"),
    ("lean", (), "httpx client over a minimal transport (bench/lean_transport.py)"),
    ("aiohttp", (), "aiohttp's own client, same pool size"),
    ("none", (), "no upstream request (uvicorn alone)"),
)
CLIENTS_RATE = 500


def phase_clients(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    """Where the floor's time goes: the same floor with other upstream clients (10 s each)."""
    rows = []
    duration = cfg.duration_s / 3
    with bench.upstream() as up:
        for client, packages, description in CLIENT_VARIANTS:
            with bench.floor(up, client, packages) as target:
                stats = measure(bench, f"floor: {description}", target, up, CLIENTS_RATE, duration)
            rows.append({"description": description, "stats": asdict(stats)})
    out["clients"] = rows


def phase_profile(bench: Bench, cfg: Config, out: dict[str, Any]) -> None:
    profiles = BENCH / "profiles"
    profiles.mkdir(exist_ok=True)
    rate = PROFILE_RATE
    duration = min(cfg.duration_s, 20.0)
    raw = profiles / f"service-{rate}rps.txt"
    with bench.upstream() as up, bench.service(up, rules=cfg.example_rules) as target:

        def record(_proc: subprocess.Popen[bytes]) -> dict[str, Any]:
            time.sleep(1.0)
            base = [
                "uv",
                "run",
                "--no-sync",
                "--with",
                "py-spy",
                "py-spy",
                "record",
                "--pid",
                str(target[1].pid),
            ]
            # Blocking sampling gives whole stacks; it slows the service a little, so the
            # profiled run's latencies are not reported as results.
            base += ["--rate", "200", "--duration", str(int(duration))]
            # One sampler: each pauses the service, two would double the disturbance.
            spy = subprocess.Popen([*base, "--format", "raw", "--output", str(raw)], cwd=ROOT)
            bench.place.pin(spy.pid, bench.place.harness)
            spy.wait()
            return {"raw": str(raw.relative_to(ROOT))}

        stats = measure(
            bench, "sip-router under py-spy", target, up, rate, duration + 3, during=record
        )
    stats.extra.pop("calls", None)
    out["profile"] = {
        "run": asdict(stats),
        "summary": summarize_profile(raw, stats.extra.get("cpu_ms_per_request")),
    }


STAGES = (
    ("whole ASGI app (FastAPI + handler)", "RequestResponseCycle.run_asgi ("),
    ("  FastAPI/Starlette outside the handler", None),
    ("  sync dependency run in a thread (get_services)", "run_in_threadpool ("),
    ("  webhook handler (CallProcessor.handle)", "CallProcessor.handle (app/"),
    ("    verify signature", "WebhookVerifier.verify (app/"),
    ("    parse event (pydantic)", "parse_event (app/"),
    ("    SIP identity", "parse_parties (app/"),
    ("    decide (rules + accept body template)", "Ruleset.decide (app/"),
    ("    store (claim, finish, call log)", "(app/store/"),
    ("    upstream request (httpx + httpcore)", "OpenAICallsClient.perform (app/"),
    ("    record: log line + metrics + call log", "CallProcessor._record (app/"),
    ("  JSON answer (JSONResponse)", "JSONResponse.render ("),
    ("event loop, uvicorn protocol, sockets (outside the app)", None),
)


def summarize_profile(raw: Path, cpu_ms_per_request: float | None = None) -> dict[str, Any]:
    """Shares of the main thread's samples: per stage of a webhook, and per function."""
    if not raw.exists():
        return {}
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any("threading.py" in f for f in frames):
            continue  # worker threads: idle, or the reload thread
        count = int(count_text)
        total += count
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
        in_app = any("RequestResponseCycle.run_asgi (" in f for f in frames)
        in_handler = any("CallProcessor.handle (app/" in f for f in frames)
        for stage, marker in STAGES:
            if marker is not None and any(marker in f for f in frames):
                stages[stage] += count
        if in_app and not in_handler:
            stages["  FastAPI/Starlette outside the handler"] += count
        if not in_app:
            stages["event loop, uvicorn protocol, sockets (outside the app)"] += count
    if not total:
        return {}

    def share(n: int) -> float:
        return 100 * n / total

    return {
        "samples": total,
        "cpu_ms_per_request": cpu_ms_per_request,
        "stages": [(s, share(stages[s])) for s, _ in STAGES],
        "self_top": [(n, share(c)) for n, c in own.most_common(25)],
        "inclusive_top": [(n, share(c)) for n, c in inclusive.most_common(40)],
    }


def summarize_app_functions(raw: Path) -> list[tuple[str, float]]:
    """Inclusive shares of the project's own functions in a collapsed-stack profile."""
    total = 0
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for name in {_short(f) for f in stack.split(";")}:
            if "(app/" in name:
                inclusive[name] += count
    return [(n, 100 * c / total) for n, c in inclusive.most_common(12)] if total else []


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    where = re.sub(r".*/site-packages/", "", where)
    where = re.sub(r".*/lib/python3\.\d+/", "", where)
    where = re.sub(r"^.*?/work/main/", "", where)
    where = re.sub(r":\d+$", "", where)
    return f"{name} ({where})"


# ---------------------------------------------------------------- report


# Profile keys that make sip-router stay with an accepted call (open its sideband).
CALL_CONTROL_KEYS = ("greeting", "transfer", "end_call", "functions", "transcript")


def decision_only_rules(rules: Path, scratch: Path) -> Path:
    """A copy of `rules` (and its folder) that decides the same way but never stays with a
    call: call-control keys are dropped from profiles and refers go to the ringing call.

    The decision benchmarks compare deciding and acting with the floor and the peer, which
    do nothing after the accept; a fake upstream without sidebands would otherwise leave
    every accepted call reconnecting. Staying with calls is measured by bench.active_calls.
    """
    import yaml

    folder = scratch / "decision-only-rules"
    shutil.copytree(rules.parent, folder, dirs_exist_ok=True)
    document = yaml.safe_load(rules.read_text())
    for profile in (document.get("profiles") or {}).values():
        for key in CALL_CONTROL_KEYS:
            profile.pop(key, None)
    for rule in document.get("rules") or []:
        if isinstance(rule.get("refer"), dict):
            rule["refer"] = {"target_uri": rule["refer"]["target_uri"], "before_accept": True}
    for key in ("transfer_targets", "functions"):
        document.pop(key, None)
    copy = folder / rules.name
    # JSON is YAML, and keeps times like "08:00" the strings they are.
    copy.write_text(json.dumps(document, indent=1, ensure_ascii=False, default=str))
    return copy


def decision_path(rules: Path) -> str:
    """Which rule an ordinary call takes now: schedules make the path depend on the time."""
    from app.rules.loader import load_ruleset
    from app.rules.simulation import simulated_context

    ruleset = load_ruleset(rules)
    now = datetime.now(tz=UTC)
    decision = ruleset.decide(simulated_context(ruleset, "+14155550123", "+14155550100", now))
    local = now.astimezone(ruleset.timezone)
    how = f"{decision.action}" + (f", profile {decision.profile}" if decision.profile else "")
    extra = ""
    if decision.max_duration_s:
        extra = f"; each such call also schedules a hangup after {decision.max_duration_s:.0f} s"
    return (
        f"at the start ({local:%a %Y-%m-%d %H:%M} {ruleset.timezone.key}), an ordinary call to"
        f" the main line was decided by `{decision.rule or 'default'}` ({how}){extra}"
    )


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    import fastapi
    import uvicorn

    versions = {"uvicorn": uvicorn.__version__, "fastapi": fastapi.__version__}
    versions["httpx"] = httpx.__version__
    for module in ("uvloop", "httptools"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    # A fixed pure-Python loop: virtual CPUs' speed varies from run to run.
    started = time.perf_counter()
    sum(i * i for i in range(10**7))
    calibration_s = time.perf_counter() - started
    return {
        "calibration_s": calibration_s,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "versions": versions,
    }


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _latency_row(label: str, s: dict[str, Any]) -> str:
    u, r = s["upstream_ms"], s["round_trip_ms"]
    return (
        f"| {s['rate']:.0f} | {label} | {_ms(u['p50'])} | {_ms(u['p95'])} | {_ms(u['p99'])} |"
        f" {_ms(u['max'])} | {_ms(r['p50'])} | {_ms(r['p95'])} | {_ms(r['p99'])} |"
        f" {_ms(r['max'])} |"
        f" {s['errors']} | {s['achieved_rate']:.0f} | {s['server_cpu_pct']:.0f}% |"
        f" {s['extra'].get('cpu_ms_per_request', float('nan')):.2f} |"
        f" {s['send_lag_ms']['p99']:.2f} | {s['extra'].get('other_load_cpus', float('nan')):.2f} |"
    )


LATENCY_HEADER = (
    "| rate/s | server | upstream p50 | p95 | p99 | max | round trip p50 | p95 | p99 | max |"
    " errors | achieved/s | server CPU | CPU ms/req | gen. lag p99 | other load |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for row in results.get("latency", []):
        if row["rate"] != 500:
            continue
        ours = row["service"]["upstream_ms"]["p99"]
        floor = row["floor"]["upstream_ms"]["p99"]
        ours_rt = row["service"]["round_trip_ms"]["p99"]
        floor_rt = row["floor"]["round_trip_ms"]["p99"]
        met = ours - floor <= 5.0 and ours <= 1.5 * floor
        met_rt = ours_rt - floor_rt <= 5.0 and ours_rt <= 1.5 * floor_rt
        rows.append(
            (
                "Decision latency p99 at 500/s (webhook sent -> upstream request): "
                "<= floor + 5 ms and <= 1.5 x floor",
                "met" if met else "NOT met",
                f"{ours:.2f} ms vs floor {floor:.2f} ms: +{ours - floor:.2f} ms,"
                f" {ours / floor:.2f} x",
            )
        )
        rows.append(
            (
                "Same, webhook round trip",
                "met" if met_rt else "NOT met",
                f"{ours_rt:.2f} ms vs floor {floor_rt:.2f} ms: +{ours_rt - floor_rt:.2f} ms,"
                f" {ours_rt / floor_rt:.2f} x",
            )
        )
    if "throughput" in results:
        best = results["throughput"]["best"]
        rows.append(
            (
                "Throughput (1 worker): >= 1,000 verified webhooks/s, no errors, p99 < 50 ms",
                "met" if best and best >= 1000 else "NOT met",
                f"highest passing rate tried: {best or 'none'}/s",
            )
        )
    if "workers2" in results:
        best = results["workers2"]["best"]
        rows.append(
            (
                "Throughput (2 workers + Redis): >= 1,000/s",
                "met" if best and best >= 1000 else "NOT met",
                f"highest passing rate tried: {best or 'none'}/s",
            )
        )
    for row in results.get("rules", {}).get("sizes", []):
        if row["rules"] == 1000 and row["list_entries"] == 1_000_000:
            p99 = row["all"]["p99_us"]
            rows.append(
                (
                    "Per-decision p99 <= 20 us at 1,000 rules and 1,000,000 list entries"
                    f" ({row.get('shapes', 'mixed')} rules)",
                    "met" if p99 <= 20 else "NOT met",
                    f"p99 {p99:.1f} us (p50 {row['all']['p50_us']:.1f} us)",
                )
            )
        if (
            row["list_entries"] == 1_000_000
            and row["rules"] in (10, 1000)
            and row.get("shapes") == "mixed"
        ):
            ok = row["compile_s"] <= 5 and row["rss_peak_mib"] <= 400
            rows.append(
                (
                    "Compile <= 5 s and <= 400 MB resident, 1,000,000 entries,"
                    f" {row['rules']} rules",
                    "met" if ok else "NOT met",
                    f"compile {row['compile_s']:.2f} s; resident {row['rss_after_mib']:.0f} MiB"
                    f" after load, peak {row['rss_peak_mib']:.0f} MiB",
                )
            )
    if "reload" in results:
        base = results["reload"]["baseline"]
        rel = results["reload"]["reloads"]
        # The noise: p99 of the runs of the same configuration without reloads.
        same = [base] + [
            row["service"] for row in results.get("latency", []) if row["rate"] == base["rate"]
        ]
        band = [r["round_trip_ms"]["p99"] for r in same]
        p99 = rel["round_trip_ms"]["p99"]
        near = rel["extra"]["near_reload_ms"]
        away = rel["extra"]["away_from_reload_ms"]
        rows.append(
            (
                "Reload under load: no failed webhook",
                "met" if rel["errors"] == 0 else "NOT met",
                f"{rel['errors']} failed of {rel['requests']}",
            )
        )
        rows.append(
            (
                "Reload under load: p99 unchanged within noise (the p99s of the runs"
                " without reloads, +10%)",
                "met" if p99 <= max(band) * 1.1 else "NOT met",
                f"p99 {p99:.2f} ms with reloads; without: "
                + ", ".join(f"{b:.2f}" for b in band)
                + f" ms. Same run, webhooks due during a reload: p99 {near['p99']:.2f} ms,"
                f" max {near['max']:.2f}; the others: p99 {away['p99']:.2f} ms",
            )
        )
    return rows


def render(results: dict[str, Any], notes: str) -> str:
    m = results["machine"]
    lines = [
        "# sip-router benchmarks",
        "",
        "Generated by `uv run python -m bench` (bench/run.py); the notes section below is kept",
        "across runs. Raw numbers of the last run: bench/results.json.",
        "",
        f"- Date: {m['date']}; commit {m['commit']}",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}",
        f"- CPU speed check: `sum(i * i for i in range(10**7))` took"
        f" {m.get('calibration_s', float('nan')):.2f} s at the start",
        "- Stack: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Mode: {results['mode']}",
        f"- CPU placement: {results['placement']}",
        f"- Rule path: {results.get('decision_path', 'not recorded')}",
        *(f"- Re-run: {line}" for line in results.get("reruns", [])),
        "",
    ]
    rows = targets(results)
    if rows:
        lines += ["## Targets", "", "| target | result | numbers |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        lines.append("")
    lines += [NOTES_START, notes.strip() or "(no notes yet)", NOTES_END, ""]
    if "latency" in results:
        lines += [
            "## 1-2. Decision latency, against the floor",
            "",
            "Milliseconds, measured from each webhook's scheduled send time. *upstream* = until",
            "the fake OpenAI received the action request; *round trip* = until the webhook's",
            "answer arrived. *gen. lag* = how late the generator wrote requests (timer slack,",
            "or all 512 connections busy; included in the latencies). *CPU ms/req* = the",
            "server's CPU time over the run / webhooks answered. *other load* = CPUs used by",
            "processes outside the benchmark during the run. Unique calls, realistic SIP",
            "headers, routing_rules/rules.yaml. *OpenAI example* = the receiver from OpenAI's",
            "FastAPI SIP example (bench/openai_example_app.py: `webhooks.unwrap`,",
            "`realtime.calls.accept`), accepting every call.",
            "",
            LATENCY_HEADER,
        ]
        for row in results["latency"]:
            lines.append(_latency_row("floor", row["floor"]))
            if "peer" in row:
                lines.append(_latency_row("OpenAI example", row["peer"]))
            lines.append(_latency_row("sip-router", row["service"]))
        lines += [
            "",
            "| rate/s | p99 upstream: ours / floor | ratio | difference ms |",
            "|---:|---:|---:|---:|",
        ]
        for row in results["latency"]:
            ours = row["service"]["upstream_ms"]["p99"]
            floor = row["floor"]["upstream_ms"]["p99"]
            lines.append(
                f"| {row['rate']} | {ours:.2f} / {floor:.2f} | {ours / floor:.2f} |"
                f" {ours - floor:+.2f} |"
            )
        verbs = Counter[str]()
        for row in results["latency"]:
            verbs.update(row["service"]["verbs"])
        lines += [
            "",
            "Actions the service sent (all rates): "
            + ", ".join(f"{v} {c}" for v, c in sorted(verbs.items())),
            "",
        ]
        errors = [
            (row["rate"], who, row[who]["error_kinds"])
            for row in results["latency"]
            for who in ("floor", "peer", "service")
            if who in row and row[who]["error_kinds"]
        ]
        for rate, who, kinds in errors:
            lines.append(f"- errors at {rate}/s ({who}): {kinds}")
        lines.append("")
    if "info" in results:
        lines += ["## Default log level (info)", "", LATENCY_HEADER]
        for row in results.get("latency", []):
            if row["rate"] == results["info"]["rate"]:
                lines.append(_latency_row("sip-router, warning", row["service"]))
        lines += [_latency_row("sip-router, info", results["info"]), ""]
    for key, title in (
        ("throughput", "## 3. Throughput, 1 worker (service pinned to one CPU)"),
        ("workers2", "## 3b. Throughput, 2 workers + Redis (no CPU pinning)"),
    ):
        if key not in results:
            continue
        found = results[key]
        lines += [
            title,
            "",
            f"Highest rate passing (30 s, p99 < 50 ms, no errors, >= 97% of the rate"
            f" achieved): **{found['best'] or 'none'}/s**",
            "",
            LATENCY_HEADER,
        ]
        lines += [_latency_row(found["label"] + " (latency run)", row) for row in found["known"]]
        lines += [_latency_row(found["label"], row) for row in found["tried"]]
        for row in found["tried"]:
            if row["error_kinds"]:
                lines.append(f"- errors at {row['rate']:.0f}/s: {row['error_kinds']}")
            by_process = row["extra"].get("server_cpu_s_by_process") or []
            if key == "workers2" and by_process:
                lines.append(
                    f"- CPU seconds by server process at {row['rate']:.0f}/s (workers, master,"
                    f" helper): {by_process}"
                )
        lines.append("")
    if "reload" in results:
        base, rel = results["reload"]["baseline"], results["reload"]["reloads"]
        extra = rel["extra"]
        lines += [
            "## 5. Reload under load (200/s)",
            "",
            LATENCY_HEADER,
            _latency_row("no reloads", base),
            _latency_row("10 reloads", rel),
            "",
            f"- reloads: {len(extra['reloads'])} requested, answers "
            f"{Counter(e['status'] for e in extra['reloads'])}, versions "
            f"{len({e['version'] for e in extra['reloads']})} distinct;"
            f" service counter {extra['metrics_reloads']}",
            f"- reload request time ms: p50 {extra['reload_duration_ms']['p50']:.1f},"
            f" max {extra['reload_duration_ms']['max']:.1f}",
            f"- round trip of webhooks due during a reload (n={extra['near_reload_ms']['n']}):"
            f" p50 {extra['near_reload_ms']['p50']:.2f}, p99 {extra['near_reload_ms']['p99']:.2f},"
            f" max {extra['near_reload_ms']['max']:.2f} ms; the others"
            f" (n={extra['away_from_reload_ms']['n']}): p99"
            f" {extra['away_from_reload_ms']['p99']:.2f}, max"
            f" {extra['away_from_reload_ms']['max']:.2f} ms",
            "",
        ]
    if "rules" in results:
        lines += [
            "## 4. Rule engine scale (in process, one CPU)",
            "",
            "Generated multi-tenant rule files (bench/rule_scale.py): a blocked-list rule",
            "first, then tenant rules (60% called DID, 15% DID + schedule, 10% caller prefix +",
            "DID, 10% header equals a tenant id, 5% DID + VIP list); *numbers* replaces the",
            "header rules by DID rules. Calls: 5% listed, 3% withheld, 60% a random tenant's",
            "DID, 12% a tenant header, 20% no match (every rule tried). The list file",
            "is 99% E.164 numbers and 1% prefixes. Memory: VmRSS of a fresh process after",
            "imports, after loading, and its peak (VmHWM).",
            "",
            "| rules | shapes | list entries | compile s | RSS before MiB | after | peak |"
            " decide p50 us | p99 | max | no-match p50 | no-match p99 |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["rules"]["sizes"]:
            miss = row["by_kind"]["unknown"]
            lines.append(
                f"| {row['rules']} | {row.get('shapes', 'mixed')} | {row['list_entries']:,} |"
                f" {row['compile_s']:.2f} |"
                f" {row['rss_before_mib']:.0f} | {row['rss_after_mib']:.0f} |"
                f" {row['rss_peak_mib']:.0f} | {row['all']['p50_us']:.1f} |"
                f" {row['all']['p99_us']:.1f} | {row['all']['max_us']:.0f} |"
                f" {miss['p50_us']:.1f} | {miss['p99_us']:.1f} |"
            )
        ex = results["rules"]["example"]
        prof = results["rules"].get("profile")
        if prof:
            lines += [
                "",
                f"Profile of loading a {prof['rules']:,}-rule file and a few decisions (py-spy,"
                f" {prof['file']}), inclusive shares of the project's functions:",
                "",
            ]
            lines += [f"- `{n}`: {p:.1f}%" for n, p in prof["functions"]]
        lines += [
            "",
            f"routing_rules/rules.yaml ({ex['rules']} rules): compile"
            f" {ex['compile_s']:.3f} s, decide p50 {ex['all']['p50_us']:.1f} us,"
            f" p99 {ex['all']['p99_us']:.1f} us (its default renders a template).",
            "",
        ]
    if "clients" in results:
        lines += [
            f"## Where the floor's time goes: upstream client (floor at {CLIENTS_RATE}/s,"
            " 10 s each)",
            "",
            "The floor app with other upstream clients: this is an experiment, run with"
            " `uv run --no-sync --with ...` so the project's dependencies stay as they are.",
            "",
            LATENCY_HEADER,
        ]
        lines += [_latency_row(r["description"], r["stats"]) for r in results["clients"]]
        lines.append("")
    if "profile" in results and results["profile"].get("summary"):
        prof = results["profile"]
        summary = prof["summary"]
        lines += [
            f"## Profile: the service at {PROFILE_RATE}/s (py-spy, 200 Hz)",
            "",
            f"{summary['samples']} samples of the event loop thread;"
            f" {prof['run']['extra'].get('raw')} holds the collapsed stacks (open it in"
            " speedscope or flamegraph.pl). Sampling pauses the service, so this run's"
            " latencies are not results.",
            "",
            "Shares of the main thread's samples (the event loop); ms per webhook = share x"
            " the service's CPU per webhook in that run"
            f" ({summary.get('cpu_ms_per_request') or float('nan'):.2f} ms).",
            "",
            "| stage (inclusive) | share of samples | ms per webhook |",
            "|---|---:|---:|",
        ]
        per = summary.get("cpu_ms_per_request") or float("nan")
        lines += [
            f"| {s.replace('  ', '&nbsp;&nbsp;')} | {p:.1f}% | {p * per / 100:.2f} |"
            for s, p in summary["stages"]
        ]
        lines += ["", "| function (self time) | share |", "|---|---:|"]
        lines += [f"| `{n}` | {p:.1f}% |" for n, p in summary["self_top"][:15]]
        lines.append("")
    lines += [
        "## How it is measured",
        "",
        "- One command: `uv run python -m bench` (everything, about 15 minutes);"
        " `--quick` for a smoke run of every phase; `--only latency,rules` for a subset;"
        " `--profile` adds the py-spy phases (uses `uv run --no-sync --with py-spy`); the"
        " clients phase uses `uv run --no-sync --with aiohttp`. Before each run it waits"
        " (up to `--quiet-wait` s) for other work on the machine to stop.",
        "- Load generator (bench/loadgen.py): its own process, open loop. All webhooks are"
        " built and signed (Standard Webhooks, the service's secret) before the clock starts;"
        " request i is due at start + i/rate and latency counts from that due time, so a"
        " slow server cannot hide queueing (no coordinated omission). Keep-alive connection"
        " pool (up to 512) used round-robin, a new connection when none is idle. The first"
        " 3 s of each run are warm-up at the same rate and are not counted.",
        "- Fake upstream (bench/upstream.py): raw asyncio HTTP/1.1, answers 200 with an empty"
        " body, records each request's arrival (time.time(), the generator's clock) by"
        " call_id. It costs about 0.1 ms of CPU per request; tests/fake_openai.py, which"
        " checks every body against the OpenAPI schema, costs 0.38 ms (measured), which at"
        " 1,000/s would take 38% of the CPU the load generator needs.",
        "- Floor (bench/floor_app.py): a raw ASGI app under the same uvicorn settings"
        " (uvloop, httptools, no access log) that forwards each webhook body to the fake"
        " upstream with the same httpx client settings: no verification, rules, store or logs.",
        "- Service: `sip-router serve --host 127.0.0.1 --workers N`, not dry-run, log level"
        " warning unless noted, memory store (Redis for 2 workers). A fresh service per run.",
        "- Errors: any answer other than HTTP 200 `processed`, an answer more than 5 s after"
        " the webhook was due (OpenAI would have retried it) or none at all, no upstream"
        " request, or more than one for a call.",
        "- Pass (throughput): 30 s at the rate with no errors, round-trip p99 < 50 ms and at"
        " least 97% of the rate answered.",
        "- CPU placement: with 2+ CPUs, the service (or floor) is pinned to CPU 0 and the"
        " load generator and fake upstream to the others, so they do not steal the service's"
        " CPU; the 2-worker run is not pinned.",
        "",
    ]
    return "\n".join(lines)


def existing_notes(path: Path) -> str:
    if not path.exists():
        return ""
    text = path.read_text()
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start < 0 or end < 0:
        return ""
    return text[start + len(NOTES_START) : end].strip()


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke check")
    parser.add_argument("--only", help="comma-separated phases: " + ",".join(PHASES))
    parser.add_argument("--profile", action="store_true", help="also run the py-spy phase")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other work to stop",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other phases of bench/results.json and replace only those run now",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="write RESULTS.md again from bench/results.json, without measuring",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        saved = json.loads((BENCH / "results.json").read_text())
        args.out.write_text(render(saved, existing_notes(args.out)))
        print(f"wrote {args.out} from bench/results.json")
        return 0
    chosen = [p for p in PHASES if p != "profile"] if not args.only else args.only.split(",")
    if args.profile and "profile" not in chosen:
        chosen.append("profile")
    unknown = set(chosen) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    scratch = Path(tempfile.mkdtemp(prefix="sip-router-bench-"))
    cfg = Config(
        quick=args.quick,
        duration_s=3.0 if args.quick else 30.0,
        rates=(50, 500) if args.quick else (50, 200, 500, 1000),
        example_rules=decision_only_rules(ROOT / "routing_rules" / "rules.yaml", scratch),
        profile="profile" in chosen,
    )
    place = placement(not args.no_pin)
    # The orchestrator itself stays off the service's CPU.
    place.pin(os.getpid(), place.harness)
    results: dict[str, Any] = {
        "machine": machine(),
        "mode": ("quick (3 s runs, 1 s warm-up)" if args.quick else "full (30 s runs, 3 s warm-up)")
        + f"; phases: {', '.join(chosen)}",
        "decision_path": decision_path(cfg.example_rules),
        "placement": (
            f"service on CPUs {sorted(place.service)}, harness on {sorted(place.harness)}"
            if place.service and place.harness
            else "not pinned"
        ),
    }
    if args.merge:
        earlier = json.loads((BENCH / "results.json").read_text())
        reruns = earlier.get("reruns", [])
        reruns.append(
            f"{', '.join(chosen)} run again on {results['machine']['date']}, commit"
            f" {results['machine']['commit']}"
        )
        results = {**earlier, **{k: v for k, v in earlier.items() if k in PHASES}}
        results["reruns"] = reruns
    bench = Bench(scratch, place, warmup_s=1.0 if args.quick else 3.0, quiet_wait_s=args.quiet_wait)
    started = time.monotonic()
    runners = {
        "latency": phase_latency,
        "info": phase_info,
        "throughput": phase_throughput,
        "workers2": phase_workers2,
        "reload": phase_reload,
        "rules": phase_rules,
        "clients": phase_clients,
        "profile": phase_profile,
    }
    try:
        for phase in chosen:
            print(f"== {phase}", flush=True)
            runners[phase](bench, cfg, results)
    finally:
        results["elapsed_s"] = time.monotonic() - started
        # Others may commit while this runs: say so when the code changed under the run.
        at_end = machine()["commit"]
        if not args.merge and at_end != results["machine"]["commit"]:
            results["machine"]["commit"] += f"; at the end: {at_end} (the code changed mid-run)"
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"scratch kept in {scratch}")
    (BENCH / "results.json").write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(render(results, existing_notes(args.out)))
    print(f"wrote {args.out} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
