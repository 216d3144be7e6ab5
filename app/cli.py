"""The `sip-router` command: serve, check, test, simulate, send-test-call, replay, schema."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.metrics import write_metrics_to
from app.rules.loader import load_ruleset
from app.rules.problems import RuleFileError
from app.rules.ruleset import Ruleset
from app.rules.simulation import decision_json, run_rule_tests, simulated_context
from app.settings import (
    UNSIGNED_SERVICES_WARNING,
    ConfigurationError,
    Settings,
    load_settings,
    load_webhook_secrets,
    outbound_secret_configured,
)
from app.simulated_numbers import simulated_number_problem

EXIT_OK, EXIT_PROBLEMS, EXIT_CONFIG = 0, 1, 2
EXIT_STARTUP_FAILURE = 3  # uvicorn's own code when the server cannot start


def _fail(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"sip-router: {message}", file=sys.stderr)
    return code


def _default_rules() -> Path:
    return Path(os.environ.get("SIP_ROUTER_RULES") or Settings.model_fields["rules"].default)


def _own_command() -> str:
    """How to run this `sip-router` again from any shell: its name if PATH finds this one."""
    installed = Path(sys.executable).parent / "sip-router"
    if not installed.is_file():
        return "sip-router"
    on_path = shutil.which("sip-router")
    if on_path and Path(on_path).resolve() == installed.resolve():
        return "sip-router"
    return shlex.quote(str(installed))


def _print_problems(exc: RuleFileError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def _load(path: Path) -> Ruleset | None:
    try:
        ruleset = load_ruleset(path)
    except RuleFileError as exc:
        _print_problems(exc)
        return None
    for warning in ruleset.warnings:
        print(warning, file=sys.stderr)
    return ruleset


def cmd_serve(args: argparse.Namespace) -> int:
    from app.http.connection_limits import ConnectionLimits
    from app.http_server import bind_listener, run_http_server
    from app.log_format import configure_logging, logging_config
    from app.rules_reloading import load_checked_ruleset

    if args.dry_run:
        os.environ["SIP_ROUTER_DRY_RUN"] = "true"
    if args.metrics_port is not None:
        os.environ["SIP_ROUTER_METRICS_PORT"] = str(args.metrics_port)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        return _fail(str(exc))
    if settings.openai_api_key is None and not settings.dry_run:
        return _fail("OPENAI_API_KEY: required (or run in dry-run: --dry-run)")
    generated: str | None = None
    if not settings.openai_webhook_secret:
        if not settings.dry_run:
            return _fail("OPENAI_WEBHOOK_SECRET: required (the whsec_... secret of your webhook)")
        import base64
        import secrets

        generated = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        os.environ["OPENAI_WEBHOOK_SECRET"] = generated
    if args.workers > 1 and settings.redis_url is None:
        return _fail(
            "--workers > 1 needs SIP_ROUTER_REDIS_URL: in-process dedupe cannot keep one action"
            " per call across worker processes"
        )
    try:
        settings.rules.open("rb").close()
    except OSError as exc:
        return _fail(f"SIP_ROUTER_RULES: cannot read {settings.rules}: {exc.strerror or exc}")
    try:
        load_checked_ruleset(settings.rules, datetime.now(tz=UTC))
    except RuleFileError as exc:
        _print_problems(exc)
        return _fail(f"SIP_ROUTER_RULES: {settings.rules} is invalid; not starting")
    try:
        # Bound before anything starts: a port in use is one line, not a failure after start.
        listener = bind_listener(args.host, args.port)
    except OverflowError:
        return _fail(f"--port {args.port}: must be between 0 and 65535")
    except OSError as exc:
        return _fail(_listen_problem(args.host, args.port, exc))
    # Several processes (the workers, each one's calls process) write the metrics there.
    if args.workers > 1 or settings.calls_in_own_process:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        write_metrics_to(directory or tempfile.mkdtemp(prefix="sip-router-metrics-"))
    metrics_listener = None
    if settings.metrics_port is not None:
        if settings.metrics_port == args.port:
            return _fail(f"--metrics-port {args.port}: must differ from --port")
        try:
            metrics_listener = bind_listener(args.host, settings.metrics_port)
        except OSError as exc:
            return _fail(f"--metrics-port {settings.metrics_port}: {exc.strerror or exc}")
    if generated is not None:
        # Printed once every start-up check has passed: a failure stays one line.
        print(
            "sip-router: dry-run without OPENAI_WEBHOOK_SECRET; generated one for this run:\n"
            f"  {generated}\n"
            f"  try: {_own_command()} send-test-call"
            f" --url http://127.0.0.1:{args.port}/webhooks/openai"
            f" --from +14155550123 --to +18005550100 --secret {generated}",
            file=sys.stderr,
            flush=True,
        )
    configure_logging(settings.log_format, settings.log_level)
    # uvicorn re-raises the stop signal after a graceful shutdown; a clean stop is exit 0.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    started = run_http_server(
        "app.asgi:app_from_environment",
        listener=listener,
        host=args.host,
        port=args.port,
        workers=args.workers,
        limits=ConnectionLimits(
            request_deadline_s=settings.request_timeout_s,
            max_connections=settings.max_connections,
        ),
        metrics_listener=metrics_listener,
        log_config=logging_config(settings.log_format, settings.log_level),
        timeout_graceful_shutdown=int(settings.action_deadline_s * 2 + 2),
    )
    return EXIT_OK if started else EXIT_STARTUP_FAILURE


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"--host {host!r}: {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on port {port} on {host}: {exc.strerror or exc}"


def cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.rules) if args.rules else _default_rules()
    ruleset = _load(path)
    if ruleset is None:
        return EXIT_PROBLEMS
    # Warnings about the environment the rules will run in count with the rules' own.
    warnings = len(ruleset.warnings)
    if ruleset.services or ruleset.functions:
        warnings += _warn_if_unsigned()
    results = run_rule_tests(ruleset, datetime.now(tz=UTC))
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(
            f"{result.file}:{result.line}: test {result.description}: {result.failure}",
            file=sys.stderr,
        )
    if failed:
        return EXIT_PROBLEMS
    print(
        f"{path}: ok: {len(ruleset.rules)} rules, {len(results)} tests passed,"
        f" {warnings} warning{'' if warnings == 1 else 's'}, ruleset {ruleset.version}"
    )
    return EXIT_OK


def _warn_if_unsigned() -> int:
    """Warn when requests to services and functions would go unsigned; the warnings printed."""
    try:
        configured = outbound_secret_configured()
    except ConfigurationError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return 1
    if not configured:
        print(f"warning: {UNSIGNED_SERVICES_WARNING}", file=sys.stderr)
        return 1
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    path = Path(args.rules) if args.rules else _default_rules()
    try:
        ruleset = load_ruleset(path)
    except RuleFileError as exc:
        _print_problems(exc)
        return EXIT_PROBLEMS
    results = run_rule_tests(ruleset, datetime.now(tz=UTC))
    for result in results:
        if not result.passed:
            print(f"{result.file}:{result.line}: FAIL {result.description}: {result.failure}")
    passed = sum(r.passed for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return EXIT_OK if passed == len(results) else EXIT_PROBLEMS


def _parse_headers(values: Sequence[str]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header takes 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    return headers


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--at takes an ISO-8601 time such as 2026-03-27T23:30:00+01:00, got {text!r}"
        ) from None


def _read_stubbed_answers(values: Sequence[str]) -> dict[str, Any]:
    """`--consult NAME=FILE.json` options: each service's answer, read from its file."""
    answers: dict[str, Any] = {}
    for item in values:
        name, sep, file = item.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise ValueError(f"--consult takes SERVICE=FILE.json, got {item!r}")
        try:
            answers[name.strip()] = json.loads(Path(file.strip()).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"--consult {item}: cannot read {file}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"--consult {item}: not JSON: {exc}") from None
    return answers


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        headers = _parse_headers(args.header)
        at = _parse_at(args.at)
        answers = _read_stubbed_answers(args.consult)
    except ValueError as exc:
        return _fail(str(exc), EXIT_PROBLEMS)
    path = Path(args.rules) if args.rules else _default_rules()
    ruleset = _load(path)
    if ruleset is None:
        return EXIT_PROBLEMS
    for name in answers:
        if name not in ruleset.services:
            known = ", ".join(sorted(ruleset.services)) or "none"
            return _fail(
                f"--consult {name}: no such service in {path} (services: {known})", EXIT_PROBLEMS
            )
    for option, number, caller in (("--from", args.from_, True), ("--to", args.to, False)):
        problem = simulated_number_problem(number, ruleset.region, caller=caller)
        if problem is not None:
            return _fail(f"{option} {number!r}: {problem}")
    ctx = simulated_context(
        ruleset,
        args.from_,
        args.to,
        at or datetime.now(tz=UTC),
        headers,
        api=args.api,
        media_security=args.media_security,
    )
    decision = ruleset.decide(ctx, explain=True, answers=answers)
    result = decision_json(decision)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return EXIT_OK
    rule = decision.rule or "the default"
    on = " on GPT-Live" if decision.api == "live" else ""
    print(f"{decision.action} by {rule}{on} (ruleset {decision.ruleset}, at {ctx.at.isoformat()})")
    body = json.dumps(result["request"]["body"], ensure_ascii=False)
    print(f"  POST {result['request']['path']} {body}")
    if decision.error:
        print(f"  on_error applied: {decision.error}")
    for key, value in result.get("after_accept", {}).items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        print(f"  after the accept: {key}: {shown}")
    for step in decision.trace:
        mark = "match" if step.matched else "no   "
        print(f"  {mark} {step.rule}: {step.reason}")
    if decision.rule is None:
        print("  no rule matched: default applies")
    for note in decision.consulted:
        if note.outcome == "not_asked":
            print(
                f"  {note.service} was not asked (simulate sends no requests); answer for it"
                f" with --consult {note.service}=FILE.json"
            )
    return EXIT_OK


def cmd_send_test_call(args: argparse.Namespace) -> int:
    from app.webhook_signing import signed_test_call

    secret = args.secret
    if not secret:
        # Where serve reads it: the environment, `.env`, /run/secrets/OPENAI_WEBHOOK_SECRET.
        try:
            secret = next(iter(load_webhook_secrets()), None)
        except ConfigurationError as exc:
            return _fail(str(exc))
    if not secret:
        return _fail("--secret whsec_... is required (or set OPENAI_WEBHOOK_SECRET)")
    try:
        headers = _parse_headers(args.header)
        delivery = signed_test_call(
            secret, args.from_, args.to, now=int(time.time()), extra_headers=headers, api=args.api
        )
    except ValueError as exc:
        return _fail(str(exc), EXIT_PROBLEMS)
    try:
        response = httpx.post(args.url, content=delivery.body, headers=delivery.headers, timeout=30)
    except httpx.HTTPError as exc:
        return _fail(f"could not reach {args.url}: {exc}", EXIT_PROBLEMS)
    event = _event_type_of(delivery.body)
    print(
        f"call {delivery.call_id} ({event}, webhook {delivery.webhook_id}):"
        f" HTTP {response.status_code}"
    )
    print(response.text)
    return EXIT_OK if response.is_success else EXIT_PROBLEMS


def _event_type_of(body: bytes) -> str:
    """The event type of a body send-test-call built (and, for Live, its media security)."""
    event = json.loads(body)
    media_security = event["data"].get("sip_media_security")
    return f"{event['type']} over {media_security}" if media_security else str(event["type"])


def _recorded_calls(args: argparse.Namespace) -> list[dict[str, object]]:
    """The recorded calls to replay: a JSONL file, or the export of a running service."""
    from app.call_replay import read_jsonl

    if args.calls is not None:
        try:
            with open(args.calls, encoding="utf-8") as lines:
                return read_jsonl(lines)
        except OSError as exc:
            raise ValueError(f"--calls {args.calls}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"--calls {args.calls}: {exc}") from None
    token = args.token or os.environ.get("SIP_ROUTER_ADMIN_TOKEN")
    if not token:
        raise ValueError("--url needs --token (or SIP_ROUTER_ADMIN_TOKEN)")
    url = f"{args.url.rstrip('/')}/admin/calls"
    try:
        response = httpx.get(
            url,
            params={"inputs": "true", "limit": args.limit},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise ValueError(f"could not reach {url}: {exc}") from None
    if response.status_code != 200:
        raise ValueError(f"{url} answered HTTP {response.status_code}")
    try:
        calls = response.json()["calls"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{url} did not answer a call list") from None
    return [c for c in calls if isinstance(c, dict) and isinstance(c.get("call_id"), str)]


def cmd_replay(args: argparse.Namespace) -> int:
    from app.call_replay import replay_calls
    from app.rules_reloading import load_checked_ruleset

    if (args.calls is None) == (args.url is None):
        return _fail("replay takes one of --calls FILE.jsonl or --url BASE_URL")
    if not 1 <= args.limit <= 1000:
        return _fail("--limit takes 1 to 1000")
    try:
        candidate = load_checked_ruleset(Path(args.rules), datetime.now(tz=UTC))
    except RuleFileError as exc:
        _print_problems(exc)
        return _fail(f"{args.rules}: the candidate rules do not load")
    try:
        records = _recorded_calls(args)
    except ValueError as exc:
        return _fail(str(exc))
    report = replay_calls(candidate, records[: args.limit])
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False))
        return EXIT_PROBLEMS if report.changed else EXIT_OK
    for warning in candidate.warnings:
        print(warning, file=sys.stderr)
    skipped = f" ({report.skipped} skipped: recorded without inputs)" if report.skipped else ""
    print(
        f"{len(report.changed)} of {report.calls} recorded calls decided differently{skipped};"
        f" candidate ruleset {report.version}"
    )
    for change in report.changed:
        before, after = change.before, change.after
        print(
            f"  {change.call_id}  {change.time or '-'}  {before['rule']} {before['action']}"
            f" -> {after['rule']} {after['action']}"
        )
    return EXIT_PROBLEMS if report.changed else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from app.rules.json_schema import rule_file_schema

    print(json.dumps(rule_file_schema(), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sip-router",
        description="Route incoming SIP calls on OpenAI's Realtime API with YAML rules.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook service")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics on this port only, not on --port (default: $SIP_ROUTER_METRICS_PORT)",
    )
    serve.add_argument(
        "--dry-run", action="store_true", help="decide and log, send nothing upstream"
    )
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check", help="validate a rule file and run its tests")
    check.add_argument("rules", nargs="?", help="rule file (default: $SIP_ROUTER_RULES)")
    check.set_defaults(func=cmd_check)

    test = commands.add_parser("test", help="run a rule file's tests: block")
    test.add_argument("rules", nargs="?", help="rule file (default: $SIP_ROUTER_RULES)")
    test.set_defaults(func=cmd_test)

    simulate = commands.add_parser("simulate", help="show the decision for a call")
    simulate.add_argument("--from", dest="from_", required=True, metavar="NUMBER")
    simulate.add_argument("--to", required=True, metavar="NUMBER")
    simulate.add_argument("--header", action="append", default=[], metavar="'Name: value'")
    simulate.add_argument("--at", metavar="ISO-8601", help="the call's time (default: now)")
    simulate.add_argument("--rules", help="rule file (default: $SIP_ROUTER_RULES)")
    simulate.add_argument("--json", action="store_true", help="print one JSON object")
    simulate.add_argument(
        "--api",
        choices=("realtime", "live"),
        default="realtime",
        help="the API that announces the call: realtime (realtime.call.incoming, the default)"
        " or live (GPT-Live's live.transport.incoming)",
    )
    simulate.add_argument(
        "--media-security",
        dest="media_security",
        metavar="srtp|rtp",
        help="the call's sip_media_security (default: not given, unknown)",
    )
    simulate.add_argument(
        "--consult",
        action="append",
        default=[],
        metavar="SERVICE=FILE.json",
        help="the answer a consulted service gives (default: it is not asked; the next rule"
        " decides)",
    )
    simulate.set_defaults(func=cmd_simulate)

    send = commands.add_parser("send-test-call", help="send one signed test webhook")
    send.add_argument("--url", required=True)
    send.add_argument("--from", dest="from_", required=True, metavar="NUMBER")
    send.add_argument("--to", required=True, metavar="NUMBER")
    send.add_argument("--secret", help="whsec_... (default: $OPENAI_WEBHOOK_SECRET)")
    send.add_argument("--header", action="append", default=[], metavar="'Name: value'")
    send.add_argument(
        "--api",
        choices=("realtime", "live"),
        default="realtime",
        help="realtime.call.incoming (default), or GPT-Live's live.transport.incoming for a"
        " live_... session over srtp",
    )
    send.set_defaults(func=cmd_send_test_call)

    replay = commands.add_parser(
        "replay", help="decide recorded calls again with candidate rules; list what changes"
    )
    replay.add_argument("rules", metavar="CANDIDATE_RULES", help="the candidate main rule file")
    source = replay.add_mutually_exclusive_group()
    source.add_argument(
        "--calls",
        metavar="FILE.jsonl",
        help="recorded calls, one GET /admin/calls?inputs=true entry a line",
    )
    source.add_argument("--url", metavar="BASE_URL", help="a running sip-router to read them from")
    replay.add_argument("--token", help="admin token for --url (default: $SIP_ROUTER_ADMIN_TOKEN)")
    replay.add_argument("--limit", type=int, default=1000, help="newest calls to replay (max 1000)")
    replay.add_argument("--json", action="store_true", help="print one JSON object")
    replay.set_defaults(func=cmd_replay)

    schema = commands.add_parser("schema", help="print the JSON Schema of rule files")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
