"""The active ruleset and its hot reload: on file change, SIGHUP or `POST /admin/reload`.

A reload validates fully (and runs the file's `tests:`) in a worker thread, then swaps
one reference; a failing reload keeps the running rules and records the error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.metrics import Metrics
from app.rules.loader import load_ruleset
from app.rules.problems import Problem, RuleFileError
from app.rules.ruleset import Ruleset
from app.rules.simulation import run_rule_tests

log = logging.getLogger("sip_router.rules")

FileStamp = tuple[int, int, int] | None


def load_checked_ruleset(path: Path, now: datetime) -> Ruleset:
    """Load the rules and run their `tests:`; a failing test makes the whole file invalid."""
    ruleset = load_ruleset(path)
    failures = [r for r in run_rule_tests(ruleset, now) if not r.passed]
    if failures:
        raise RuleFileError(
            [Problem(r.file, r.line, f"test {r.description}: {r.failure}") for r in failures]
        )
    return ruleset


@dataclass(frozen=True, slots=True)
class RulesStatus:
    version: str | None
    files: tuple[str, ...]
    loaded_at: str | None
    last_error: str | None


class RulesHolder:
    """Holds the ruleset every decision reads; replaced whole, never mutated."""

    def __init__(
        self,
        path: Path,
        metrics: Metrics,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self.current: Ruleset | None = None
        self.loaded_at: datetime | None = None
        self.last_error: str | None = None
        self._stamps: dict[str, FileStamp] = {}

    def install(self, ruleset: Ruleset) -> None:
        """Put a loaded ruleset into service."""
        self.current = ruleset
        self.loaded_at = datetime.fromtimestamp(self._wall_clock(), tz=UTC)
        self.last_error = None
        self._stamps = {name: _stamp(name) for name in ruleset.files}
        self._metrics.set_ruleset(ruleset.version)

    def load_now(self) -> Ruleset:
        """Load synchronously (start-up); raises RuleFileError."""
        ruleset = load_checked_ruleset(self.path, self._now())
        self.install(ruleset)
        return ruleset

    async def reload(self, reason: str) -> Ruleset:
        """Load in a thread and swap; on failure keep the running rules and raise."""
        async with self._lock:
            try:
                ruleset = await asyncio.to_thread(load_checked_ruleset, self.path, self._now())
            except RuleFileError as exc:
                self.last_error = str(exc)
                # Remember the broken files' state so the watcher does not retry every tick,
                # and watch every file the failed load read or looked for.
                names = {*self._stamps, str(self.path), *exc.files}
                self._stamps = {name: _stamp(name) for name in names}
                self._metrics.reloads.labels(result="error").inc()
                log.error(
                    "rules reload failed; the running rules stay in service",
                    extra={"fields": {"reason": reason, "errors": [str(p) for p in exc.problems]}},
                )
                raise
            previous = self.current.version if self.current else None
            self.install(ruleset)
            self._metrics.reloads.labels(result="ok").inc()
            log.info(
                "rules reloaded",
                extra={
                    "fields": {
                        "reason": reason,
                        "ruleset": ruleset.version,
                        "previous": previous,
                        "warnings": list(ruleset.warnings),
                    }
                },
            )
            return ruleset

    def changed_files(self) -> bool:
        """True when any file the rules came from changed since it was last read."""
        return any(_stamp(name) != stamp for name, stamp in self._stamps.items())

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the rule files; stat() follows Kubernetes ConfigMap symlink swaps."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed_files():
                try:
                    await self.reload("file changed")
                except RuleFileError:
                    pass
                except Exception:
                    log.exception("rules reload crashed; the running rules stay in service")

    def status(self) -> RulesStatus:
        return RulesStatus(
            version=self.current.version if self.current else None,
            files=self.current.files if self.current else (),
            loaded_at=self.loaded_at.isoformat() if self.loaded_at else None,
            last_error=self.last_error,
        )

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), tz=UTC)


def _stamp(name: str) -> FileStamp:
    try:
        st = os.stat(name)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
