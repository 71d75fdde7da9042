"""GET /healthz (JSON, per component) and GET /metrics (Prometheus text) on a loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import h11
import structlog

from gateway.runtime.supervisor import Handle

__all__ = ["HealthServer"]

log = structlog.get_logger("gateway.health")
_MAX_REQUEST = 8192
_READ_TIMEOUT_S = 5.0


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
        self._report = report
        self._metrics = metrics
        self.bound_port: int | None = None

    async def run(self, handle: Handle) -> None:
        server = await asyncio.start_server(self._serve, self._host, self._port)
        self.bound_port = server.sockets[0].getsockname()[1]
        handle.ready(f"http://{self._host}:{self.bound_port}")
        async with server:
            await server.serve_forever()

    def _respond(self, target: bytes) -> tuple[int, str, bytes]:
        path = target.split(b"?", 1)[0]
        if path == b"/healthz":
            healthy, body = self._report()
            return (200 if healthy else 503), "application/json", json.dumps(body).encode()
        if path == b"/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
        return 404, "text/plain", b"not found: try /healthz or /metrics\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                event = await self._next_request(conn, reader)
            if event is None:
                return
            if event.method not in (b"GET", b"HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            else:
                status, ctype, body = self._respond(event.target)
            headers = [
                ("content-type", ctype),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            if event.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (TimeoutError, ConnectionError, h11.ProtocolError) as exc:
            log.debug("health request dropped", error=str(exc))
        finally:
            writer.close()

    @staticmethod
    async def _next_request(
        conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is h11.NEED_DATA:
                data = await reader.read(_MAX_REQUEST)
                conn.receive_data(data)
                if not data:
                    return None
            elif isinstance(event, h11.ConnectionClosed):
                return None
