"""What the HTTP routes need, built once by `create_app` and reached through `request.app`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.call_processing import CallProcessor
from app.metrics import Metrics
from app.rules_reloading import RulesHolder
from app.settings import Settings
from app.store import Store


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    rules: RulesHolder
    store: Store
    processor: CallProcessor
    # One replay of candidate rules at a time (each loads them in its own process).
    replay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def get_services(request: Request) -> Services:
    # async: FastAPI would run a plain function in a worker thread on every request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
