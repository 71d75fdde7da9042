"""The simulated store floor: kiosks and screens on one MQTT connection, with what they saw.

`SimulatedStore` is the load generator and observer shared by the demo, the tests and the
benchmarks: it publishes identifications and records every content, error and status message
with its arrival time, so a caller can wait for "the content answering request R on topic T".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiomqtt

from drivers.mqtt import NO_DELAY
from gateway.codecs.payloads import (
    Content,
    GatewayStatus,
    PayloadError,
    decode_content,
    decode_status,
)
from gateway.codecs.topics import Topics
from simulators.kiosk import Kiosk

__all__ = ["Arrival", "SimulatedStore"]


@dataclass(frozen=True, slots=True)
class Arrival:
    topic: str
    content: Content
    at: float  # time.monotonic() on arrival
    retained: bool


@dataclass
class _Seen:
    content: dict[str, Arrival] = field(default_factory=dict)  # latest per topic
    by_request: dict[str, dict[str, Arrival]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[GatewayStatus] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


class SimulatedStore:
    def __init__(self, host: str, port: int, store_id: str, client_id: str = "sim-store") -> None:
        self.topics = Topics(store_id)
        # Kiosks publish on one connection, screens listen on another: different devices.
        self._client = aiomqtt.Client(
            host, port, identifier=f"{client_id}-kiosks", socket_options=[NO_DELAY]
        )
        self._screens = aiomqtt.Client(
            host, port, identifier=f"{client_id}-screens", socket_options=[NO_DELAY]
        )
        self.seen = _Seen()
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    def kiosk(self, kiosk_id: str) -> Kiosk:
        return Kiosk(self._client, self.topics, kiosk_id)

    @property
    def client(self) -> aiomqtt.Client:
        """The kiosks' connection, for publishing anything."""
        return self._client

    async def __aenter__(self) -> SimulatedStore:
        await self._client.__aenter__()
        await self._screens.__aenter__()
        root = self.topics.root
        for topic in (f"{root}/kiosk/+/content", f"{root}/screen/+/content"):
            await self._screens.subscribe(topic, qos=1)
        await self._screens.subscribe(self.topics.gateway_errors, qos=1)
        await self._screens.subscribe(self.topics.gateway_status, qos=1)
        self._reader = asyncio.create_task(self._read(), name="sim-store-reader")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        for client in (self._screens, self._client):
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self._screens.messages:
            now = time.monotonic()
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                self._record(topic, payload, now, bool(message.retain))
            except PayloadError as exc:
                self.seen.unreadable.append(f"{topic}: {exc}")
            async with self._changed:
                self._changed.notify_all()

    def _record(self, topic: str, payload: bytes, now: float, retained: bool) -> None:
        if topic == self.topics.gateway_errors:
            self.seen.errors.append(json.loads(payload))
        elif topic == self.topics.gateway_status:
            self.seen.statuses.append(decode_status(payload))
        else:
            arrival = Arrival(topic, decode_content(payload), now, retained)
            self.seen.content[topic] = arrival
            if arrival.content.request_id:
                self.seen.by_request.setdefault(arrival.content.request_id, {})[topic] = arrival

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` is true, re-checked after every message (bound it with
        `asyncio.timeout`)."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def answers(self, request_id: str, topics: Iterable[str]) -> dict[str, Arrival]:
        """The content answering `request_id` on every one of `topics`."""
        wanted = set(topics)

        def complete() -> bool:
            return wanted <= set(self.seen.by_request.get(request_id, {}))

        await self.wait_for(complete)
        return {t: self.seen.by_request[request_id][t] for t in wanted}
