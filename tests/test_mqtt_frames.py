"""The link reads MQTT packets itself (drivers/mqtt/_frames.py, issue 14): what it hands the link
is what paho's own decoder reads from the same bytes, however the stream is cut on its way; every
other packet still reaches paho, and a broken stream ends the connection as paho would."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packets
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt._frames import Frames, Publish, encode_publish


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(
    topic: bytes, payload: bytes, *, qos: int, retain: bool, packet_id: int, expiry: int | None
) -> bytes:
    """A PUBLISH as a broker sends it; its MQTT 5 properties packed by paho's own encoder."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
        properties.UserProperty = ("shelf", "7")
    packed: bytes = properties.pack()  # type: ignore[no-untyped-call]
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += packed + payload
    return bytes([0x30 | qos << 1 | int(retain)]) + _length(len(body)) + body


_PACKETS = st.builds(
    lambda topic, payload, qos, retain, packet_id, expiry: _publish(
        topic, payload, qos=qos, retain=retain, packet_id=packet_id, expiry=expiry
    ),
    st.one_of(
        st.text(min_size=1, max_size=40).map(str.encode),
        st.just(b"espresense/devices/\xff\xfe/room"),  # not UTF-8
    ),
    st.one_of(st.binary(max_size=300), st.just(bytes(70_000))),  # 3 length bytes, past a read
    st.sampled_from([0, 1]),
    st.booleans(),
    st.integers(1, 65535),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)


def _paho_decodes(packet: bytes, version: int = paho.MQTTv5) -> paho_packets.PublishPacket:
    """paho's own decoder on a whole PUBLISH packet (its body: what follows the length)."""
    length_bytes = 1
    while packet[length_bytes] & 0x80:
        length_bytes += 1
    return paho_packets.decode_publish(packet[0], packet[1 + length_bytes :], version)


def _as_paho_reads(packet: bytes) -> Publish:
    """The oracle: paho's decoder on the same bytes, as its reading would deliver them."""
    got = _paho_decodes(packet)
    try:
        topic = got.topic.decode()
    except UnicodeDecodeError:
        topic = ""
    return Publish(topic, bytes(got.payload), got.mid, got.qos, got.retain)


@contextmanager
def _reading() -> Iterator[tuple[paho.Client, socket.socket, list[Publish], list[Exception]]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    inner = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    inner._sock = ours
    delivered: list[Publish] = []
    lost: list[Exception] = []
    Frames(inner, delivered.append, pass_s=60.0, lost=lost.append)
    try:
        yield inner, theirs, delivered, lost
    finally:
        theirs.close()
        inner._sock = None
        ours.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(_PACKETS, min_size=1, max_size=6), st.data())
def test_what_the_link_reads_is_what_paho_decodes_however_the_stream_is_cut(
    packets: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(packets)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=12)))
    with _reading() as (inner, theirs, delivered, _lost):
        start = 0
        for end in [*cuts, len(stream)]:
            while start < end:  # pieces the socket's buffer holds: it is read after each
                piece = stream[start : min(end, start + 32_768)]
                theirs.sendall(piece)
                start += len(piece)
                assert inner.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert delivered == [_as_paho_reads(packet) for packet in packets]


def test_other_packets_reach_paho_and_a_qos_2_publish_is_left_to_it() -> None:
    with _reading() as (inner, theirs, delivered, _lost):
        inner._ping_t = 1.0  # a PINGREQ went out
        qos2 = _publish(b"store/a", b"x", qos=2, retain=False, packet_id=9, expiry=None)
        pingresp = bytes([0xD0, 0])
        theirs.sendall(pingresp[:1])  # cut inside the fixed header
        assert inner.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        theirs.sendall(pingresp[1:] + qos2)
        assert inner.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert inner._ping_t == 0  # paho handled the PINGRESP
        assert delivered == []
        assert 9 in inner._in_messages  # paho holds it for the PUBREL, as QoS 2 wants


def test_a_remaining_length_past_four_bytes_is_a_protocol_error() -> None:
    with _reading() as (inner, theirs, delivered, _lost):
        theirs.sendall(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
        assert inner._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
        assert delivered == []


def test_the_broker_closing_the_connection_is_a_lost_connection() -> None:
    with _reading() as (inner, theirs, delivered, _lost):
        whole = _publish(b"store/a", b"1", qos=1, retain=False, packet_id=1, expiry=None)
        theirs.sendall(whole + whole[:3])  # one whole, then a cut one, then the end
        theirs.shutdown(socket.SHUT_WR)
        assert inner._packet_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
        assert [p.payload for p in delivered] == [b"1"]


@given(st.text(min_size=1, max_size=60), st.one_of(st.binary(max_size=300), st.just(bytes(20_000))))
def test_what_a_simulated_node_writes_is_what_paho_decodes(topic: str, payload: bytes) -> None:
    for version, v5 in ((paho.MQTTv311, False), (paho.MQTTv5, True)):
        packet = encode_publish(topic, payload, v5=v5)
        got = _paho_decodes(packet, version)
        assert (got.topic.decode(), got.payload, got.qos, got.retain) == (topic, payload, 0, False)
