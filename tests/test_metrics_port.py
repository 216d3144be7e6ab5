"""`serve --metrics-port N`: /metrics on that port only, with every worker's values."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.store.redis_backend import KEY_PREFIX
from app.webhook_signing import signed_test_call
from tests.conftest import (
    OPS_RULES,
    SharedRedis,
    app_settings,
    build_app,
    deliver,
    running,
    write_rules_file,
)
from tests.fake_openai import FakeOpenAI
from tests.redis_server import free_port
from tests.test_health_and_metrics import by_label
from tests.test_service_processes import REPO_ROOT, ServiceProcess, clean_env

CALLER, CALLED = "+14155550123", "+14155550100"
METRICS_PORT = 9464


async def test_metrics_are_served_on_the_metrics_port_only(
    tmp_path: Path, secret: str, fake: FakeOpenAI
) -> None:
    settings = app_settings(
        write_rules_file(tmp_path, OPS_RULES), secret, metrics_port=METRICS_PORT
    )
    app = build_app(settings, fake)
    async with running(app) as main:
        delivery = signed_test_call(secret, CALLER, CALLED, now=int(time.time()))
        assert (await deliver(main, delivery)).status_code == 200
        assert (await main.get("/metrics")).status_code == 404
        assert (await main.get("/healthz")).status_code == 200

        metrics_url = f"http://sip-router:{METRICS_PORT}"
        metrics = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=metrics_url)
        async with metrics:
            scraped = await metrics.get("/metrics")
            assert scraped.status_code == 200
            counts = by_label(scraped.text, "sip_router_webhooks_total", "outcome")
            assert counts == {"processed": 1}
            assert (await metrics.get("/healthz")).status_code == 404
            assert (await metrics.post("/webhooks/openai", content=b"{}")).status_code == 404
            assert (await metrics.post("/metrics")).status_code == 405


class ServeWithWorkers(ServiceProcess):
    """`sip-router serve --workers 2 --metrics-port M`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.metrics_port = free_port()

    def start(self) -> None:
        command = [
            sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "2", "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture
def redis_for_workers(shared_redis: SharedRedis) -> Iterator[str]:
    url = shared_redis.url
    if shared_redis.own:
        url = urllib.parse.urlsplit(url)._replace(path="/13").geturl()
    yield url
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{KEY_PREFIX}*"))
        if keys:
            client.delete(*keys)


@pytest.mark.redis
@pytest.mark.slow
def test_two_workers_report_every_webhook_on_the_metrics_port(
    tmp_path: Path, secret: str, fake: FakeOpenAI, redis_for_workers: str
) -> None:
    rules = write_rules_file(tmp_path, OPS_RULES)
    with fake.serve_on_loopback() as fake_url:
        env = clean_env(
            OPENAI_API_KEY="sk-test",
            OPENAI_WEBHOOK_SECRET=secret,
            OPENAI_BASE_URL=fake_url,
            SIP_ROUTER_RULES=str(rules),
            SIP_ROUTER_REDIS_URL=redis_for_workers,
            SIP_ROUTER_LOG_FORMAT="json",
        )
        service = ServeWithWorkers(env, tmp_path / "serve.log")
        service.start()
        try:
            service.wait_ready()
            sent = 6
            for _ in range(sent):  # a new connection each: the workers share them
                delivery = signed_test_call(secret, CALLER, CALLED, now=int(time.time()))
                answer = httpx.post(
                    service.webhook_url, content=delivery.body, headers=delivery.headers
                )
                assert answer.status_code == 200, answer.text
            assert httpx.get(f"{service.url}/metrics").status_code == 404
            for _ in range(10):  # whichever worker answers, it reads both workers' values
                scraped = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics")
                assert scraped.status_code == 200
                counts = by_label(scraped.text, "sip_router_webhooks_total", "outcome")
                assert counts == {"processed": sent}
        finally:
            code = service.stop()
            print(f"--- serve (exit {code}) ---\n{service.logs()}")


def serve_exit(tmp_path: Path, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        SIP_ROUTER_RULES=str(write_rules_file(tmp_path, OPS_RULES)),
        OPENAI_WEBHOOK_SECRET=secret,
    )
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--dry-run", *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_metrics_port_equal_to_the_service_port_is_refused(tmp_path: Path, secret: str) -> None:
    port = str(free_port())
    result = serve_exit(tmp_path, secret, "--port", port, "--metrics-port", port)
    assert result.returncode == 2
    assert "--metrics-port" in result.stderr


def test_a_metrics_port_in_use_is_refused_at_start(tmp_path: Path, secret: str) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = str(taken.getsockname()[1])
        result = serve_exit(tmp_path, secret, "--port", str(free_port()), "--metrics-port", busy)
    assert result.returncode == 2
    assert f"--metrics-port {busy}" in result.stderr
