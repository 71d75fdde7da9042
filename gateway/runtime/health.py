"""GET /healthz (JSON, per component) and GET /metrics (Prometheus text) on a loopback port.

Served by Starlette on uvicorn (the console's stack too: `gateway.console`). /healthz is honest:
503 only while the gateway cannot serve (the store or the store broker is not ready, or it is
still starting); a part that is down while those serve (a printer unplugged, the camera stalled,
the cloud away) is 200, `"status": "degraded"`, and the part named under `degraded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.runtime.supervisor import ComponentHealth, Handle, State

__all__ = ["CRITICAL", "HealthServer", "Verdict", "health_app", "judge", "serve_asgi"]

log = structlog.get_logger("gateway.health")

# Without these the gateway cannot serve a device: every other part is optional.
CRITICAL = ("store", "mqtt")


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # ok, degraded (serving, a part down), unavailable, starting
    degraded: tuple[str, ...]  # the parts not ready, critical or not

    @property
    def serving(self) -> bool:
        return self.status in ("ok", "degraded")


def judge(
    health: Mapping[str, ComponentHealth], *, ready_once: bool, critical: Sequence[str] = CRITICAL
) -> Verdict:
    """The gateway's state from its components': pure, shared by /healthz, the console, status."""
    down = tuple(name for name, h in health.items() if h.state != State.READY)
    if not ready_once:
        return Verdict("starting", down)
    if any(name in down for name in critical):
        return Verdict("unavailable", down)
    return Verdict("degraded" if down else "ok", down)


def health_app(
    report: Callable[[], tuple[bool, Mapping[str, Any]]], metrics: Callable[[], bytes]
) -> Starlette:
    """The two loopback endpoints, as an ASGI application."""

    async def healthz(_request: Request) -> Response:
        serving, body = report()
        return JSONResponse(body, status_code=200 if serving else 503)

    async def prometheus(_request: Request) -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return PlainTextResponse("not found: try /healthz or /metrics\n", status_code=404)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/metrics", prometheus, methods=["GET", "HEAD"]),
        ],
        exception_handlers={404: not_found},
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway's own handle SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free one), IPv4 or IPv6 as the host says."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (it reads the listener's). Without it a response's body waited for the ACK of its head,
    # ~40 ms on every request of a kept-alive connection (the browser's).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_asgi(
    app: Any,
    sock: socket.socket,
    on_ready: Callable[[], None],
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    closing: asyncio.Event | None = None,
) -> None:
    """Serve `app` on `sock` until cancelled; then set `closing` (long responses, such as event
    streams, end on it), give open responses a second, and stop."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=1,
        server_header=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        while not server.started:
            if task.done():
                await task  # it failed to start: raise why
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        on_ready()
        await asyncio.shield(task)
    finally:
        if closing is not None:
            closing.set()
        server.should_exit = True  # idle connections close; open responses have a second
        await asyncio.shield(task)
        sock.close()


class HealthServer:
    name = "health"
    requires: tuple[str, ...] = ()

    def __init__(
        self,
        host: str,
        port: int,
        report: Callable[[], tuple[bool, Mapping[str, Any]]],
        metrics: Callable[[], bytes],
    ) -> None:
        self._host, self._port = host, port
        self._app = health_app(report, metrics)
        self.bound_port: int | None = None

    async def run(self, handle: Handle) -> None:
        sock = listen(self._host, self._port)
        self.bound_port = sock.getsockname()[1]
        url = f"http://{self._host}:{self.bound_port}"
        await serve_asgi(self._app, sock, lambda: handle.ready(url))
