"""Webhooks first: the calls' work waits for the webhooks in flight, but never long."""

from __future__ import annotations

import asyncio
import time

from app.webhooks_first import WebhooksFirst


async def test_with_no_webhook_in_flight_call_work_goes_on_at_once() -> None:
    webhooks = WebhooksFirst(max_defer_s=5.0)
    started = time.monotonic()
    await webhooks.after_webhooks()
    assert time.monotonic() - started < 0.5


async def test_call_work_waits_until_the_webhooks_in_flight_are_answered() -> None:
    webhooks = WebhooksFirst(max_defer_s=5.0)
    order: list[str] = []
    webhooks.started()
    webhooks.started()

    async def call_work() -> None:
        await webhooks.after_webhooks()
        order.append("call work")

    waiting = asyncio.ensure_future(call_work())
    await asyncio.sleep(0.05)
    webhooks.finished()
    await asyncio.sleep(0.05)
    assert order == []  # one webhook is still in flight
    order.append("webhooks answered")
    webhooks.finished()
    await asyncio.wait_for(waiting, 1.0)
    assert order == ["webhooks answered", "call work"]
    assert webhooks.in_flight == 0


async def test_webhooks_back_to_back_delay_call_work_by_max_defer_s_at_most() -> None:
    webhooks = WebhooksFirst(max_defer_s=0.05)
    webhooks.started()  # never answered here: a steady stream of webhooks
    started = time.monotonic()
    await asyncio.wait_for(webhooks.after_webhooks(), 1.0)
    waited = time.monotonic() - started
    assert 0.04 <= waited < 0.5
    assert webhooks.in_flight == 1


async def test_idle_waits_for_every_webhook_however_long() -> None:
    webhooks = WebhooksFirst(max_defer_s=0.01)
    webhooks.started()
    idle = asyncio.ensure_future(webhooks.idle())
    await asyncio.sleep(0.05)
    assert not idle.done()
    webhooks.finished()
    await asyncio.wait_for(idle, 1.0)
