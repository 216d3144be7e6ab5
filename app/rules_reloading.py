"""The active ruleset and its hot reload: on file change, SIGHUP or `POST /admin/reload`.

A reload loads the candidate (parse, validate, compile, run the file's `tests:`) in a
separate process with a time and a memory limit, so no rule file can hold the event loop
or the service's memory; the compiled ruleset comes back pickled and one reference is
swapped. Any failure (problems, timeout, memory, a crashed process) keeps the running
rules and is recorded, logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.metrics import Metrics
from app.rules.file_reading import RuleSource, UploadedRuleFiles, size_text
from app.rules.loader import load_ruleset
from app.rules.problems import Problem, RuleFileError
from app.rules.ruleset import Ruleset
from app.rules.simulation import run_rule_tests

log = logging.getLogger("sip_router.rules")

FileStamp = tuple[int, int, int] | None

# A 10,000-rule file with a 1,000,000-number list loads in about a minute on one core.
LOAD_TIMEOUT_S = 120.0
LOAD_MEMORY_BYTES = 2 * 1024**3


def load_checked_ruleset(path: Path, now: datetime, *, source: RuleSource | None = None) -> Ruleset:
    """Load the rules and run their `tests:`; a failing test makes the whole file invalid."""
    ruleset = load_ruleset(path, source=source)
    failures = [r for r in run_rule_tests(ruleset, now) if not r.passed]
    if failures:
        raise RuleFileError(
            [Problem(r.file, r.line, f"test {r.description}: {r.failure}") for r in failures]
        )
    return ruleset


def _load_context() -> Any:
    context = multiprocessing.get_context("forkserver")
    # Loads fork from a server that has imported the loader (and the holiday calendars'
    # modules, the slowest part of a first load) already: a reload starts in milliseconds.
    # Each load runs the program's main script again (multiprocessing does); with the
    # command line's modules imported, `sip-router`'s script costs nothing.
    context.set_forkserver_preload([__name__, "app.cli", "holidays.countries"])
    return context


def start_load_server() -> None:
    """Start the server reloads fork from now, so the first reload does not wait for it."""
    _load_context()
    forkserver.ensure_running()


def load_in_process(
    path: Path,
    now: datetime,
    *,
    timeout_s: float = LOAD_TIMEOUT_S,
    memory_bytes: int = LOAD_MEMORY_BYTES,
    files: Mapping[str, str] | None = None,
) -> Ruleset:
    """`load_checked_ruleset` in a fresh process limited to `memory_bytes` and `timeout_s`.

    With `files` (path relative to the main file -> text), the rules are read from those
    texts, sent to the process, never from the disk; `path` is then the main file's name.
    Blocking: call it from a thread. Every failure is a RuleFileError naming the rule file.
    """
    context = _load_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_load_in_child,
        args=(sender, path, now, memory_bytes, dict(files) if files is not None else None),
        name="sip-router-rules-load",
        daemon=True,
    )
    try:
        process.start()
        sender.close()
        if not receiver.poll(timeout_s):
            raise _load_failure(path, f"loading took longer than {timeout_s:g} s; stopped")
        try:
            outcome = receiver.recv()
        except EOFError:
            process.join(5)
            raise _load_failure(
                path, f"the loading process ended without an answer (exit code {process.exitcode})"
            ) from None
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()
    if outcome[0] == "ok":
        ruleset: Ruleset = outcome[1]
        return ruleset
    _, problems, read = outcome
    raise RuleFileError(problems, read)


def _load_in_child(
    sender: Connection,
    path: Path,
    now: datetime,
    memory_bytes: int,
    files: dict[str, str] | None = None,
) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    source = UploadedRuleFiles(files, str(path)) if files is not None else None
    outcome: tuple[Any, ...]
    try:
        outcome = ("ok", load_checked_ruleset(path, now, source=source))
    except RuleFileError as exc:
        outcome = ("error", exc.problems, exc.files)
    except MemoryError:
        outcome = ("error", [_memory_problem(path, memory_bytes)], (str(path),))
    except Exception as exc:
        problem = Problem(str(path), 0, f"loading failed: {type(exc).__name__}: {exc}")
        outcome = ("error", [problem], (str(path),))
    try:
        sender.send(outcome)
    except MemoryError:
        sender.send(("error", [_memory_problem(path, memory_bytes)], (str(path),)))
    except Exception as exc:  # a part of the ruleset that does not pickle
        problem = Problem(str(path), 0, f"loading failed: {type(exc).__name__}: {exc}")
        sender.send(("error", [problem], (str(path),)))
    finally:
        sender.close()


def _memory_problem(path: Path, memory_bytes: int) -> Problem:
    limit = size_text(memory_bytes)
    return Problem(str(path), 0, f"loading needs more than {limit} of memory; stopped")


def _load_failure(path: Path, message: str) -> RuleFileError:
    return RuleFileError([Problem(str(path), 0, message)], (str(path),))


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
        load_timeout_s: float = LOAD_TIMEOUT_S,
        load_memory_bytes: int = LOAD_MEMORY_BYTES,
    ) -> None:
        self.path = path
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._load_timeout_s = load_timeout_s
        self._load_memory_bytes = load_memory_bytes
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
        """Load in a separate process and swap; on failure keep the running rules and raise.

        Every failure is a RuleFileError: a crash of the load is a failed reload too.
        """
        async with self._lock:
            try:
                ruleset = await asyncio.to_thread(
                    load_in_process,
                    self.path,
                    self._now(),
                    timeout_s=self._load_timeout_s,
                    memory_bytes=self._load_memory_bytes,
                )
            except RuleFileError as exc:
                self._failed(exc, reason)
                raise
            except Exception as exc:  # an OS error starting the process, say
                log.exception("rules reload crashed")
                failure = _load_failure(self.path, f"loading failed: {type(exc).__name__}: {exc}")
                self._failed(failure, reason)
                raise failure from None
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

    def _failed(self, exc: RuleFileError, reason: str) -> None:
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

    def changed_files(self) -> bool:
        """True when any file the rules came from changed since it was last read."""
        return any(_stamp(name) != stamp for name, stamp in self._stamps.items())

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the rule files; stat() follows Kubernetes ConfigMap symlink swaps."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed_files():
                with contextlib.suppress(RuleFileError):  # recorded by reload()
                    await self.reload("file changed")

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
