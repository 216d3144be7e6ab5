"""The composition root: `create_app(settings)` builds every part of the service once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from app.call_processing import CallProcessor, ProcessingOptions
from app.calls.call_attendant import CallAttendant
from app.calls.calls_process import CallsProcess
from app.calls.calls_process_link import CallsConfig
from app.calls_wiring import call_attendant, tuned_collector
from app.http import admin, console, health, replay, webhooks
from app.http.metrics_port import MetricsPortMiddleware
from app.http.services import Services
from app.metrics import Metrics
from app.openai_calls import OpenAICallsClient
from app.outbound_requests import outbound_http_client
from app.rules.problems import RuleFileError
from app.rules_reloading import RulesHolder, start_load_server
from app.service_consultation import ServiceConsultant
from app.settings import Settings
from app.store import RedisStore, Store, StoreAvailability, open_store
from app.upstream_transport import upstream_http_client
from app.webhook_verification import WebhookVerifier
from app.webhooks_first import WebhooksFirst

log = logging.getLogger("sip_router")


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    outbound_transport: httpx.AsyncBaseTransport | None = None,
    store: Store | None = None,
    handle_signals: bool = False,
    watch_interval_s: float | None = 1.0,
    calls_process: bool = False,
) -> FastAPI:
    """Build the service. `transport` replaces the network to OpenAI, `outbound_transport`
    the one to your own services (tests); signals only under serve. With `calls_process`
    the calls sip-router stays with are driven by a process of their own (their actions
    and functions then go over the network, whatever the transports)."""
    metrics = Metrics()
    rules = RulesHolder(
        settings.rules,
        metrics,
        load_timeout_s=settings.reload_timeout_s,
        load_memory_bytes=settings.reload_memory_mb * 1024**2,
    )
    if store is None:
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        store = open_store(redis_url, memory_max_calls=settings.memory_max_calls)
    http = upstream_http_client(transport)
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    calls = OpenAICallsClient(
        http,
        base_url=settings.openai_base_url,
        api_key=api_key,
        deadline_s=settings.action_deadline_s,
        on_response=metrics.upstream_answered,
    )
    # Your own services get a client of their own: a slow one cannot hold OpenAI's pool.
    outbound = outbound_http_client(outbound_transport)
    consultant = ServiceConsultant(outbound, secret=settings.outbound_secret_value, metrics=metrics)
    # The calls sip-router stays with after the accept: driven by a process of their own
    # (under `serve`), or here, where their work steps aside for webhooks.
    webhooks_first = WebhooksFirst()
    keeper: CallAttendant | CallsProcess
    calls_config = CallsConfig(
        openai_base_url=settings.openai_base_url,
        openai_api_key=api_key,
        outbound_secret=settings.outbound_secret_value,
        keep_transcripts=settings.transcripts,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        action_deadline_s=settings.action_deadline_s,
        log_format=settings.log_format,
        log_level=settings.log_level,
    )
    if calls_process:
        keeper = CallsProcess(calls_config, call_log=store, metrics_dir=metrics.multiprocess_dir)
    else:
        keeper = call_attendant(
            calls_config,
            metrics=metrics,
            actions=calls,
            outbound=outbound,
            call_log=store,
            redis_store=store if isinstance(store, RedisStore) else None,
            webhooks=webhooks_first,
        )
    processor = CallProcessor(
        verifier=WebhookVerifier(settings.webhook_secrets, settings.timestamp_tolerance_s),
        rules=rules,
        store=store,
        calls=calls,
        metrics=metrics,
        options=ProcessingOptions(
            dry_run=settings.dry_run,
            max_event_age_s=settings.max_event_age_s,
            action_deadline_s=settings.action_deadline_s,
            mask_numbers=settings.mask_numbers,
            keep_call_inputs=settings.keep_call_inputs,
        ),
        consultant=consultant,
        keeper=keeper,
        webhooks=webhooks_first,
    )
    services = Services(settings, metrics, rules, store, processor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            ruleset = rules.current or rules.load_now()
        except RuleFileError as exc:
            log.error(
                "routing rules are invalid",
                extra={"fields": {"errors": [str(p) for p in exc.problems]}},
            )
            raise
        log.info(
            "sip-router started",
            extra={
                "fields": {
                    "ruleset": ruleset.version,
                    "rules": str(settings.rules),
                    "dry_run": settings.dry_run,
                    "store": "redis" if settings.redis_url else "memory",
                    "warnings": list(ruleset.warnings),
                }
            },
        )
        if settings.base_url_warning is not None:
            log.warning(settings.base_url_warning)
        if ruleset.services or ruleset.functions:
            consultant.warn_if_unsigned()
        # A store that does not answer is told at start, and again while it stays away.
        availability = StoreAvailability(store)
        await availability.check()
        store_watch = asyncio.create_task(availability.watch())
        start_load_server()  # in the background; reloads fork from it
        watcher = asyncio.create_task(rules.watch(watch_interval_s)) if watch_interval_s else None
        if handle_signals:
            _on_sighup(rules)
        await keeper.start()
        try:
            with tuned_collector():
                yield
        finally:
            finished = await processor.drain(settings.action_deadline_s * 2 + 1)
            dropped = processor.cancel_scheduled_hangups()
            # Hand the calls over: their leases are released, another replica takes them.
            handed_over = await keeper.stop()
            log.info(
                "sip-router stopped",
                extra={
                    "fields": {
                        "in_flight_finished": finished,
                        "scheduled_hangups_dropped": dropped,
                        "calls_handed_over": handed_over,
                    }
                },
            )
            for task in (store_watch, watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await http.aclose()
            await outbound.aclose()
            await store.aclose()

    app = FastAPI(
        title="sip-router",
        summary="Routes incoming SIP calls on OpenAI's Realtime API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = services
    app.include_router(webhooks.router)
    app.include_router(health.router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    else:
        # /metrics names the rules: served only on its own port, which need not be exposed.
        app.add_middleware(MetricsPortMiddleware, port=settings.metrics_port, metrics=metrics)
    if settings.admin_token is not None:
        # Without a token the admin API does not exist: 404 for every method and path.
        app.include_router(admin.router)
        app.include_router(replay.router)
        app.include_router(console.router)
    return app


def _on_sighup(rules: RulesHolder) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[object]] = set()

    def reload() -> None:
        task = loop.create_task(_reload_quietly(rules))
        pending.add(task)
        task.add_done_callback(pending.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload)


async def _reload_quietly(rules: RulesHolder) -> None:
    with contextlib.suppress(RuleFileError):
        await rules.reload("SIGHUP")
