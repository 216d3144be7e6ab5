"""Unreadable numbers of a simulated call are refused by `simulate` and `/admin/simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.simulated_numbers import simulated_number_problem
from tests.conftest import app_settings, build_app, running
from tests.fake_openai import FakeOpenAI

EXAMPLE = Path(__file__).resolve().parents[1] / "routing_rules" / "rules.yaml"
TOKEN = "admin-token-for-simulate"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MARKER = "ECHO-MARKER-19c2"


@pytest.mark.parametrize(
    ("text", "region", "caller", "readable"),
    [
        ("+14155550100", None, False, True),
        ("+1 (415) 555-0100", None, False, True),
        # Read leniently, as a SIP trunk's number is: "+digits" are kept as given.
        ("+1415", None, True, True),
        ("4155550100", "US", False, True),
        ("anonymous", "US", True, True),
        ("Anonymous", "US", True, True),
        ("", "US", True, True),
        ("anonymous", "US", False, False),
        ("", "US", False, False),
        ("x", "US", False, False),
        ("x", None, True, False),
        ("+", None, False, False),
        ("415-CALL-NOW", "US", True, False),
        ("sip:alice@example.com", "US", True, False),
    ],
)
def test_simulated_number_problem(
    text: str, region: str | None, caller: bool, readable: bool
) -> None:
    problem = simulated_number_problem(text, region, caller=caller)
    assert (problem is None) == readable, problem


def test_problem_says_how_to_write_a_number() -> None:
    assert simulated_number_problem("x", "US", caller=True) == (
        "not a phone number (write + and the country code, e.g. +14155550100,"
        " or a national number of the rules' region US, or 'anonymous' for a withheld number)"
    )
    assert simulated_number_problem("x", None, caller=False) == (
        "not a phone number (write + and the country code, e.g. +14155550100)"
    )


# --- sip-router simulate ------------------------------------------------------------------


def test_cli_refuses_a_called_number_that_is_not_one(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--rules", str(EXAMPLE), "--from", "+1415", "--to", "x"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("sip-router: --to 'x': not a phone number (")
    assert len(captured.err.splitlines()) == 1


def test_cli_refuses_a_caller_that_is_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--rules", str(EXAMPLE), "--from", "bob", "--to", "+14155550100"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("sip-router: --from 'bob': not a phone number (")
    assert "'anonymous'" in captured.err


@pytest.mark.parametrize("withheld", ["anonymous", ""])
def test_cli_still_simulates_a_withheld_caller(
    capsys: pytest.CaptureFixture[str], withheld: str
) -> None:
    args = ["simulate", "--rules", str(EXAMPLE), "--json", "--from", withheld]
    assert main([*args, "--to", "+14155550100"]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == "withheld-number"


def test_cli_reads_a_national_number_in_the_rules_region(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["simulate", "--rules", str(EXAMPLE), "--json", "--from", "anonymous"]
    assert main([*args, "--to", "(415) 555-0100"]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == "withheld-number"


# --- POST /admin/simulate -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"from": "+14155550123", "to": f"x{MARKER}"}, "to: not a phone number ("),
        ({"from": f"bob{MARKER}", "to": "+14155550100"}, "from: not a phone number ("),
        ({"from": "+14155550123", "to": "anonymous"}, "to: not a phone number ("),
    ],
)
async def test_admin_simulate_answers_422_with_the_reason_without_echoing(
    rules_path: Path, secret: str, fake: FakeOpenAI, body: dict[str, str], reason: str
) -> None:
    app = build_app(app_settings(rules_path, secret, admin_token=TOKEN), fake)
    async with running(app) as client:
        response = await client.post("/admin/simulate", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"].startswith(reason)
    assert MARKER not in response.text


async def test_admin_simulate_still_decides_a_withheld_caller(
    rules_path: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(app_settings(rules_path, secret, admin_token=TOKEN), fake)
    async with running(app) as client:
        response = await client.post(
            "/admin/simulate", json={"from": "anonymous", "to": "+14155550100"}, headers=AUTH
        )
    assert response.status_code == 200
    assert (response.json()["rule"], response.json()["action"]) == ("withheld", "reject")
