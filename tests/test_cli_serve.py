"""`sip-router serve` start-up checks and the dry-run path, run with a clean environment
(no OPENAI_*/SIP_ROUTER_* variables) in an empty working directory (no `.env`)."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli import main
from app.settings import parse_webhook_secret
from tests.fake_openai import FakeOpenAI
from tests.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_RULES = REPO_ROOT / "routing_rules" / "rules.yaml"
API_KEY = "sk-test"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SHORT_SECRET = "whsec_" + base64.b64encode(b"0123456789").decode()
CALLER, CALLED = "+14155550123", "+14155550100"
SECRET_PATTERN = re.compile(r"whsec_[A-Za-z0-9+/=]+")
CLI_TIMEOUT_S = 30.0
VENV_BIN = Path(sys.executable).parent

INVALID_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
rules:
  - name: blocked
    when: {caller: {in: nosuchlist}}
    reject: {status_code: 603}
default: {reject: {status_code: 603}}
"""


def clean_env(**variables: str) -> dict[str, str]:
    """No OPENAI_*/SIP_ROUTER_* from this process; the repo's `app` first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SIP_ROUTER_"))}
    # A newcomer's shell: the project's .venv/bin is not on PATH.
    env["PATH"] = os.pathsep.join(
        d for d in env.get("PATH", "").split(os.pathsep) if d and Path(d) != VENV_BIN
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["SIP_ROUTER_RULES"] = str(EXAMPLE_RULES)
    env.update(variables)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def serve_args(port: int, *extra: str) -> list[str]:
    return ["serve", "--host", "127.0.0.1", "--port", str(port), *extra]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory: no .env, no routing_rules/."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("variables", "extra_args", "variable"),
    [
        pytest.param({"OPENAI_WEBHOOK_SECRET": SECRET}, [], "OPENAI_API_KEY", id="no-api-key"),
        pytest.param({"OPENAI_API_KEY": API_KEY}, [], "OPENAI_WEBHOOK_SECRET", id="no-secret"),
        pytest.param(
            {"OPENAI_API_KEY": API_KEY, "OPENAI_WEBHOOK_SECRET": "whsec_!!!"},
            [],
            "OPENAI_WEBHOOK_SECRET",
            id="malformed-secret",
        ),
        pytest.param(
            {
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_WEBHOOK_SECRET": SECRET,
                "SIP_ROUTER_LOG_FORMAT": "xml",
            },
            [],
            "SIP_ROUTER_LOG_FORMAT",
            id="log-format-xml",
        ),
        pytest.param(
            {
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_WEBHOOK_SECRET": SECRET,
                "SIP_ROUTER_ACTION_DEADLINE_S": "-1",
            },
            [],
            "SIP_ROUTER_ACTION_DEADLINE_S",
            id="negative-deadline",
        ),
        pytest.param(
            {"OPENAI_API_KEY": API_KEY, "OPENAI_WEBHOOK_SECRET": SECRET},
            ["--workers", "2"],
            "SIP_ROUTER_REDIS_URL",
            id="workers-without-redis",
        ),
    ],
)
def test_serve_refuses_bad_configuration_with_one_line(
    variables: dict[str, str],
    extra_args: list[str],
    variable: str,
    workdir: Path,
) -> None:
    result = run_cli(serve_args(free_port(), *extra_args), clean_env(**variables), workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert result.stdout == ""
    # Secrets, well-formed or not, are never echoed.
    assert SECRET not in result.stderr
    assert "whsec_!!!" not in result.stderr


def test_serve_says_which_secret_of_a_list_is_malformed(workdir: Path) -> None:
    secrets = f"{SECRET},{SHORT_SECRET},{SECRET}"
    env = clean_env(OPENAI_API_KEY=API_KEY, OPENAI_WEBHOOK_SECRET=secrets)
    result = run_cli(serve_args(free_port()), env, workdir)
    assert result.returncode == 2, result.stderr
    # Named by its place in the list, never by its value.
    assert result.stderr == (
        "sip-router: OPENAI_WEBHOOK_SECRET: secret 2 of 3:"
        " the secret's key is shorter than 16 bytes\n"
    )


def test_serve_refuses_openai_without_v1_saying_to_add_it(workdir: Path) -> None:
    env = clean_env(
        OPENAI_API_KEY=API_KEY,
        OPENAI_WEBHOOK_SECRET=SECRET,
        OPENAI_BASE_URL="https://api.openai.com/",
    )
    result = run_cli(serve_args(free_port()), env, workdir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sip-router: OPENAI_BASE_URL: add /v1")


def test_serve_refuses_an_invalid_rule_file_with_file_and_line(workdir: Path) -> None:
    rules = workdir / "bad.yaml"
    rules.write_text(INVALID_RULES, encoding="utf-8")
    env = clean_env(
        OPENAI_API_KEY=API_KEY, OPENAI_WEBHOOK_SECRET=SECRET, SIP_ROUTER_RULES=str(rules)
    )
    result = run_cli(serve_args(free_port()), env, workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    located = [line for line in lines if re.match(rf"{re.escape(str(rules))}:\d+: \S", line)]
    assert len(located) == 1, result.stderr
    # The unknown list is named on line 5 of the file.
    assert located[0].startswith(f"{rules}:5: ")
    assert "nosuchlist" in located[0]
    assert any("SIP_ROUTER_RULES" in line for line in lines)


def test_serve_refuses_a_missing_rule_file_with_one_line(workdir: Path) -> None:
    rules = workdir / "nowhere.yaml"
    env = clean_env(
        OPENAI_API_KEY=API_KEY, OPENAI_WEBHOOK_SECRET=SECRET, SIP_ROUTER_RULES=str(rules)
    )
    result = run_cli(serve_args(free_port()), env, workdir)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"sip-router: SIP_ROUTER_RULES: cannot read {rules}: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("variables", "extra"),
    [
        pytest.param({"OPENAI_API_KEY": API_KEY, "OPENAI_WEBHOOK_SECRET": SECRET}, [], id="live"),
        pytest.param({}, ["--dry-run"], id="dry-run-generating-a-secret"),
    ],
)
def test_serve_refuses_a_port_in_use_with_one_line_before_starting(
    workdir: Path, variables: dict[str, str], extra: list[str]
) -> None:
    env = clean_env(**variables)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(serve_args(port, *extra), env, workdir)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"sip-router: port {port} on 127.0.0.1 is in use\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("host", "port", "line"),
    [
        ("127.0.0.1", "65536", "sip-router: --port 65536: must be between 0 and 65535\n"),
        ("no-such-host.invalid", "8000", "sip-router: --host 'no-such-host.invalid': "),
    ],
)
def test_serve_refuses_an_address_it_cannot_listen_on_with_one_line(
    workdir: Path, host: str, port: str, line: str
) -> None:
    env = clean_env(OPENAI_API_KEY=API_KEY, OPENAI_WEBHOOK_SECRET=SECRET)
    result = run_cli(["serve", "--host", host, "--port", port], env, workdir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line)
    assert len(result.stderr.splitlines()) == 1


class DryRunService:
    """`serve` in dry-run without a secret; its stderr goes to a file."""

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.webhook_url = f"http://127.0.0.1:{self.port}/webhooks/openai"
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command(*serve_args(self.port, *extra)),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.logs()}")
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=0.5)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not become ready:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(API_KEY)


@pytest.fixture
def fake_url(fake: FakeOpenAI) -> Iterator[str]:
    with fake.serve_on_loopback() as url:
        yield url


@pytest.fixture(params=["flag", "env"])
def dry_run_service(
    request: pytest.FixtureRequest, workdir: Path, tmp_path: Path, fake_url: str
) -> Iterator[DryRunService]:
    """Dry-run by `--dry-run` or by SIP_ROUTER_DRY_RUN=true; no API key, no secret."""
    variables = {"OPENAI_BASE_URL": fake_url}
    extra: list[str] = []
    if request.param == "flag":
        extra.append("--dry-run")
    else:
        variables["SIP_ROUTER_DRY_RUN"] = "true"
    service = DryRunService(clean_env(**variables), workdir, tmp_path / "serve.log", *extra)
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()
        print(service.logs())


def generated_secret(logs: str) -> str:
    """The secret that dry-run printed; it must be the only one in the logs."""
    found: set[str] = set(SECRET_PATTERN.findall(logs))
    assert len(found) == 1, logs
    return found.pop()


def send_test_call(url: str, secret: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    args = ["send-test-call", "--url", url, "--from", CALLER, "--to", CALLED, "--secret", secret]
    return run_cli(args, clean_env(), cwd)


def test_dry_run_prints_a_generated_secret_that_send_test_call_uses(
    dry_run_service: DryRunService, workdir: Path, fake: FakeOpenAI
) -> None:
    logs = dry_run_service.logs()
    secret = generated_secret(logs)
    parse_webhook_secret(secret)

    result = send_test_call(dry_run_service.webhook_url, secret, workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    first, body = result.stdout.strip().splitlines()
    assert "HTTP 200" in first
    answer = json.loads(body)
    assert answer["status"] == "dry_run"
    assert answer["call_id"].startswith("rtc_")
    assert answer["call_id"] in first
    assert answer["action"] in ("accept", "refer", "reject")
    # Dry-run sends nothing upstream, and the secret is printed at start-up only.
    assert fake.requests == []
    assert dry_run_service.logs().count(secret) == logs.count(secret)
    webhook_lines = [
        json.loads(line)
        for line in dry_run_service.logs().splitlines()
        if line.startswith("{") and '"sip_router.webhook"' in line
    ]
    assert [(w["call_id"], w["outcome"], w["dry_run"]) for w in webhook_lines] == [
        (answer["call_id"], "dry_run", True)
    ]
    # Dry-run accepts no call, so it starts no calls process to stay with one.
    assert "calls process ready" not in dry_run_service.logs()


def test_send_test_call_with_a_wrong_secret_prints_401_and_exits_1(
    dry_run_service: DryRunService, workdir: Path, fake: FakeOpenAI
) -> None:
    wrong = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    result = send_test_call(dry_run_service.webhook_url, wrong, workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HTTP 401" in result.stdout
    assert fake.requests == []


def test_the_printed_try_command_works_as_printed(
    dry_run_service: DryRunService, workdir: Path
) -> None:
    """A newcomer copies the `try:` line into a shell whose PATH does not hold .venv/bin."""
    (line,) = [ln for ln in dry_run_service.logs().splitlines() if "try: " in ln]
    printed = shlex.split(line.split("try: ", 1)[1])
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    result = subprocess.run(
        printed,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "dry_run"


@pytest.fixture
def service_with_known_secret(
    workdir: Path, tmp_path: Path, fake_url: str
) -> Iterator[DryRunService]:
    """A dry-run service whose OPENAI_WEBHOOK_SECRET is SECRET."""
    env = clean_env(OPENAI_BASE_URL=fake_url, OPENAI_WEBHOOK_SECRET=SECRET)
    service = DryRunService(env, workdir, tmp_path / "serve.log", "--dry-run")
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()
        print(service.logs())


def test_send_test_call_reads_the_secret_from_dot_env(
    service_with_known_secret: DryRunService, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "with-dot-env"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text(f"OPENAI_WEBHOOK_SECRET={SECRET}\n", encoding="utf-8")
    args = ["send-test-call", "--url", service_with_known_secret.webhook_url]
    result = run_cli([*args, "--from", CALLER, "--to", CALLED], clean_env(), elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 200" in result.stdout


def test_send_test_call_reads_the_secret_from_run_secrets(
    service_with_known_secret: DryRunService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "OPENAI_WEBHOOK_SECRET").write_text(SECRET + "\n", encoding="utf-8")
    monkeypatch.setattr("app.settings.SECRETS_DIR", secrets)
    monkeypatch.delenv("OPENAI_WEBHOOK_SECRET", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    url = service_with_known_secret.webhook_url
    code = main(["send-test-call", "--url", url, "--from", CALLER, "--to", CALLED])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "HTTP 200" in out


def test_send_test_call_api_live_sends_a_signed_live_transport_incoming(
    service_with_known_secret: DryRunService, workdir: Path, fake: FakeOpenAI
) -> None:
    url = service_with_known_secret.webhook_url
    args = ["send-test-call", "--url", url, "--from", CALLER, "--to", CALLED, "--secret", SECRET]
    result = run_cli([*args, "--api", "live"], clean_env(), workdir)

    assert result.returncode == 0, result.stdout + result.stderr
    first, body = result.stdout.strip().splitlines()
    answer = json.loads(body)
    assert answer["status"] == "dry_run"
    assert answer["call_id"].startswith("live_u0_")
    assert first.startswith(f"call {answer['call_id']} (live.transport.incoming over srtp, ")
    assert first.endswith("HTTP 200")
    [line] = [
        json.loads(text)
        for text in service_with_known_secret.logs().splitlines()
        if text.startswith("{") and '"sip_router.webhook"' in text
    ]
    assert (line["call_id"], line["api"], line["media_security"]) == (
        answer["call_id"],
        "live",
        "srtp",
    )
    assert fake.requests == []


def test_send_test_call_says_which_event_it_sent(
    service_with_known_secret: DryRunService, workdir: Path
) -> None:
    url = service_with_known_secret.webhook_url
    args = ["send-test-call", "--url", url, "--from", CALLER, "--to", CALLED, "--secret", SECRET]
    result = run_cli(args, clean_env(), workdir)

    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("call rtc_")
    assert "(realtime.call.incoming, webhook " in first


def test_send_test_call_without_any_secret_says_where_to_put_one(
    tmp_path: Path, workdir: Path
) -> None:
    args = ["send-test-call", "--url", "http://127.0.0.1:9/webhooks/openai"]
    result = run_cli([*args, "--from", CALLER, "--to", CALLED], clean_env(), workdir)
    assert result.returncode == 2
    assert result.stderr == (
        "sip-router: --secret whsec_... is required (or set OPENAI_WEBHOOK_SECRET)\n"
    )
