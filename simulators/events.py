"""A device that sends events to the gateway and keeps each one until it is acknowledged.

What a POS lane does with transactions: publish with its own id, wait for the gateway's ack
(sent only after the commit), and send again, same id, whatever was not acknowledged in time.
The load generator and the client half of the crash tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiomqtt

from drivers.mqtt import NO_DELAY
from gateway.codecs.ids import uuid7
from gateway.codecs.topics import Topics

__all__ = ["EventSource"]


class EventSource:
    def __init__(
        self,
        host: str,
        port: int,
        store_id: str,
        *,
        kind: str = "pos",
        device_id: str = "pos-1",
        resend_after_s: float = 1.0,
    ) -> None:
        self.topics = Topics(store_id)
        self._topic = self.topics.device_events(kind, device_id)
        self._ack_topic = self.topics.device_events_ack(kind, device_id)
        self._client = aiomqtt.Client(
            host, port, identifier=f"{device_id}-events", socket_options=[NO_DELAY]
        )
        self._resend_after_s = resend_after_s
        self.unacked: dict[str, tuple[float, bytes]] = {}  # id -> (last sent, payload)
        self.acked: set[str] = set()
        self.sent = 0
        self.resent = 0
        self._acked_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> EventSource:
        await self._client.__aenter__()
        await self._client.subscribe(self._ack_topic, qos=1)
        self._tasks = [
            asyncio.create_task(self._read_acks(), name="acks"),
            asyncio.create_task(self._resend_loop(), name="resend"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def send(self, type: str, priority: str, data: Mapping[str, Any]) -> str:
        event_id = uuid7()
        payload = json.dumps(
            {"id": event_id, "type": type, "priority": priority, "ts": time.time(), "data": data},
            separators=(",", ":"),
        ).encode()
        self.unacked[event_id] = (time.monotonic(), payload)
        await self._client.publish(self._topic, payload, qos=1)
        self.sent += 1
        return event_id

    async def stream(self, rate: float, duration_s: float, telemetry_share: float = 0.5) -> int:
        """Events at a steady rate (open loop); every 1/telemetry_share-th is a transaction."""
        start = time.monotonic()
        n = 0
        task = asyncio.current_task()
        while (now := time.monotonic()) - start < duration_s:
            # Python 3.11's wait_for (inside aiomqtt's publish) can swallow a cancellation
            # that races with the publish completing: honour it here.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            due = start + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            telemetry = (n % 100) < telemetry_share * 100
            await self.send(
                "pos.scan" if telemetry else "pos.transaction",
                "telemetry" if telemetry else "transaction",
                {"n": n, "total": round(n * 0.37, 2)},
            )
            n += 1
        return n

    async def settled(self) -> None:
        """Until every event sent was acknowledged (bound it with asyncio.timeout)."""
        while self.unacked:
            self._acked_changed.clear()
            await self._acked_changed.wait()

    async def _read_acks(self) -> None:
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            for event_id in json.loads(payload).get("ids", []):
                self.unacked.pop(event_id, None)
                self.acked.add(event_id)
            self._acked_changed.set()

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resend_after_s / 2)
            cutoff = time.monotonic() - self._resend_after_s
            for event_id, (sent_at, payload) in list(self.unacked.items()):
                if sent_at < cutoff and event_id in self.unacked:
                    self.unacked[event_id] = (time.monotonic(), payload)
                    await self._client.publish(self._topic, payload, qos=1)
                    self.resent += 1
