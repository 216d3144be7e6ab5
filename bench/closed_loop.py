"""Closed loop with wrk: sip-router against the floor and OpenAI's example receiver.

    uv run --frozen python -m bench.closed_loop            # 3 runs of each, about 10 minutes
    uv run --frozen python -m bench.closed_loop --quick    # 2 s runs, 1 repetition: a smoke run

Needs wrk (Debian: `apt-get install -y wrk`, wrk 4.1.0). Everything runs on 127.0.0.1 and
every process is started and stopped here. Three targets behind the same raw-asyncio fake
upstream (bench/upstream.py), started with bench/run.py's helpers:
  floor       bench/floor_app.py: uvicorn + one upstream request, nothing else
  peer        bench/openai_example_app.py: OpenAI's FastAPI SIP example (`openai` SDK)
  sip-router  `sip-router serve`, routing_rules/rules.yaml without its call-control keys
              (bench.run.decision_only_rules), memory store, not dry-run

Each repetition goes floor, peer, sip-router (interleaved, so slow drifts of a shared
machine touch every target alike); each target is a fresh process that gets a 2 s warm-up
(not counted), then wrk `--latency` for 10 s with 1 connection (1 thread) and for 10 s
with 16 connections (2 threads); sip-router then runs 30 s at 16 connections (its max
against its p99: no long pauses). Every wrk run sends deliveries signed just before it
(Standard Webhooks, bench/run.py's fixed secret, bench/calls.py's call mix), each with its
own webhook-id and call id and none sent twice (bench/closed_loop.lua stops a thread that
has sent all of its own; a run signs twice as many as its target's fastest earlier run,
warm-up included, would need, at least 3,000 a second). With 2+ CPUs the target is pinned
to the first CPU, wrk and the fake upstream to the others; "other load" is the CPU the
rest of the machine used meanwhile.

A run counts as having errors when an answer is not 2xx or not `"status": "processed"`,
wrk saw socket errors, a thread ran out of deliveries, or the fake upstream did not get
exactly one action for every answered delivery (or got one for a delivery never sent).

Writes the section between the `closed-loop` markers of bench/RESULTS.md (inside the
notes, which bench/run.py keeps) and the raw numbers to bench/closed_loop.json. `--quick`
writes both into a scratch directory instead (its numbers are not results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.calls import prepare_calls
from bench.run import (
    BENCH,
    ROOT,
    SECRET,
    Bench,
    Process,
    _own_cpu_s,
    decision_only_rules,
    decision_path,
    fetch_records,
    machine,
    placement,
    system_busy_s,
    tree_cpu_by_pid,
    tree_cpu_s,
    wait_for_quiet,
)

LUA = BENCH / "closed_loop.lua"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_JSON = BENCH / "closed_loop.json"
START, END = "<!-- closed-loop:start -->", "<!-- closed-loop:end -->"
TARGETS = ("floor", "peer", "sip-router")
LABELS = {
    "floor": "floor (uvicorn + one upstream request)",
    "peer": "OpenAI example receiver",
    "sip-router": "sip-router",
}
WARMUP_RATE = 20_000.0  # deliveries signed per second of warm-up: more than any target does
MIN_RATE = 3000.0  # and at least this many per second of a measured run
SETTLE_S = 0.5  # after wrk stops: requests still in flight reach the upstream first


@dataclass(frozen=True)
class Shape:
    """One kind of wrk run."""

    name: str
    connections: int
    threads: int
    duration_s: float


# ---------------------------------------------------------------- one wrk run


def write_deliveries(prefix: Path, port: int, count: int, threads: int) -> list[list[str]]:
    """Sign `count` deliveries now; thread k's share goes to `prefix-k`. Its call ids."""
    now = int(time.time())
    calls = prepare_calls(count, secret=SECRET, host=f"127.0.0.1:{port}", timestamps=[now] * count)
    shares = []
    for k in range(threads):
        mine = calls[k::threads]
        with Path(f"{prefix}-{k}").open("wb") as out:
            for call in mine:
                out.write(b"%d\n" % len(call.request))
                out.write(call.request)
        shares.append([call.call_id for call in mine])
    return shares


