"""Events from devices (POS lanes, kiosks, tablets) for the cloud: accept, then acknowledge.

A device publishes an event with its own id; the gateway commits it to the outbox (group
commit) and only then answers on the device's ack topic. Acks are gathered per device and sent
once per loop turn, so a burst of events costs a few ack messages, not one each. A device
re-sends what was not acknowledged (after a gateway crash, say); the id makes it harmless.

Only devices that config.toml declares are heard: the broker's ACL lets a device user write
under its own name in every kind's tree (`pos/kiosk-1/events`), so the kind is checked here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.codecs.identity import IDENTIFIER_KEYS, IDENTIFIER_WORDS, TOKEN_PREFIX
from gateway.codecs.payloads import PayloadError, decode
from gateway.codecs.topics import SECTIONS, Topics, undeclared
from gateway.decision.rewards import REWARD_EVENTS, RewardJoiner
from gateway.moments.moment import Publisher
from gateway.runtime.clock import Clock
from gateway.sync.outbox import Outbox

__all__ = ["Commit", "DeviceEvent", "DeviceEvents", "EventHook", "Write"]

# A write the store thread runs inside an event's commit.
Write = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A device's event, validated: what the hooks see."""

    kind: str  # pos, kiosk, tablet, screen
    device: str
    type: str
    id: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Commit:
    """What a hook adds to its event's commit."""

    write: Write | None = None  # run in the event's transaction (a checkout, a receipt's rows)
    uplink: Mapping[str, Any] | None = None  # what goes up instead of the device's data
    # On the loop once the transaction commits, before the fsync that makes the event durable
    # (and before the device's ack): for work whose own durable commit comes before anything
    # is seen (a checkout's coupon, which saves waiting for the total's fsync first).
    committed: Callable[[], object] | None = None


class EventHook(Protocol):
    """What a feature does with the events of its devices (a lane: its totals, redemptions)."""

    def before_commit(self, event: DeviceEvent) -> Commit | None:
        """On the loop, before the commit; raises `PayloadError` to refuse the event."""
        ...

    def after_commit(self, event: DeviceEvent) -> None:
        """On the loop, once the event is committed (and acknowledged)."""
        ...


log = structlog.get_logger("gateway.device_events")
# A device's `ts` may be this far from the gateway's clock (a lane keeps events for days).
_TS_PAST_S = 30 * 86400.0
_TS_FUTURE_S = 86400.0


