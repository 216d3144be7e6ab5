"""Rule engine scale: compile time, resident memory and per-decision time, in process.

`write_rule_file` generates a multi-tenant rule file (one DID per tenant, a few rule
shapes) with a number list file of a given size. `measure` runs in a fresh process per
size (`python -m bench.rule_scale ...`) so resident memory belongs to that size alone.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import random
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

_ZONE = ZoneInfo("America/Los_Angeles")
_NPAS = tuple(str(n) for n in range(201, 990) if n % 100 not in (11,) and str(n)[1] != "9")

PROFILES = """\
profiles:
  base:
    model: gpt-realtime
    instructions: You answer the phone for a small business. Be brief and friendly.
    audio:
      input: {turn_detection: {type: semantic_vad, eagerness: medium}}
      output: {voice: marin}
  sales:
    extends: base
    instructions: You answer sales calls. Ask what the caller wants to buy.
  support:
    extends: base
    instructions: You answer support calls. Ask for the order number first.
    max_duration_s: 900
"""


def did(i: int) -> str:
    """The tenant DID of rule i: unique, valid NANP numbers."""
    npa = _NPAS[i % len(_NPAS)]
    return f"+1{npa}{200 + (i // len(_NPAS)) % 800}{i % 10000:04d}"


def _list_number(rng: random.Random) -> str:
    return f"+1{rng.choice(_NPAS)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


def write_list_file(path: Path, entries: int, seed: int = 11) -> list[str]:
    """`entries` lines, 99% E.164 numbers and 1% prefixes; returns a sample of the numbers."""
    rng = random.Random(seed)
    lines = ["# blocked numbers, exported from the carrier portal"]
    sample: list[str] = []
    for i in range(entries):
        if i % 100 == 99:
            lines.append(f"+1{rng.choice(_NPAS)}{rng.randint(200, 999)}*")
        else:
            number = _list_number(rng)
            lines.append(number)
            if len(sample) < 1000:
                sample.append(number)
    path.write_text("\n".join(lines) + "\n")
    return sample


def rule_lines(i: int, headers: bool = True) -> list[str]:
    """One tenant rule; the shapes cycle so every size has the same mix.

    Without `headers`, the header rules become called-DID rules (numbers only).
    """
    name = f"tenant-{i:05d}"
    kind = i % 20
    if not headers and kind in (17, 18):
        kind = 0
    if kind < 12:  # 60%: route a DID to a profile
        return [
            f"  - name: {name}",
            f'    when: {{called: "{did(i)}"}}',
            f"    accept: {{profile: {('sales', 'support', 'base')[i % 3]}}}",
        ]
    if kind < 15:  # 15%: a DID during office hours
        return [
            f"  - name: {name}",
            f'    when: {{called: "{did(i)}", schedule: office}}',
            "    accept: {profile: support}",
        ]
    if kind < 17:  # 10%: callers from one area code to a DID are transferred
        npa = _NPAS[(i * 7) % len(_NPAS)]
        return [
            f"  - name: {name}",
            f'    when: {{caller: "+1{npa}*", called: "{did(i)}"}}',
            f'    refer: {{target_uri: "sip:desk{i}@pbx.example.com"}}',
        ]
    if kind < 19:  # 10%: a trunk header names the tenant
        return [
            f"  - name: {name}",
            f'    when: {{header: {{X-Tenant-Id: "T{i:05d}"}}}}',
            f'    refer: {{target_uri: "tel:+1415555{i % 10000:04d}"}}',
        ]
    # 5%: VIP callers of a DID get the support line
    return [
        f"  - name: {name}",
        f'    when: {{called: "{did(i)}", caller: {{in: vip}}}}',
        "    accept: {profile: support, overrides: {max_duration_s: 1800}}",
    ]


def write_rule_file(directory: Path, rules: int, list_file: str, headers: bool = True) -> Path:
    """A rule file with `rules` rules (2 fixed + tenants) using the list file `list_file`."""
    lines = ["version: 1", "defaults: {timezone: America/Los_Angeles, region: US}", PROFILES]
    lines += [
        "lists:",
        f"  blocked: {{file: {list_file}}}",
        '  vip: ["+14155550142", "+16285550119", "+1650555*"]',
        "schedules:",
        "  office:",
        '    weekly: [{days: mon-fri, from: "08:00", to: "18:00"}]',
        "    closed: {holidays: {country: US, subdiv: CA}}",
        "rules:",
        "  - name: blocked-callers",
        "    when: {caller: {in: blocked}}",
        "    reject: {status_code: 603}",
        "  - name: withheld-number",
        "    when: {caller: anonymous}",
        "    reject: {status_code: 433}",
    ]
    for i in range(max(0, rules - 2)):
        lines += rule_lines(i, headers)
    lines += ["default: {accept: {profile: base}}", "on_error: {reject: {status_code: 503}}"]
    shapes = "mixed" if headers else "numbers"
    path = directory / f"rules-{rules}-{shapes}-{list_file.replace('/', '_')}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# (kind, share) of the calls decided.
CALL_MIX = (
    ("blocked", 0.05),  # first rule: in the number list
    ("anonymous", 0.03),
    ("tenant", 0.60),  # a DID of a uniformly random tenant
    ("header", 0.12),  # a trunk header naming a tenant
    ("unknown", 0.20),  # nothing matches: every rule is tried, then the default
)


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(
    path: Path, tenants: int, blocked_sample: list[str], budget_s: float
) -> dict[str, object]:
    from app.rules.loader import load_ruleset
    from app.rules.simulation import simulated_context

    gc.collect()
    rss_before = _vm_kib("VmRSS")
    started = time.perf_counter()
    ruleset = load_ruleset(path)
    compile_s = time.perf_counter() - started
    gc.collect()
    rss_after = _vm_kib("VmRSS")
    peak = _vm_kib("VmHWM")

    rng = random.Random(5)
    kinds = [k for k, _ in CALL_MIX]
    weights = [w for _, w in CALL_MIX]
    week = datetime(2026, 12, 7, tzinfo=_ZONE)  # a Monday with no holiday
    contexts = []
    for _ in range(2000):
        kind = rng.choices(kinds, weights)[0]
        at = week + timedelta(minutes=rng.randrange(7 * 24 * 60))
        caller = _list_number(rng)
        called, headers = "+14155550100", None
        if kind == "blocked":
            caller = rng.choice(blocked_sample) if blocked_sample else caller
        elif kind == "anonymous":
            caller = "anonymous"
        elif kind == "tenant" and tenants:
            called = did(rng.randrange(tenants))
        elif kind == "header" and tenants:
            headers = {"X-Tenant-Id": f"T{rng.randrange(tenants):05d}"}
        contexts.append((kind, simulated_context(ruleset, caller, called, at, headers)))

    for _, ctx in contexts:  # warm caches (zone offsets, holidays)
        ruleset.decide(ctx)
    clock = time.perf_counter_ns
    overhead = min(-(clock() - clock()) for _ in range(1000))
    samples: dict[str, list[int]] = {k: [] for k in kinds}
    everything: list[int] = []
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 25 and (rounds < 1 or time.perf_counter() < deadline):
        for kind, ctx in contexts:
            t0 = clock()
            ruleset.decide(ctx)
            elapsed = clock() - t0 - overhead
            samples[kind].append(elapsed)
            everything.append(elapsed)
        rounds += 1
    everything.sort()

    def summary(values: list[int]) -> dict[str, float]:
        values = sorted(values)
        return {
            "n": len(values),
            "p50_us": _percentile(values, 0.50) / 1000,
            "p99_us": _percentile(values, 0.99) / 1000,
            "max_us": (values[-1] if values else 0) / 1000,
        }

    return {
        "file": str(path),
        "rules": len(ruleset.rules),
        "compile_s": compile_s,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "rss_peak_mib": peak / 1024,
        "timer_overhead_ns": overhead,
        "all": summary(everything),
        "by_kind": {k: summary(v) for k, v in samples.items()},
        "warnings": len(ruleset.warnings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--tenants", type=int, required=True)
    parser.add_argument("--blocked-sample", type=Path, help="JSON list of listed numbers")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of decisions")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    # Importing first keeps module memory out of the ruleset's resident memory.
    for module in ("app.rules.loader", "app.rules.simulation"):
        importlib.import_module(module)

    sample = json.loads(args.blocked_sample.read_text()) if args.blocked_sample else []
    args.out.write_text(json.dumps(measure(args.file, args.tenants, sample, args.budget)))


if __name__ == "__main__":
    main()
