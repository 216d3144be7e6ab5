"""The ASGI factory that uvicorn calls under `sip-router serve` (settings from the environment)."""

from __future__ import annotations

from fastapi import FastAPI

from app.app_factory import create_app
from app.log_format import configure_logging
from app.settings import load_settings


def app_from_environment() -> FastAPI:
    """Read the settings the CLI already validated and build the app."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings, handle_signals=True, calls_process=settings.calls_in_own_process)