class DeviceEvents:
    def __init__(
        self,
        topics: Topics,
        outbox: Outbox,
        publisher: Publisher,
        *,
        declared: Mapping[str, Collection[str]],
        clock: Clock,
        rewards: RewardJoiner | None = None,
        hooks: Sequence[EventHook] = (),
    ) -> None:
        """declared: device kind -> the ids config.toml declares for it."""
        self._declared = declared
        self._clock = clock
        self._hooks = tuple(hooks)
        self._topics = topics
        self._outbox = outbox
        self._publisher = publisher
        self._rewards = rewards
        self._acks: dict[tuple[str, str], list[str]] = {}

    def on_event(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Route handler: validate and queue for commit; raises `PayloadError` if refused.

        Returns the commit's future: the link acknowledges the message to the broker once the
        event is committed (or refused), never before.
        """
        device = self._topics.device_of(topic)
        if device is None or device[0] not in SECTIONS:
            raise PayloadError(f"events are accepted from {sorted(SECTIONS)} devices only")
        kind, device_id = device
        if device_id not in self._declared.get(kind, ()):
            raise PayloadError(undeclared(kind, device_id))
        data = decode("device-event", payload)  # the schema also checks data.decision_id
        ts = data.get("ts")
        if ts is not None and not (
            -_TS_PAST_S <= ts - self._clock.now() <= _TS_FUTURE_S
        ):  # a device clock that is far off would mislead every report built on its events
            raise PayloadError(
                f"ts is out of range: more than {_TS_PAST_S / 86400:g} days before or"
                f" {_TS_FUTURE_S / 86400:g} day after the gateway's clock (if the device's"
                " clock is right, check the gateway's)"
            )
        _refuse_identifiers(data["data"])
        event_type, event_id, fields = data["type"], data["id"], data["data"]
        event = DeviceEvent(kind, device_id, event_type, event_id, fields)
        commits = [c for c in (hook.before_commit(event) for hook in self._hooks) if c is not None]
        writes = [c.write for c in commits if c.write is not None]
        uplink = next((c.uplink for c in commits if c.uplink is not None), fields)
        row = self._outbox.row(
            event_type,
            data["priority"],
            {**uplink, "device": f"{kind}/{device_id}"},
            event_id=event_id,
            ts=data.get("ts"),
            also=writes[0] if len(writes) == 1 else _together(writes) if writes else None,
        )
        committed = [c.committed for c in commits if c.committed is not None]
        future = self._outbox.submit(row, committed)
        future.add_done_callback(lambda f: self._committed(f, event))
        return future

    def _committed(self, future: asyncio.Future[None], event: DeviceEvent) -> None:
        """Once the event is committed: the ack, the hooks, the reward it carries."""
        if future.cancelled() or future.exception() is not None:
            return  # not committed: no ack, the device will send it again
        event_type, fields = event.type, event.data
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._flush)
        self._acks.setdefault((event.kind, event.device), []).append(event.id)
        for hook in self._hooks:
            hook.after_commit(event)
        decision_id = fields.get("decision_id")
        # A redemption naming a coupon is rewarded by the coupon's check (once, and only when
        # the coupon was valid), not here.
        by_coupon = event_type == "pos.redemption" and "coupon" in fields
        rewarded = event_type in REWARD_EVENTS and not by_coupon
        if self._rewards is not None and rewarded and isinstance(decision_id, str):
            self._rewards.join_soon(decision_id, event_type)

    def _flush(self) -> None:
        acks, self._acks = self._acks, {}
        for (kind, device_id), ids in acks.items():
            body = json.dumps({"schema": "event-ack/1", "ids": ids}, separators=(",", ":"))
            self._publisher.post(self._topics.device_events_ack(kind, device_id), body.encode())


def _together(writes: Sequence[Write]) -> Write:
    def write(conn: sqlite3.Connection) -> None:
        for each in writes:
            each(conn)

    return write


# Keys shown in a refusal: identifier field names ("email"), never an arbitrary key.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
# Devices send keyed refs or nothing: keys named like identifiers (gateway.identity) refused.
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
# Separated spellings only: twelve bare hex digits also end every UUID (decision ids).
_MAC = re.compile(r"(?i)(?<![0-9a-f:-])(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}(?![0-9a-f:-])")
# Bounded quantifiers: a long value must not cost quadratic time on the event loop.
_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
# International numbers ("+44 7700 900123"); bare digit runs are also product codes (EAN-13).
_PHONE = re.compile(r"\+\d[\d ()./-]{6,20}\d")


@functools.lru_cache(maxsize=4096)  # devices send a few fixed keys: split each once
def _identifier_key(key: str) -> bool:
    lowered = key.lower()
    words = {w.lower() for w in _WORDS.findall(key[:128])}
    return lowered in IDENTIFIER_KEYS or not words.isdisjoint(IDENTIFIER_WORDS)


def _refuse_identifiers(data: Mapping[str, Any] | list[Any], path: str = "data") -> None:
    """Events are stored and uplinked as sent: one carrying a raw identifier is refused."""
    items = data.items() if isinstance(data, Mapping) else enumerate(data)
    for key, value in items:
        identifier = isinstance(key, str) and _identifier_key(key)
        if not isinstance(key, str):
            where = f"{path}[{key}]"
        else:  # a device's own keys are never echoed: only the identifier names we refuse
            named = identifier and _FIELD_NAME.fullmatch(key)
            where = f"{path}.{key}" if named else f"{path}.<key>"
        if identifier:
            raise PayloadError(f"{where}: raw identifiers are not accepted in events")
        if isinstance(value, str) and (
            _MAC.search(value)
            or ("@" in value and _EMAIL.search(value))
            or ("+" in value and _PHONE.search(value))
            or f"{TOKEN_PREFIX}." in value
        ):
            raise PayloadError(
                f"{where}: looks like a device address, an e-mail address, a phone number"
                " or a customer's token"
            )
        if isinstance(value, Mapping | list):
            _refuse_identifiers(value, where)
