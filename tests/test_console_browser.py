"""The operator console in a real browser: Debian's Chromium, headless, driven by Playwright.

The service runs on a loopback port (uvicorn in a thread) with the fake OpenAI behind it.
Screenshots of every view, at desktop and at phone width, go to tests/artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.app_factory import create_app
from app.call_api import CallApi
from app.webhook_signing import signed_test_call
from tests.conftest import app_settings
from tests.fake_openai import FakeOpenAI
from tests.loopback_service import serve_on_loopback

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TOKEN = "console-browser-token"
CALLER = "+14155550123"
BLOCKED = "+12025550199"
LINE = "+18005550100"

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need Debian's chromium at /usr/bin/chromium"
        " (apt-get install -y chromium)",
    ),
]

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Answer politely."}
lists:
  blocked: ["+12025550199"]
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
  - name: partner-line
    when: {header: {X-Partner-Id: {regex: "[A-Z]{3}[0-9]{4}"}}}
    refer: {target_uri: "sip:partners@pbx.example.com"}
default: {accept: {profile: desk}}
"""


@dataclass
class Console:
    url: str
    secret: str
    rules: Path

    def call(self, caller: str, called: str = LINE, *, api: CallApi = "realtime") -> str:
        delivery = signed_test_call(self.secret, caller, called, now=int(time.time()), api=api)
        response = httpx.post(
            f"{self.url}/webhooks/openai", content=delivery.body, headers=delivery.headers
        )
        assert response.status_code == 200, response.text
        return delivery.call_id