def upstream_check(
    shares: list[list[str]], threads: list[dict[str, Any]], records: dict[str, list[Any]]
) -> dict[str, int]:
    """Did the fake upstream get exactly one action for each answered delivery, and none
    for a delivery that was never sent? (A hangup scheduled later is not an action here.)"""
    sent = {cid for share, t in zip(shares, threads, strict=True) for cid in share[: t["sent"]]}
    answered = [cid for t in threads for cid in t["answered"]]
    actions = {cid: [r for r in rs if r[0] != "hangup"] for cid, rs in records.items()}
    actions = {cid: rs for cid, rs in actions.items() if rs}
    answered_set = set(answered)
    return {
        "actions": len(actions),
        "answered": len(answered),
        "answered_twice": len(answered) - len(answered_set),
        "answered_without_action": sum(1 for cid in answered_set if cid not in actions),
        "more_than_one_action": sum(1 for rs in actions.values() if len(rs) > 1),
        "action_never_sent": sum(1 for cid in actions if cid not in sent),
        # Sent, the answer cut off when wrk stopped: the action may or may not have happened.
        "unanswered_with_action": sum(1 for cid in actions if cid in sent - answered_set),
    }


def run_errors(result: dict[str, Any]) -> list[str]:
    errors = []
    if result["non_2xx"]:
        errors.append(f"{result['non_2xx']} non-2xx answers")
    if result["not_processed"] > result["non_2xx"]:
        errors.append(f"{result['not_processed'] - result['non_2xx']} 2xx not 'processed'")
    sockets = {k: v for k, v in result["socket_errors"].items() if v and k != "status_over_399"}
    if sockets:
        errors.append("socket errors " + ", ".join(f"{k} {v}" for k, v in sockets.items()))
    if result["ran_out"]:
        errors.append("ran out of deliveries (raise --rate-margin)")
    check = result["upstream"]
    for key in ("answered_twice", "answered_without_action", "more_than_one_action"):
        if check[key]:
            errors.append(f"upstream: {check[key]} {key.replace('_', ' ')}")
    if check["action_never_sent"]:
        errors.append(f"upstream: {check['action_never_sent']} actions for deliveries not sent")
    if check["answered"] != result["requests"]:
        errors.append(f"{result['requests']} answers counted by wrk, {check['answered']} read")
    return errors


