"""The console's page and assets as HTTP resources: served without a token, holding no data,
with headers that allow only this origin and forbid framing; gone without an admin token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import app_settings, build_app, running
from tests.fake_openai import FakeOpenAI

TOKEN = "console-page-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Answer politely."}
lists:
  blocked: {file: blocked.txt}
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
default: {accept: {profile: desk}}
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    (tmp_path / "blocked.txt").write_text("+12025550199\n", encoding="utf-8")
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


async def test_the_page_needs_no_token_and_reveals_nothing(
    rules: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(app_settings(rules, secret, admin_token=TOKEN), fake)
    async with running(app) as client:
        page = await client.get("/admin/")
        version = app.state.services.rules.current.version
        assets = re.findall(r'(?:src|href)="(/admin/console/[^"]+)"', page.text)
        answers = [await client.get(asset) for asset in assets]
        unknown = await client.get("/admin/console/secrets.txt")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    # Scripts only from files (no inline script, no handler attributes), none from elsewhere.
    assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []
    assert re.search(r"\son[a-z]+=", page.text) is None
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert version not in page.text
    assert "blocked-callers" not in page.text
    assert sorted(a.split("?")[0] for a in assets) == [
        "/admin/console/console.css",
        "/admin/console/console.js",
        "/admin/console/favicon.svg",
    ]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert unknown.status_code == 404


async def test_without_an_admin_token_there_is_no_console(
    rules: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(app_settings(rules, secret), fake)
    async with running(app) as client:
        for path in ("/admin/", "/admin/console/console.js"):
            assert (await client.get(path)).status_code == 404


async def test_rules_with_contents_show_every_file_as_on_disk(
    rules: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(app_settings(rules, secret, admin_token=TOKEN), fake)
    async with running(app) as client:
        plain = (await client.get("/admin/rules", headers=AUTH)).json()
        full = (await client.get("/admin/rules?contents=true", headers=AUTH)).json()
    assert "contents" not in plain
    assert full["contents"] == [
        {"file": str(rules), "name": "rules.yaml", "text": RULES},
        {
            "file": str(rules.parent / "blocked.txt"),
            "name": "blocked.txt",
            "text": "+12025550199\n",
        },
    ]
