"""`GET /admin/`: the operator console, a server-rendered page over the admin API.

The page and its two assets (app/console_static: plain JavaScript and CSS, no build step,
nothing from another origin) need no token and hold no data: the script asks for the
admin token once per browser tab (sessionStorage), sends it as the Authorization header of
its calls to the JSON admin API, and renders what they answer. Every response carries a
Content-Security-Policy that allows only this origin's scripts, styles and API, and
forbids framing.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES_DIR: Final = Path(__file__).resolve().parent.parent / "console_templates"
STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "console_static"
ASSET_PATH = "/admin/console/"
_ASSETS: Final = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

VIEWS: Final = (
    ("calls", "Calls"),
    ("rules", "Rules"),
    ("simulate", "Simulate"),
    ("replay", "Replay"),
)
CALL_FILTERS: Final = (
    ("rule", "Rule"),
    ("action", "Action"),
    ("outcome", "Outcome"),
    ("api", "API"),
)

router = APIRouter(prefix="/admin")


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and a short hash of them (for the URL, so caches see a change)."""
    data = (STATIC_DIR / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


@cache
def _page() -> str:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = environment.get_template("console.html")
    return template.render(
        views=VIEWS,
        call_filters=CALL_FILTERS,
        asset=lambda name: f"{ASSET_PATH}{name}?v={_asset(name)[1]}",
    )


@router.get("/", response_class=HTMLResponse)
async def console_page() -> HTMLResponse:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return HTMLResponse(_page(), headers=headers)


@router.get("/console/{name}")
async def console_asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    data, _ = _asset(name)
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(data, media_type=f"{media_type}; charset=utf-8", headers=headers)
