"""Hostile clients against `sip-router serve`, with signed webhooks sent during the attack:
`uv run python -m bench.hostile_clients [--seconds 30] [--flood 15000]`.

Everything runs on 127.0.0.1: one `serve --dry-run` process (default limits), an attacker
process and the legitimate sender (this process, a new connection per webhook as OpenAI
does). Phases:
  baseline   webhooks at 20/s, no attack
  mix        2,000 silent + 1,000 slowloris (a header byte a second) + 1,000 stalled-body
             connections, each re-opened as soon as the server closes it, webhooks at 20/s
  flood      `--flood` silent connections opened as fast as possible (re-opened too)
  headers    8 connections each streaming a 64 MB header
The server's RSS and open descriptors are sampled from /proc. The section between the
`hostile` markers in bench/RESULTS.md (inside the notes, kept by bench/run.py) is rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from app.webhook_signing import signed_test_call
from bench.run import ROOT, SECRET, SIP_ROUTER, Process, free_port, wait_http

RESULTS = ROOT / "bench" / "RESULTS.md"
START, END = "<!-- hostile:start -->", "<!-- hostile:end -->"
RATE = 20
CALLER, CALLED = "+14155550123", "+18005550100"


def raise_descriptor_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- the attacker (own process)


async def _hold(port: int, kind: str, stop: float, closed: list[int]) -> None:
    """One hostile connection, re-opened whenever the server closes it, until `stop`."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            if kind == "slowloris":
                writer.write(b"POST /webhooks/openai HTTP/1.1\r\nX-Slow: ")
            elif kind == "stalled":
                writer.write(
                    b"POST /webhooks/openai HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 60000\r\n\r\n" + b"{" * 59_999
                )
            while time.monotonic() < stop:
                if kind == "slowloris":
                    writer.write(b"a")
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                        break
                    break  # an answer (408/503): the server is done with it
        except OSError:
            pass
        finally:
            closed[0] += 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _attack(port: int, counts: dict[str, int], seconds: float) -> int:
    stop = time.monotonic() + seconds
    closed = [0]
    tasks = []
    for kind, count in counts.items():
        for _ in range(count):
            tasks.append(asyncio.create_task(_hold(port, kind, stop, closed)))
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return closed[0]


