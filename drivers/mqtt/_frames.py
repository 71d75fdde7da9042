"""Reading for paho: whole MQTT packets cut from what one recv() brings, PUBLISH handled here.

paho reads a packet's header a byte at a time (a recv() and several Python calls a byte), then
decodes each PUBLISH into an `MQTTMessage` with its MQTT 5 `Properties` object. Under a
hypermarket's scanner nodes (2,500 messages/s) that was the largest share of the event loop's
time (issue 14). `Frames` takes paho's place as its `_packet_read`:

- a PUBLISH of QoS 0 or 1 goes straight to `on_publish`, as a `Publish`. Its properties are
  skipped: the link reads none and allows no topic aliases (one with an empty topic, QoS 2 or
  anything malformed goes to paho, which knows what to do);
- any other packet (CONNACK, SUBACK, PUBACK, PINGRESP, DISCONNECT) goes to paho's own handler,
  whole, as paho would have read it.

A pass over what was read gives the loop a turn once it has run `pass_s`, and reads on soon
after: 64 KiB of reports is ~300 messages, and a pass over all of them held the loop ~90 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

__all__ = ["Frames", "Publish", "decode_publish", "encode_publish"]
_READ_AHEAD = 65536  # bytes asked of the socket at once
_MAX_LENGTH_BYTES = 4  # a remaining length has at most 4 bytes (MQTT 5, 2.1.4)


class Publish(NamedTuple):
    """What the link reads of a PUBLISH packet."""

    topic: str  # "" if it is not UTF-8 (it routes nowhere)
    payload: bytes
    packet_id: int  # 0 at QoS 0
    qos: int
    retain: bool


class _Malformed(Exception):
    pass


def _varint(data: bytes, at: int, end: int) -> tuple[int, int] | None:
    """(value, index after it) of the variable byte integer at `at`; None if it runs past
    `end`; _Malformed past 4 bytes."""
    value = shift = 0
    i = at
    while i < end:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        if i - at >= _MAX_LENGTH_BYTES:
            raise _Malformed
        shift += 7
    return None


def decode_publish(command: int, body: bytes, *, v5: bool) -> Publish | None:
    """A PUBLISH packet of QoS 0 or 1 (`command`, its first byte; `body`, what follows the
    remaining length); None for what paho should decide (QoS 2 or 3, an empty topic, a
    malformed packet)."""
    qos = (command >> 1) & 3
    end = len(body)
    if qos > 1 or end < 2:
        return None
    topic_end = 2 + ((body[0] << 8) | body[1])
    if topic_end == 2 or topic_end > end:
        return None
    at = topic_end
    packet_id = 0
    if qos:
        if at + 2 > end:
            return None
        packet_id = (body[at] << 8) | body[at + 1]
        at += 2
    if v5:
        try:
            found = _varint(body, at, end)
        except _Malformed:
            return None
        if found is None or found[1] + found[0] > end:
            return None
        at = found[1] + found[0]
    try:
        topic = body[2:topic_end].decode()
    except UnicodeDecodeError:
        topic = ""  # routes nothing: acknowledged and dropped, as paho's message would be
    return Publish(topic, body[at:], packet_id, qos, bool(command & 1))


def encode_publish(topic: str, payload: bytes, *, v5: bool) -> bytes:
    """A PUBLISH packet of QoS 0, not retained, without properties: what a device that
    publishes many at once (the scanner-node simulator) writes in one go."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + (b"\0" if v5 else b"") + payload
    length = bytearray()
    n = len(body)
    while True:
        n, byte = n >> 7, n & 0x7F
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes((paho.PUBLISH,)) + length + body


class Frames:
    """Installed on a paho client before it connects; lives as long as the client."""

    def __init__(
        self,
        inner: paho.Client,
        on_publish: Callable[[Publish], None],
        *,
        pass_s: float,
        lost: Callable[[Exception], None],
    ) -> None:
        """lost: told when reading on after a pause fails (the connection is broken)."""
        self._inner = inner
        self._on_publish = on_publish
        self._pass_s = pass_s
        self._lost = lost
        self._v5 = inner._protocol == paho.MQTTv5
        self._data = b""
        self._at = 0
        self._resuming = False
        inner._packet_read = self.read  # type: ignore[method-assign]

    def read(self) -> MQTTErrorCode:
        """paho's `_packet_read`: every whole packet buffered or readable, until the socket is
        dry (MQTT_ERR_AGAIN) or the pass has run its time (a resume is scheduled)."""
        started = time.perf_counter()
        inner = self._inner
        while True:
            try:
                command, body = self._next()
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except _Malformed:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            except OSError:  # ConnectionError too: the broker closed it
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            publish = None
            if command & 0xF0 == paho.PUBLISH:
                publish = decode_publish(command, body, v5=self._v5)
            if publish is not None:
                self._on_publish(publish)
            else:
                rc = self._paho_handles(command, body)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or inner._sock is None:
                    return rc
            if time.perf_counter() - started > self._pass_s:
                self._pause()
                return MQTTErrorCode.MQTT_ERR_AGAIN

    def _next(self) -> tuple[int, bytes]:
        """The next whole packet's first byte and body; BlockingIOError when none is whole
        and the socket has no more now."""
        while True:
            data, at = self._data, self._at
            end = len(data)
            if end - at >= 2:
                found = _varint(data, at + 1, end)
                if found is not None and found[1] + found[0] <= end:
                    length, start = found
                    self._at = start + length
                    return data[at], data[start : start + length]
            chunk = self._inner._sock_recv(_READ_AHEAD)  # BlockingIOError when dry
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self._data, self._at = (data[at:] + chunk if at < end else chunk), 0
            with self._inner._msgtime_mutex:  # paho's keepalive counts bytes received
                self._inner._last_bytes_received = paho.time_func()

    def _paho_handles(self, command: int, body: bytes) -> MQTTErrorCode:
        """The packet, whole, in paho's reading state, as its own reading leaves it."""
        state = self._inner._in_packet
        state["command"] = command
        state["have_remaining"] = 1
        state["remaining_length"] = len(body)
        state["packet"] = bytearray(body)
        state["pos"] = 0
        try:
            return self._inner._packet_handle()
        except MalformedPacket:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:  # a packet not started, as paho resets it after each one
            state = self._inner._in_packet
            state["command"] = state["have_remaining"] = state["remaining_length"] = 0
            state["packet"] = bytearray()
            state["pos"] = 0

    def _pause(self) -> None:
        """Give the loop a turn with packets still buffered: read on soon, since the socket
        may not wake for them. TLS's own buffer is taken first, or aiomqtt's read callback,
        seeing it pending, would call again at once."""
        sock = self._inner._sock
        pending = getattr(sock, "pending", None)
        while sock is not None and pending is not None and (size := pending()) > 0:
            self._data, self._at = self._data[self._at :] + sock.recv(size), 0
        if not self._resuming:
            self._resuming = True
            asyncio.get_running_loop().call_soon(self._read_on)

    def _read_on(self) -> None:
        self._resuming = False
        try:
            self._inner.loop_read()
        except Exception as exc:  # noqa: BLE001 (as aiomqtt's read callback: a broken read ends it)
            self._lost(exc)
