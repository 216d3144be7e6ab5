"""Running the HTTP server of `sip-router serve`: uvicorn with the connection limits of
app/http/connection_limits.py, on the service port and, when configured, a metrics port.

Both ports are listening sockets of the same uvicorn server (every worker accepts on
both), so the metrics port has the same limits, and under `--workers N` whichever worker
answers /metrics reads every worker's values (PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

import functools
import logging
import resource
import socket
from typing import Any, cast

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.http.connection_limits import (
    ConnectionLimits,
    LimitedHttpToolsProtocol,
    WaitingConnections,
)

log = logging.getLogger("sip_router")

# Descriptors beyond the connection cap: the listening sockets, the upstream and Redis
# pools, log and rule files.
DESCRIPTOR_RESERVE = 512


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port that worker processes can inherit; OSError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def raise_descriptor_limit(limits: ConnectionLimits) -> int:
    """Raise the soft descriptor limit so the connection cap, not EMFILE, is what refuses
    clients; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + DESCRIPTOR_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    return soft


def run_http_server(
    app: str,
    *,
    listener: socket.socket,
    host: str,
    port: int,
    workers: int,
    limits: ConnectionLimits,
    metrics_listener: socket.socket | None,
    log_config: dict[str, Any],
    timeout_graceful_shutdown: int,
) -> bool:
    """Serve the ASGI factory `app` on `listener` (bound by the caller, so a port in use is
    known before anything starts) until stopped; False if the server did not start."""
    descriptors = raise_descriptor_limit(limits)
    if descriptors < limits.max_connections + DESCRIPTOR_RESERVE:
        log.warning(
            "the descriptor limit is below the connection cap: raise `ulimit -n`",
            extra={"fields": {"nofile": descriptors, "max_connections": limits.max_connections}},
        )
    protocol = functools.partial(
        LimitedHttpToolsProtocol, limits=limits, waiting=WaitingConnections()
    )
    config = uvicorn.Config(
        app,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # The partial builds a protocol per connection, as a class would.
        http=cast("type[LimitedHttpToolsProtocol]", protocol),
        ws="none",
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        server_header=False,
    )
    server = uvicorn.Server(config)
    sockets = [listener] if metrics_listener is None else [listener, metrics_listener]
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
        return True
    server.run(sockets=sockets)
    return server.started