@pytest.fixture
def console(tmp_path: Path, secret: str) -> Iterator[Console]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    fake = FakeOpenAI("sk-test")
    settings = app_settings(rules, secret, admin_token=TOKEN, action_deadline_s=1.0)
    app = create_app(settings, transport=fake.mock_transport(), watch_interval_s=None)
    with serve_on_loopback(app) as url:
        yield Console(url, secret, rules)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def shoot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def sign_in(page: object, console: Console, token: str = TOKEN) -> None:
    page.goto(f"{console.url}/admin/")  # type: ignore[attr-defined]
    page.get_by_label("Admin token").fill(token)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def test_a_wrong_token_shows_an_error_not_a_blank_page(browser: object, console: Console) -> None:
    expect = playwright_api.expect
    page = browser.new_page(viewport=DESKTOP)  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{console.url}/admin/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shoot(page, "desktop-sign-in")
    sign_in(page, console, "not-the-token")
    expect(page.get_by_role("alert")).to_have_text("That admin token was not accepted.")
    expect(page.get_by_role("navigation")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    shoot(page, "desktop-wrong-token")
    # The wrong token was refused by the API (a 401 the browser reports), nothing else.
    assert all("401" in e for e in errors), errors
    page.close()


def test_the_console_end_to_end(browser: object, console: Console) -> None:
    expect = playwright_api.expect
    page = browser.new_page(viewport=DESKTOP)  # type: ignore[attr-defined]
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    sign_in(page, console)

    # Calls: empty at first, then a signed webhook's call arrives by itself.
    expect(page.get_by_text("No calls yet.")).to_be_visible()
    shoot(page, "desktop-calls-empty")
    accepted = console.call(CALLER)
    console.call(BLOCKED)
    rows = page.locator("#calls-rows tr")
    expect(rows).to_have_count(2, timeout=10_000)
    expect(rows.first).to_contain_text("blocked-callers")
    expect(rows.nth(1)).to_contain_text("+1******0123")
    assert CALLER not in page.locator("#view-calls").inner_text()
    page.get_by_label("Action").select_option("accept")
    expect(rows).to_have_count(1)
    expect(page.locator("#calls-count")).to_have_text("1 of 2 calls")
    page.get_by_label("Action").select_option("")
    expect(rows).to_have_count(2)
    # A call announced on GPT-Live shows its API, and the API filter finds it.
    console.call("+12125550143", api="live")
    expect(rows).to_have_count(3, timeout=10_000)
    expect(rows.first).to_contain_text("GPT-Live")
    expect(rows.nth(1)).to_contain_text("Realtime")
    page.locator("#calls-filter").get_by_label("API").select_option("live")
    expect(rows).to_have_count(1)
    page.locator("#calls-filter").get_by_label("API").select_option("")
    expect(rows).to_have_count(3)
    shoot(page, "desktop-calls")

    # Call: one call in full, with its request and a hangup button (accepted, live).
    rows.nth(2).get_by_role("link").click()
    expect(page.get_by_role("heading", name=re.compile("Call"))).to_contain_text(accepted)
    expect(page.locator("#call-facts")).to_contain_text("processed")
    expect(page.locator("#call-requests")).to_contain_text("accept")
    expect(page.get_by_role("button", name="Hang up this call")).to_be_visible()
    shoot(page, "desktop-call")

    # Simulate.
    page.get_by_role("link", name="Simulate").click()
    page.get_by_label("From", exact=True).fill("+14155550123")
    page.get_by_label("To", exact=True).fill(LINE)
    page.get_by_label("Headers").fill("X-Partner-Id: ABC1234")
    page.get_by_role("button", name="Decide").click()
    expect(page.locator("#simulate-result")).to_contain_text("partner-line")
    expect(page.locator("#simulate-result")).to_contain_text("refer")
    shoot(page, "desktop-simulate")
    # The same call announced on GPT-Live: the refer accepts on the Live endpoint first.
    page.locator("#sim-api").select_option("live")
    page.get_by_role("button", name="Decide").click()
    expect(page.locator("#simulate-result")).to_contain_text("GPT-Live")
    expect(page.locator("#simulate-result")).to_contain_text("/live/sessions/live_simulated/accept")

    # Replay an edited copy of the active rules: the accepted caller becomes blocked.
    page.get_by_role("link", name="Replay").click()
    page.get_by_role("button", name="Start from the active rules").click()
    expect(page.locator("#replay-main")).to_have_value(re.compile("blocked-callers"))
    text = page.locator("#replay-main").input_value()
    page.locator("#replay-main").fill(
        text.replace('["+12025550199"]', f'["+12025550199", "{CALLER}"]')
    )
    page.get_by_role("button", name="Replay", exact=True).click()
    result = page.locator("#replay-result")
    expect(result).to_contain_text("1 of 3 recorded calls would be decided differently")
    expect(page.locator("#replay-changes tbody tr")).to_have_count(1)
    expect(page.locator("#replay-changes")).to_contain_text("default → accept")
    expect(page.locator("#replay-changes")).to_contain_text("blocked-callers → reject")
    shoot(page, "desktop-replay")
    # A candidate that does not load shows its file:line errors.
    page.locator("#replay-main").fill(text.replace("{in: blocked}", "{in: blockd}"))
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.locator("#replay-errors")).to_contain_text("rules.yaml:9:")
    shoot(page, "desktop-replay-error")

    # Rules: contents, hits; a reload picks up an edit on disk.
    page.get_by_role("link", name="Rules").click()
    expect(page.locator("#rules-files")).to_contain_text("partner-line")
    # Files are named as the rules name them; the full path is the summary's tooltip.
    expect(page.locator("#rules-files summary").first).to_have_text("rules.yaml")
    expect(page.locator("#rules-hits")).to_contain_text("blocked-callers")
    before = page.locator("#rules-facts dd").first.inner_text()
    console.rules.write_text(RULES.replace("Answer politely.", "Hello."), encoding="utf-8")
    page.get_by_role("button", name="Reload rules now").click()
    expect(page.locator("#status")).to_contain_text("Rules reloaded: version")
    expect(page.locator("#rules-facts dd").first).not_to_have_text(before)
    shoot(page, "desktop-rules")
    assert page_errors == []

    # Phone width: every view renders within the screen, after signing in again
    # (the token belongs to one tab).
    phone = browser.new_page(viewport=PHONE)  # type: ignore[attr-defined]
    sign_in(phone, console)
    expect(phone.locator("#calls-rows tr")).to_have_count(3, timeout=10_000)
    shoot(phone, "phone-calls")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.locator("#calls-rows tr").nth(2).get_by_role("link").click()
    expect(phone.locator("#call-requests")).to_contain_text("accept")
    shoot(phone, "phone-call")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for view in ("Rules", "Simulate", "Replay"):
        phone.get_by_role("link", name=view).click()
        expect(phone.locator(f"#view-{view.lower()}")).to_be_visible()
        if view == "Rules":
            expect(phone.locator("#rules-files")).to_contain_text("partner-line")
        shoot(phone, f"phone-{view.lower()}")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{view} is wider than the phone: {width}"
    page.close()
    phone.close()


def test_the_console_works_with_the_keyboard(browser: object, console: Console) -> None:
    expect = playwright_api.expect
    page = browser.new_page(viewport=DESKTOP)  # type: ignore[attr-defined]
    page.goto(f"{console.url}/admin/")
    page.get_by_label("Admin token").focus()
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_text("No calls yet.")).to_be_visible()
    # Tab from the page's start reaches the views' links.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Simulate":
            break
    assert page.evaluate("document.activeElement.textContent") == "Simulate"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Simulate a call")).to_be_visible()
    page.close()