def attacker(port: int, counts: dict[str, int], seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    raise_descriptor_limit()
    out.put(asyncio.run(_attack(port, counts, seconds)))


def header_streams(port: int, streams: int, size: int) -> list[int]:
    """Each stream sends one header of `size` bytes; the bytes sent before the server closed."""
    import socket

    sent = []
    chunk = b"a" * 65536
    for _ in range(streams):
        total = 0
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendall(b"GET / HTTP/1.1\r\nX-Huge: ")
            while total < size:
                sock.sendall(chunk)
                total += len(chunk)
        sent.append(total)
    return sent


# ---------------------------------------------------------------- the legitimate sender


@dataclass
class Sent:
    latencies_ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        ok = sorted(self.latencies_ms)
        if not ok:
            return f"0 answered; failures {self.failures}"
        p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
        failed = sum(self.failures.values())
        return (
            f"{len(ok)} answered 200, {failed} failed {self.failures or ''}; "
            f"p50 {statistics.median(ok):.1f} ms, p99 {p99:.1f} ms, max {ok[-1]:.1f} ms"
        )


async def send_webhooks(url: str, seconds: float) -> Sent:
    sent = Sent()
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:

        async def one() -> None:
            delivery = signed_test_call(SECRET, CALLER, CALLED, now=int(time.time()))
            started = time.perf_counter()
            try:
                answer = await client.post(url, content=delivery.body, headers=delivery.headers)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            else:
                if answer.status_code == 200:
                    sent.latencies_ms.append((time.perf_counter() - started) * 1000)
                    return
                key = str(answer.status_code)
            sent.failures[key] = sent.failures.get(key, 0) + 1

        tasks = []
        start = time.monotonic()
        for i in range(int(seconds * RATE)):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return sent


# ---------------------------------------------------------------- the server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def server_pid(process: Process) -> int:
    """The Python process serving (uv's launcher may sit in between)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return int(children[0]) if children else process.pid


async def sample_server(pid: int, stop: asyncio.Event, peaks: dict[str, float]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            peaks["rss_mb"] = max(peaks.get("rss_mb", 0), rss_mb(pid))
            peaks["fds"] = max(peaks.get("fds", 0), open_fds(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def phase(
    port: int, pid: int, seconds: float, counts: dict[str, int] | None
) -> tuple[Sent, dict[str, float], int]:
    peaks: dict[str, float] = {}
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_server(pid, stop, peaks))
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    worker = None
    if counts:
        worker = multiprocessing.Process(target=attacker, args=(port, counts, seconds + 3, queue))
        worker.start()
        await asyncio.sleep(3)  # the attack is in place before the first webhook
    sent = await send_webhooks(f"http://127.0.0.1:{port}/webhooks/openai", seconds)
    closed = 0
    if worker is not None:
        closed = await asyncio.to_thread(queue.get, True, 60)
        await asyncio.to_thread(worker.join, 30)
    stop.set()
    await sampler
    return sent, peaks, closed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--flood", type=int, default=15_000)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    args = parser.parse_args()
    raise_descriptor_limit()

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SIP_ROUTER_"))},
        "OPENAI_WEBHOOK_SECRET": SECRET,
        "SIP_ROUTER_RULES": str(ROOT / "routing_rules" / "rules.yaml"),
        "SIP_ROUTER_LOG_LEVEL": "warning",
    }
    log = Path("/tmp") / f"hostile-serve-{port}.log"
    cmd = [SIP_ROUTER, "serve", "--host", "127.0.0.1", "--port", str(port), "--dry-run"]
    server = Process(cmd, log, env=env)
    lines: list[str] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process=server)
        pid = server_pid(server)
        idle = (rss_mb(pid), open_fds(pid))
        results = {}
        mix = {"silent": 2000, "slowloris": 1000, "stalled": 1000}
        for name, counts in (("baseline", None), ("mix", mix), ("flood", {"silent": args.flood})):
            results[name] = asyncio.run(phase(port, pid, args.seconds, counts))
            print(name, results[name][0].summary(), results[name][1], flush=True)
            time.sleep(12)  # the server lets go of what is left (request deadline 10 s)
        settled = (rss_mb(pid), open_fds(pid))
        before_headers = rss_mb(pid)
        streamed = header_streams(port, 8, 64 * 1024 * 1024)
        after_headers = rss_mb(pid)
    finally:
        server.stop()

    labels = {
        "baseline": "no attack",
        "mix": "2,000 silent + 1,000 slowloris + 1,000 stalled-body connections, re-opened"
        " as closed",
        "flood": f"{args.flood:,} silent connections, re-opened as closed",
    }
    lines += [
        START,
        "### Hostile clients (bench/hostile_clients.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. One `serve --dry-run` with the default"
        " limits (16 KiB head, 100 headers, 10 s request deadline, 2,000 connections);"
        f" signed webhooks at {RATE}/s for {args.seconds:.0f} s per phase, a new connection"
        " each, while an attacker process holds the connections below. Server idle:"
        f" {idle[0]:.0f} MB RSS, {idle[1]} descriptors.",
        "",
        "| phase | legitimate webhooks | server peak RSS | peak descriptors | hostile"
        " connections closed by the server |",
        "|---|---|---|---|---|",
    ]
    for name, (sent, peaks, closed) in results.items():
        lines.append(
            f"| {labels[name]} | {sent.summary()} | {peaks.get('rss_mb', 0):.0f} MB |"
            f" {peaks.get('fds', 0):.0f} | {closed:,} |"
        )
    lines += [
        "",
        f"After the attacks: {settled[0]:.0f} MB RSS (freed memory stays with Python's"
        f" allocator and is reused), {settled[1]} descriptors. 8 connections each streaming"
        " a 64 MB header: answered 431 at 16 KiB and closed; the sender's writes failed after"
        f" at most {max(streamed) / 1024:.0f} KiB (what the socket buffers took);"
        f" RSS {before_headers:.0f} -> {after_headers:.0f} MB.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        text = RESULTS.read_text()
        if START in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.replace("<!-- notes:end -->", section + "\n<!-- notes:end -->")
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