def wrk_run(
    bench: Bench,
    wrk: str,
    target: str,
    served: tuple[int, Process],
    upstream: int,
    shape: Shape,
    rate: float,
    *,
    quiet_wait_s: float,
) -> dict[str, Any]:
    """One wrk run of `shape` against a started target, with `rate` x duration deliveries."""
    port, server = served
    bench.counter += 1
    stem = bench.scratch / f"{bench.counter:02d}-{target}-{shape.name}"
    count = math.ceil(shape.duration_s * rate) + shape.connections
    prefix = Path(f"{stem}-deliveries")
    shares = write_deliveries(prefix, port, count, shape.threads)
    out = Path(f"{stem}.json")
    env = {**os.environ, "CLOSED_LOOP_DELIVERIES": str(prefix), "CLOSED_LOOP_OUT": str(out)}
    args = [wrk, "--latency", "-t", str(shape.threads), "-c", str(shape.connections)]
    args += ["-d", f"{shape.duration_s:g}s", "--timeout", "5s", "-s", str(LUA)]
    args.append(f"http://127.0.0.1:{port}/webhooks/openai")

    fetch_records(upstream)  # forget anything earlier
    idle_before = wait_for_quiet(quiet_wait_s) if quiet_wait_s > 0 else None
    up_pid = bench.upstream_pids[upstream]
    cpu0, up0, t0 = sum(tree_cpu_by_pid(server.pid).values()), tree_cpu_s(up_pid), time.monotonic()
    sys0, me0 = system_busy_s(), _own_cpu_s()
    with (bench.scratch / f"{stem.name}.wrk.txt").open("w+b") as text:
        proc = subprocess.Popen(args, stdout=text, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        bench.place.pin(proc.pid, bench.place.harness)
        _, status, usage = os.wait4(proc.pid, 0)
        t1 = time.monotonic()
        cpu1, up1 = sum(tree_cpu_by_pid(server.pid).values()), tree_cpu_s(up_pid)
        sys1, me1 = system_busy_s(), _own_cpu_s()
        text.seek(0)
        wrk_text = text.read().decode(errors="replace")
    for k in range(shape.threads):
        Path(f"{prefix}-{k}").unlink()
    if os.waitstatus_to_exitcode(status) != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({target}, {shape.name}):\n{wrk_text}")
    time.sleep(SETTLE_S)
    records = fetch_records(upstream)
    raw = json.loads(out.read_text())
    wall = t1 - t0
    ours = (cpu1 - cpu0) + (up1 - up0) + usage.ru_utime + usage.ru_stime + (me1 - me0)
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    threads = raw["threads"]
    result: dict[str, Any] = {
        "target": target,
        "shape": shape.name,
        "connections": shape.connections,
        "threads": shape.threads,
        "duration_s": raw["duration_us"] / 1e6,
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "latency_ms": latency,
        "deliveries_signed": count,
        "sent": sum(t["sent"] for t in threads),
        "ran_out": any(t["ran_out"] for t in threads),
        "non_2xx": sum(t["non_2xx"] for t in threads),
        "not_processed": sum(t["not_processed"] for t in threads),
        "socket_errors": raw["socket_errors"],
        "upstream": upstream_check(shares, threads, records),
        "server_cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "cpu_ms_per_request": 1000 * (cpu1 - cpu0) / max(1, raw["requests"]),
        "upstream_cpu_pct": 100 * (up1 - up0) / wall,
        "wrk_cpu_pct": 100 * (usage.ru_utime + usage.ru_stime) / wall,
        "other_load_cpus": max(0.0, (sys1 - sys0) - ours) / wall,
        "other_load_before_cpus": idle_before,
        "wrk_output": wrk_text,
    }
    result["errors"] = run_errors(result)
    print(
        f"  {LABELS[target]:<40} {shape.name:<8} {result['requests']:>7} req"
        f" {result['requests_per_s']:8.0f}/s  p50 {latency['50']:6.2f} p99 {latency['99']:6.2f}"
        f" max {latency['max']:7.2f} ms  cpu {result['server_cpu_pct']:3.0f}%"
        f" {result['cpu_ms_per_request']:.2f} ms/req  upstream actions"
        f" {result['upstream']['actions']}  other load {result['other_load_cpus']:.2f} CPUs"
        + (f"  ERRORS: {'; '.join(result['errors'])}" if result["errors"] else ""),
        flush=True,
    )
    return result


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    repetitions: int
    warmup: Shape
    one: Shape
    sixteen: Shape
    long: Shape
    warmup_rate: float
    margin: float
    quiet_wait_s: float

    def rate(self, earlier: list[dict[str, Any]]) -> float:
        """Deliveries per second to sign for the next run of a target: a margin over the
        fastest of its earlier runs (the first is its warm-up), and at least MIN_RATE."""
        seen = max(
            self.warmup_rate if r["ran_out"] else float(r["requests_per_s"]) for r in earlier
        )
        return max(self.margin * seen, MIN_RATE)


def plan(quick: bool, margin: float, quiet_wait_s: float | None) -> Plan:
    seconds, long_s, warmup_s = (2.0, 2.0, 1.0) if quick else (10.0, 30.0, 2.0)
    return Plan(
        repetitions=1 if quick else 3,
        warmup=Shape("warm-up", 16, 2, warmup_s),
        one=Shape("1-conn", 1, 1, seconds),
        sixteen=Shape("16-conn", 16, 2, seconds),
        long=Shape(f"{long_s:g}s", 16, 2, long_s),
        warmup_rate=WARMUP_RATE,
        margin=margin,
        quiet_wait_s=(0.0 if quick else 30.0) if quiet_wait_s is None else quiet_wait_s,
    )


@contextlib.contextmanager
def started(bench: Bench, target: str, upstream: int) -> Iterator[tuple[int, Process]]:
    if target == "floor":
        with bench.floor(upstream) as served:
            yield served
    elif target == "peer":
        with bench.peer(upstream) as served:
            yield served
    else:
        rules = decision_only_rules(ROOT / "routing_rules" / "rules.yaml", bench.scratch)
        with bench.service(upstream, rules=rules) as served:
            yield served


def measure_all(bench: Bench, wrk: str, p: Plan) -> list[dict[str, Any]]:
    runs = []
    with bench.upstream() as up:
        for repetition in range(1, p.repetitions + 1):
            for target in TARGETS:
                print(f"== {target}, repetition {repetition}", flush=True)
                with started(bench, target, up) as served:
                    earlier = [
                        wrk_run(
                            bench, wrk, target, served, up, p.warmup, p.warmup_rate, quiet_wait_s=0
                        )
                    ]
                    shapes = [p.one, p.sixteen] + ([p.long] if target == "sip-router" else [])
                    for shape in shapes:
                        result = wrk_run(
                            bench,
                            wrk,
                            target,
                            served,
                            up,
                            shape,
                            p.rate(earlier),
                            quiet_wait_s=p.quiet_wait_s,
                        )
                        earlier.append(result)
                        runs.append(result | {"repetition": repetition})
    return runs


# ---------------------------------------------------------------- the report


def _median(runs: list[dict[str, Any]], value: Any) -> float:
    """Median over the runs without errors (over all of them when every run had errors)."""
    clean = [r for r in runs if not r["errors"]] or runs
    return statistics.median(value(r) for r in clean) if clean else float("nan")


def _pick(runs: list[dict[str, Any]], target: str, shape: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["target"] == target and r["shape"] == shape]


def summary(runs: list[dict[str, Any]], p: Plan) -> dict[str, dict[str, float]]:
    """Per target: the medians of the table's columns."""
    out = {}
    for target in TARGETS:
        one, many = _pick(runs, target, p.one.name), _pick(runs, target, p.sixteen.name)
        if not one or not many:
            continue
        out[target] = {
            "one_p50": _median(one, lambda r: r["latency_ms"]["50"]),
            "one_p99": _median(one, lambda r: r["latency_ms"]["99"]),
            "one_max": _median(one, lambda r: r["latency_ms"]["max"]),
            "many_rps": _median(many, lambda r: r["requests_per_s"]),
            "many_p50": _median(many, lambda r: r["latency_ms"]["50"]),
            "many_p99": _median(many, lambda r: r["latency_ms"]["99"]),
            "many_max": _median(many, lambda r: r["latency_ms"]["max"]),
        }
    return out


def checks(runs: list[dict[str, Any]], p: Plan) -> list[tuple[str, str, str]]:
    """The targets of issue 15 measured here: (target, met / NOT met, numbers)."""
    med = summary(runs, p)
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if {"floor", "peer", "sip-router"} <= med.keys():
        ours, floor, peer = med["sip-router"], med["floor"], med["peer"]
        rows += [
            (
                "1 connection: p50 <= 1.3 x the floor",
                verdict(ours["one_p50"] <= 1.3 * floor["one_p50"]),
                f"{ours['one_p50']:.3f} ms vs floor {floor['one_p50']:.3f} ms:"
                f" {ours['one_p50'] / floor['one_p50']:.2f} x",
            ),
            (
                "1 connection: p50 below the peer",
                verdict(ours["one_p50"] < peer["one_p50"]),
                f"{ours['one_p50']:.3f} ms vs peer {peer['one_p50']:.3f} ms",
            ),
            (
                "1 connection: p99 below the peer",
                verdict(ours["one_p99"] < peer["one_p99"]),
                f"{ours['one_p99']:.3f} ms vs peer {peer['one_p99']:.3f} ms",
            ),
            (
                "16 connections: throughput above the peer",
                verdict(ours["many_rps"] > peer["many_rps"]),
                f"{ours['many_rps']:.0f}/s vs peer {peer['many_rps']:.0f}/s",
            ),
            (
                "16 connections: p99 below the peer",
                verdict(ours["many_p99"] < peer["many_p99"]),
                f"{ours['many_p99']:.2f} ms vs peer {peer['many_p99']:.2f} ms",
            ),
        ]
    long = _pick(runs, "sip-router", p.long.name)
    if long:
        ratios = [r["latency_ms"]["max"] / r["latency_ms"]["99"] for r in long]
        rows.append(
            (
                f"{p.long.duration_s:g} s at 16 connections: max <= 3 x p99 (every run)",
                verdict(all(x <= 3 for x in ratios) and not any(r["errors"] for r in long)),
                "; ".join(
                    f"max {r['latency_ms']['max']:.2f} ms, p99 {r['latency_ms']['99']:.2f} ms:"
                    f" {x:.1f} x"
                    for r, x in zip(long, ratios, strict=True)
                ),
            )
        )
    return rows


def _flag(*runs: dict[str, Any]) -> str:
    """The errors of the runs shown in one row, or "none"."""
    errors = [f"{r['shape']}: {e}" for r in runs for e in r["errors"]]
    return f"**{'; '.join(errors)}**" if errors else "none"


def render(results: dict[str, Any], p: Plan) -> str:
    runs, m = results["runs"], results["machine"]
    lines = [
        START,
        "### Closed loop with wrk, against the floor and the peer (bench/closed_loop.py)",
        "",
        f"{m['date']}, commit {m['commit']}; {results['mode']}. {results['wrk']};"
        f" {results['placement']}. CPU speed check {m['calibration_s']:.2f} s. Rule path:"
        f" {results['decision_path']}.",
        "",
        "Closed loop: wrk keeps every connection busy, one request at a time, and times each"
        " from send to answer. The same deliveries (signed just before each run, none sent"
        " twice) and the same fake upstream for all; each repetition runs floor, peer,"
        " sip-router in turn, each a fresh process with a warm-up not counted. Milliseconds;"
        " the median row is the median of the runs without errors.",
        "",
        "| target | run | 1-conn p50 | 1-conn p99 | 1-conn max | 16-conn req/s | 16-conn p50"
        " | 16-conn p99 | 16-conn max | CPU ms/req (16) | other load, CPUs | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    med = summary(runs, p)
    for target in TARGETS:
        one, many = _pick(runs, target, p.one.name), _pick(runs, target, p.sixteen.name)
        for a, b in zip(one, many, strict=True):
            lines.append(
                f"| {LABELS[target]} | {a['repetition']} | {a['latency_ms']['50']:.3f} |"
                f" {a['latency_ms']['99']:.3f} | {a['latency_ms']['max']:.2f} |"
                f" {b['requests_per_s']:.0f} | {b['latency_ms']['50']:.2f} |"
                f" {b['latency_ms']['99']:.2f} | {b['latency_ms']['max']:.2f} |"
                f" {b['cpu_ms_per_request']:.2f} |"
                f" {a['other_load_cpus']:.2f} / {b['other_load_cpus']:.2f} | {_flag(a, b)} |"
            )
        if target in med:
            s = med[target]
            counted = (
                sum(1 for r in one if not r["errors"]),
                sum(1 for r in many if not r["errors"]),
            )
            lines.append(
                f"| **{LABELS[target]}** | median | **{s['one_p50']:.3f}** |"
                f" **{s['one_p99']:.3f}** | {s['one_max']:.2f} | **{s['many_rps']:.0f}** |"
                f" {s['many_p50']:.2f} | **{s['many_p99']:.2f}** | {s['many_max']:.2f} | |"
                f" | of {counted[0] or len(one)} / {counted[1] or len(many)} runs |"
            )
    long = _pick(runs, "sip-router", p.long.name)
    if long:
        lines += [
            "",
            f"sip-router, {p.long.duration_s:g} s at 16 connections (same process, after its"
            " other runs):",
            "",
            "| run | req/s | p50 | p99 | p99.9 | max | max / p99 | other load, CPUs | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in long:
            lat = r["latency_ms"]
            lines.append(
                f"| {r['repetition']} | {r['requests_per_s']:.0f} | {lat['50']:.2f} |"
                f" {lat['99']:.2f} | {lat['99.9']:.2f} | {lat['max']:.2f} |"
                f" {lat['max'] / lat['99']:.1f} | {r['other_load_cpus']:.2f} | {_flag(r)} |"
            )
    lines += ["", "| target (issue 15) | result | numbers |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in checks(runs, p)]
    answered = sum(r["upstream"]["answered"] for r in runs)
    clean = sum(1 for r in runs if not r["errors"])
    lines += [
        "",
        f"Runs without errors: {clean} of {len(runs)}. The fake upstream's records were"
        f" checked after every run: {answered:,} answered deliveries in all,"
        + (
            " each with exactly one action and no action for a delivery never sent."
            if not any(r["upstream"][k] for r in runs for k in _UPSTREAM_FAULTS)
            else " **with the faults listed against the runs above**."
        ),
        END,
    ]
    return "\n".join(lines)


_UPSTREAM_FAULTS = (
    "answered_twice",
    "answered_without_action",
    "more_than_one_action",
    "action_never_sent",
)


def write_section(path: Path, section: str) -> None:
    text = path.read_text()
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.replace("<!-- notes:end -->", section + "\n<!-- notes:end -->")
    path.write_text(text)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.closed_loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 repetition: a smoke run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--rate-margin",
        type=float,
        default=2.0,
        help="a run signs this many times its target's fastest earlier rate x its duration"
        " in deliveries, at least 3,000 a second (none may repeat; default 2)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait up to this many seconds for other work to stop"
        " (default 30; 0 with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        parser.error("wrk is not installed (Debian: apt-get install -y wrk)")
    p = plan(args.quick, args.rate_margin, args.quiet_wait)
    place = placement(not args.no_pin)
    place.pin(os.getpid(), place.harness)  # the orchestrator stays off the target's CPU
    scratch = Path(tempfile.mkdtemp(prefix="sip-router-closed-loop-"))
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
    results: dict[str, Any] = {
        "machine": machine(),
        "mode": (
            "quick smoke run (2 s runs, 1 repetition): not results"
            if args.quick
            else f"{p.repetitions} repetitions; {p.one.duration_s:g} s per run,"
            f" {p.long.duration_s:g} s for the long run, {p.warmup.duration_s:g} s warm-up"
        ),
        "wrk": version.splitlines()[0].split(" Copyright")[0].strip() if version else "wrk",
        "decision_path": decision_path(ROOT / "routing_rules" / "rules.yaml"),
        "placement": (
            f"target on CPUs {sorted(place.service)}, wrk and the fake upstream on"
            f" {sorted(place.harness)}"
            if place.service and place.harness
            else "not pinned"
        ),
        "rate_margin": p.margin,
    }
    bench = Bench(scratch, place, warmup_s=p.warmup.duration_s, quiet_wait_s=p.quiet_wait_s)
    started_at = time.monotonic()
    try:
        results["runs"] = measure_all(bench, wrk, p)
    finally:
        results["elapsed_s"] = time.monotonic() - started_at
    section = render(results, p)
    print(section)
    md, raw = RESULTS_MD, RESULTS_JSON
    if args.quick:
        # A smoke run's numbers are not results: they stay in the scratch directory.
        md, raw = scratch / "RESULTS-quick.md", scratch / "closed_loop-quick.json"
        shutil.copy(RESULTS_MD, md)
    if not args.no_write:
        raw.write_text(json.dumps(results, indent=1, default=str))
        write_section(md, section)
        print(f"wrote {md} and {raw} in {results['elapsed_s']:.0f} s")
    if not args.keep and not args.quick:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
