"""The calls process's CPU priority: below the webhooks' whenever that cannot starve it.

At idle priority (Linux's SCHED_IDLE) the kernel preempts the calls process the moment
the service's process has work: a webhook never waits behind a call's events. A process
at idle priority gets almost no CPU while every CPU is busy, though, and a process without
CAP_SYS_NICE cannot raise itself back. So the calls process yields only where the service's
process (one thread) cannot take every CPU: with two CPUs or more, counting the CPUs the
process may run on and the container's CPU quota (cgroup v2 `cpu.max`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> float:
    """How many CPUs this process can use: its affinity, capped by the cgroup's quota."""
    cpus: float = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text(encoding="ascii").split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):
        pass  # no cgroup v2 quota: the affinity alone
    return cpus if math.isfinite(cpus) else 1.0


def yield_to_webhooks(cpu_max: Path = CGROUP_CPU_MAX) -> str:
    """Lower this process to idle priority when two CPUs or more are usable; the priority
    it runs at ("idle" or "normal")."""
    if usable_cpus(cpu_max) < 2 or not hasattr(os, "SCHED_IDLE"):
        return "normal"
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        return "normal"
    return "idle"
