"""A device that floods: publishes as fast as paho can, from its own thread.

A misbehaving kiosk (garbage and valid messages mixed, QoS 0 and 1), or a lane flushing a large
backlog of events at once. It records which messages the broker acknowledged (PUBACK), so a test
can hold the gateway to "nothing the broker acknowledged is dropped", and what arrives on the
topics it subscribes to (the gateway's event acks).

python -m simulators.flood --port 1883 --store demo-store --kiosk kiosk-1 --count 20000
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import encode_kiosk_identify
from gateway.codecs.topics import Topics

__all__ = ["Flood", "event_burst", "kiosk_flood"]

Message = tuple[str, bytes, int]  # topic, payload, QoS


class Flood:
    """One MQTT client on paho's own network thread; `publish_all` queues as fast as it can."""

    def __init__(
        self, host: str, port: int, client_id: str, *, inflight: int = 100, username: str = ""
    ) -> None:
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        if username:
            self._client.username_pw_set(username, username)
        self._client.max_inflight_messages_set(inflight)
        # paho walks its whole list of outgoing messages on every PUBACK: a burst queued inside
        # paho costs the publisher O(n) per message. Publishing stops at `inflight` unacked.
        self._window = threading.Semaphore(inflight)
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._labels: dict[int, str] = {}  # mid -> label of a QoS 1 message in flight
        self._early: set[int] = set()  # mids sent (QoS 0) or acknowledged before labelled
        self.acknowledged: set[str] = set()  # labels the broker acknowledged
        self.received: list[tuple[str, bytes]] = []
        self.published = 0
        self._connected = threading.Event()
        self._client.on_connect = lambda *_: self._connected.set()

    def __enter__(self) -> Self:
        self._client.connect(self._host, self._port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"flood client could not connect to {self._host}:{self._port}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic: str) -> None:
        self._client.subscribe(topic, qos=1)

    def publish_all(self, messages: Iterable[tuple[str, Message]]) -> None:
        """Publish (label, message) pairs back to back; QoS 1 labels are tracked to PUBACK."""
        for label, (topic, payload, qos) in messages:
            if qos:
                self._window.acquire()
            # Not under our lock: paho calls on_publish holding its own (a lock-order deadlock).
            info = self._client.publish(topic, payload, qos=qos)
            with self._lock:
                early = info.mid in self._early
                self._early.discard(info.mid)
                if qos and early:  # the PUBACK came before publish() returned
                    self.acknowledged.add(label)
                    self._window.release()
                elif qos:
                    self._labels[info.mid] = label
            self.published += 1

    def wait_acknowledged(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def _on_publish(self, _c: object, _u: object, mid: int, *_: object) -> None:
        with self._lock:
            label = self._labels.pop(mid, None)
            if label is not None:
                self.acknowledged.add(label)
                self._window.release()
            else:
                self._early.add(mid)

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        self.received.append((message.topic, bytes(message.payload)))


def kiosk_flood(topics: Topics, kiosk_id: str, count: int) -> Iterator[tuple[str, Message]]:
    """A broken kiosk: identifications (valid), garbage and oversized messages, QoS 0 and 1."""
    topic = topics.kiosk_identify(kiosk_id)
    valid = encode_kiosk_identify("loyalty", "4000000000099")
    shapes = (valid, b"{not json", b'{"method": "fax", "value": "1"}', b"x" * 20_000)
    for n in range(count):
        yield f"{kiosk_id}:{n}", (topic, shapes[n % len(shapes)], n % 2)


def event_burst(
    topics: Topics, kind: str, device_id: str, count: int, priority: str = "transaction"
) -> Iterator[tuple[str, Message]]:
    """Device events, QoS 1, each labelled with its own id."""
    topic = topics.device_events(kind, device_id)
    for n in range(count):
        event_id = uuid7()
        body = {"id": event_id, "type": "pos.scan", "priority": priority, "data": {"n": n}}
        yield event_id, (topic, json.dumps(body, separators=(",", ":")).encode(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description="One kiosk flooding the gateway.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--store", default="demo-store")
    parser.add_argument("--kiosk", default="kiosk-1")
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    with Flood(args.host, args.port, f"{args.kiosk}-flood") as flood:
        start = time.monotonic()
        flood.publish_all(kiosk_flood(Topics(args.store), args.kiosk, args.count))
        flood.wait_acknowledged(args.count // 2, timeout=60)
        took = time.monotonic() - start
    print(f"{flood.published} messages in {took:.1f}s, {len(flood.acknowledged)} acknowledged")


if __name__ == "__main__":
    main()
