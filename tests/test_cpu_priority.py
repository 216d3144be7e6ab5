"""The calls process's CPU priority: idle only where two CPUs or more are usable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.calls.cpu_priority import usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),
        ("50000 100000\n", min(AFFINITY, 0.5)),
        ("400000 100000\n", min(AFFINITY, 4.0)),
        ("garbage\n", AFFINITY),
        ("100 0\n", AFFINITY),
    ],
)
def test_usable_cpus_are_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, cpu_max: str, expected: float
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max, encoding="ascii")
    assert usable_cpus(path) == expected


def test_without_a_cgroup_quota_the_affinity_counts(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "missing") == AFFINITY


def run_yield(cpu_max: Path) -> tuple[str, int]:
    """yield_to_webhooks in a process of its own (idle priority cannot be undone)."""
    code = (
        "import os, sys; from pathlib import Path;"
        "from app.calls.cpu_priority import yield_to_webhooks;"
        "print(yield_to_webhooks(Path(sys.argv[1])), os.sched_getscheduler(0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cpu_max)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout.split()
    return out[0], int(out[1])


def test_one_cpu_keeps_normal_priority(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n", encoding="ascii")
    assert run_yield(cpu_max) == ("normal", os.SCHED_OTHER)


@pytest.mark.skipif(AFFINITY < 2, reason="needs two CPUs")
def test_two_cpus_or_more_yield_to_the_webhooks(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n", encoding="ascii")
    assert run_yield(cpu_max) == ("idle", os.SCHED_IDLE)
