"""Real uvicorn servers on loopback ports, each in a thread: the service, and the fakes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound, listening socket: clients can connect as soon as its port is known."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def running_server(
    server: uvicorn.Server, sock: socket.socket, *, name: str, start_timeout_s: float = 10
) -> Iterator[int]:
    """Run `server` on `sock` in a thread until the block ends; yields the port."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.005)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()


@contextlib.contextmanager
def serve_on_loopback(app: FastAPI) -> Iterator[str]:
    """Serve `app` (lifespan included) on 127.0.0.1; yields its base URL."""
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False)
    with running_server(
        uvicorn.Server(config), listening_socket(), name="sip-router", start_timeout_s=20
    ) as port:
        yield f"http://127.0.0.1:{port}"
