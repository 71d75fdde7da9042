"""Events from devices (POS lanes, kiosks, tablets) for the cloud: accept, then acknowledge.

A device publishes an event with its own id; the gateway commits it to the outbox (group
commit) and only then answers on the device's ack topic. Acks are gathered per device and sent
once per loop turn, so a burst of events costs a few ack messages, not one each. A device
re-sends what was not acknowledged (after a gateway crash, say); the id makes it harmless.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gateway.decision.rewards import REWARD_EVENTS, RewardJoiner
from gateway.journey import Publisher
from gateway.payloads import PayloadError, decode
from gateway.sync.outbox import Outbox
from gateway.topics import Topics

__all__ = ["AfterCommit", "DeviceEvents"]

# (device kind, device id, event type, event data, event id), once the event is committed.
AfterCommit = Callable[[str, str, str, Mapping[str, Any], str], None]

log = structlog.get_logger("gateway.device_events")
DEVICE_KINDS = frozenset({"kiosk", "pos", "tablet", "screen"})


class DeviceEvents:
    def __init__(
        self,
        topics: Topics,
        outbox: Outbox,
        publisher: Publisher,
        rewards: RewardJoiner | None = None,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self._after_commit = after_commit
        self._topics = topics
        self._outbox = outbox
        self._publisher = publisher
        self._rewards = rewards
        self._acks: dict[tuple[str, str], list[str]] = {}

    def on_event(self, topic: str, payload: bytes) -> None:
        """Route handler: validate and queue for commit; raises `PayloadError` if refused."""
        device = self._topics.device_of(topic)
        if device is None or device[0] not in DEVICE_KINDS:
            raise PayloadError(f"events are accepted from {sorted(DEVICE_KINDS)} devices only")
        data = decode("device-event", payload)
        row = self._outbox.row(
            data["type"],
            data["priority"],
            {**data["data"], "device": f"{device[0]}/{device[1]}"},
            event_id=data["id"],
            ts=data.get("ts"),
        )
        future = self._outbox.submit(row)
        future.add_done_callback(lambda f: self._accepted(f, device, row.id))
        if self._after_commit is not None:
            hook = self._after_commit
            future.add_done_callback(
                lambda f: (
                    not f.cancelled()
                    and f.exception() is None
                    and hook(device[0], device[1], data["type"], data["data"], row.id)
                )
            )
        decision_id = data["data"].get("decision_id")
        if self._rewards is not None and data["type"] in REWARD_EVENTS and decision_id:
            # The reward joins its decision once the event itself is safe.
            future.add_done_callback(
                lambda f: (
                    f.exception() is None
                    and self._rewards.join_soon(  # type: ignore[union-attr]
                        str(decision_id), data["type"]
                    )
                )
            )

    def _reward(self, future: asyncio.Future[None], decision_id: str, event_type: str) -> None:
        """The reward joins its decision once the event itself is committed."""
        if self._rewards is not None and not future.cancelled() and future.exception() is None:
            self._rewards.join_soon(decision_id, event_type)

    def _accepted(
        self, future: asyncio.Future[None], device: tuple[str, str], event_id: str
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # not committed: no ack, the device will send it again
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._flush)
        self._acks.setdefault(device, []).append(event_id)

    def _flush(self) -> None:
        acks, self._acks = self._acks, {}
        for (kind, device_id), ids in acks.items():
            body = json.dumps({"schema": "event-ack/1", "ids": ids}, separators=(",", ":"))
            self._publisher.post(self._topics.device_events_ack(kind, device_id), body.encode())
