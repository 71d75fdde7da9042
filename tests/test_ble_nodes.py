"""Scanner nodes (ESPresense convention) through a real Mosquitto into the running gateway:
presence reaches the zone's screen, scanner health is exposed, no address is ever shown."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.ble.eid import eid
from gateway.ble.espresense import decode_device_message, frame_from_id
from gateway.ble.frames import EddystoneEID, EddystoneUID, IBeacon
from gateway.codecs.payloads import PayloadError
from simulators.broker import Mosquitto, free_port
from simulators.flood import Flood, Message
from simulators.population import CUSTOMERS, eid_identity_key
from simulators.store import SimulatedStore
from tests.conftest import GatewayFactory
from tests.test_health import _get

ADA = CUSTOMERS[0]  # coffee-lovers; her app's identity key is in the demo seed
STORE = "demo-store"
ADA_MAC = "f0:ca:fe:00:00:01"
ANON_MAC = "de:ad:be:ef:00:02"
HEALTH = {"health.enabled": "true", "ble.min_dwell_s": "0", "logging.format": "json"}


def _address_forms(mac: str) -> list[str]:
    plain = mac.replace(":", "")
    return [mac, mac.upper(), plain, plain.upper(), mac.replace(":", "-")]


def test_espresense_ids_name_their_frames() -> None:
    ib = frame_from_id("iBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-100-7", -59)
    assert isinstance(ib, IBeacon)
    assert (ib.major, ib.minor, ib.tx_power) == (100, 7, -59)
    uid = frame_from_id("eddy:00112233445566778899-aabbccddeeff", -59)
    assert isinstance(uid, EddystoneUID)
    assert uid.instance == bytes.fromhex("aabbccddeeff")
    assert frame_from_id("eid:0102030405060708", -59) == EddystoneEID(bytes(range(1, 9)), -18)
    assert frame_from_id("iBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-70000-1", -59) is None
    assert frame_from_id("f0cafe000001", -59) is None  # a device without a beacon frame
    assert frame_from_id("apple:1005:9-26", -59) is None


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        ("espresense/devices/x/coffee", b"not json", "not JSON"),
        ("espresense/devices/x/coffee", b"[1]", "expected a JSON object"),
        ("espresense/devices/x/coffee", b'{"rssi": -60}', "id: expected"),
        ("espresense/devices/x/coffee", b'{"id": "x", "rssi": "loud"}', "rssi: expected"),
        ("espresense/devices/x/coffee", b'{"id": "x", "rssi": -60, "rssi@1m": 99}', "rssi@1m"),
        ("espresense/devices/x/coffee", b'{"id": "x", "rssi": -60, "mac": 5}', "mac: expected"),
        ("espresense/devices/x", b'{"id": "x", "rssi": -60}', "expected a topic"),
        ("espresense/devices/x/coffee", b"{" + b" " * 5000 + b"}", "at most"),
    ],
)
def test_malformed_node_messages_say_what_is_wrong_without_echoing(
    topic: str, payload: bytes, error: str
) -> None:
    with pytest.raises(PayloadError, match=error) as caught:
        decode_device_message("espresense", topic, payload)
    assert "loud" not in str(caught.value)


async def _publish_visit(client: aiomqtt.Client, seconds: float) -> None:
    """Ada's phone near the coffee node (heard faintly at the entrance), an anonymous phone
    at the bakery, and one malformed message, about ten times a second."""
    key = eid_identity_key(ADA)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ada_id = f"eid:{eid(key, 10, int(time.time())).hex()}"
        for room, rssi in (("espresense-coffee", -55), ("espresense-entrance", -85)):
            body = {"id": ada_id, "rssi@1m": -59, "rssi": rssi, "distance": 1.2, "mac": ADA_MAC}
            await client.publish(f"espresense/devices/{ada_id}/{room}", json.dumps(body))
        anon = ANON_MAC.replace(":", "")
        body = {"id": anon, "rssi@1m": -59, "rssi": -60, "distance": 2.0, "mac": anon}
        await client.publish(f"espresense/devices/{anon}/espresense-bakery", json.dumps(body))
        await client.publish(f"espresense/devices/{anon}/espresense-bakery", b'{"id": 7}')
        await asyncio.sleep(0.1)


async def test_scanner_nodes_put_a_known_customer_on_the_screen_of_her_zone(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    port = free_port()
    process = gateway(overrides={**HEALTH, "health.port": str(port)})
    process.wait_ready()
    async with (
        SimulatedStore("127.0.0.1", broker.port, STORE) as store,
        aiomqtt.Client("127.0.0.1", broker.port, identifier="espresense-coffee") as node,
    ):
        await node.publish("espresense/rooms/espresense-coffee/status", b"online", retain=True)
        coffee = store.topics.screen_content("coffee-1")
        bakery = store.topics.screen_content("bakery-1")
        async with asyncio.timeout(15):
            publishing = asyncio.create_task(_publish_visit(node, 15))
            await store.wait_for(lambda: coffee in store.seen.content)
            await store.wait_for(lambda: bakery in store.seen.content)
            wanted = b'gateway_ble_zone_occupancy{audience="identified",zone="coffee"} 1.0'
            metrics = b""
            while wanted not in metrics:  # gauges are refreshed once a second
                await asyncio.sleep(0.2)
                _, metrics = await _get(port, "/metrics")
            _, body = await _get(port, "/healthz")
            publishing.cancel()
        errors = [e for e in store.seen.errors if "espresense" in str(e.get("topic"))]
    assert store.seen.content[coffee].content.audience == "personal"
    assert store.seen.content[coffee].content.offer is not None
    assert store.seen.content[coffee].content.offer.id == "OFF-BEANS-MEMBER"  # her segment
    assert store.seen.content[bakery].content.audience == "anonymous"
    report = json.loads(body)
    rooms = {"espresense-coffee", "espresense-entrance", "espresense-bakery"}
    assert set(report["ble"]["scanners"]) >= rooms
    assert report["ble"]["scanners"]["espresense-coffee"]["seconds_since_last_advert"] < 5
    assert report["components"]["presence"]["state"] == "ready"
    assert b'gateway_ble_adverts_per_s{scanner="espresense-coffee"}' in metrics
    # The malformed message was refused on the errors topic, naming the filter, not the topic.
    assert errors
    assert {e["topic"] for e in errors} == {"espresense/devices/+/+"}
    assert process.stop() == 0
    # No address, in any spelling, in the log, the decisions or the events queued for the cloud.
    log = process.log(tail=None)
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        rows = [*db.execute("SELECT * FROM outbox"), *db.execute("SELECT * FROM decisions")]
    stored = "\n".join(str(row) for row in rows)
    assert "presence.zone" in stored
    for mac in (ADA_MAC, ANON_MAC):
        for form in _address_forms(mac):
            assert form not in log, form
            assert form not in stored, form


def test_rooms_that_are_not_configured_are_ignored() -> None:
    from gateway.ble.espresense import NodeSource
    from gateway.ble.keys import DeviceKeys
    from gateway.ble.scanners import ScannerStats
    from gateway.runtime.clock import SystemClock

    stats, seen = ScannerStats(), []
    nodes = NodeSource(
        "espresense", DeviceKeys(b"k" * 32), stats, seen.append, SystemClock(), rooms={"coffee"}
    )
    body = b'{"id": "abc", "rssi": -60}'
    nodes.on_device("espresense/devices/abc/kiosk-1", body)  # a kiosk posing as a room
    nodes.on_status("espresense/rooms/kiosk-1/status", b"online")
    nodes.on_device("espresense/devices/abc/coffee", body)
    assert [s.scanner for s in seen] == ["coffee"]
    assert set(stats.scanners) == {"coffee"}
    assert nodes.ignored == 2
    with pytest.raises(PayloadError, match="nested too deeply"):
        decode_device_message(
            "espresense", "espresense/devices/x/coffee", b"[" * 1020 + b"]" * 1020
        )


@pytest.mark.timeout(120)
async def test_a_crowd_of_scanner_reports_waiting_never_delays_a_kiosk(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """30,000 node reports wait at the broker while the gateway is paused, then a kiosk's
    identification: it is answered before the reports are all taken in, since they come on a
    connection of their own (mqtt.nodes_connection). On one connection it waited behind every
    one of them (issue 14)."""
    port = free_port()
    # Within budget: each report goes all the way to presence, as a crowd's would.
    budget = {"budgets.node_per_s": "1000000", "budgets.node_burst": "1000000"}
    process = gateway(overrides={**HEALTH, **budget, "health.port": str(port)})
    process.wait_ready()
    rooms = ["espresense-entrance", "espresense-produce", "espresense-bakery", "espresense-deli"]
    reports = 30_000

    def crowd() -> Iterator[tuple[str, Message]]:
        for n in range(reports):
            body = json.dumps({"id": f"phone-{n}", "rssi": -60 - n % 30, "mac": f"m{n}"})
            yield str(n), (f"espresense/devices/phone-{n}/{rooms[n % 4]}", body.encode(), 1)

    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        process.signal(signal.SIGSTOP)  # what comes now waits at the broker, in order
        try:
            with Flood("127.0.0.1", broker.port, "espresense-crowd", inflight=1000) as flood:
                await asyncio.to_thread(flood.publish_all, crowd())
                await asyncio.to_thread(flood.wait_acknowledged, reports, 60)
                assert len(flood.acknowledged) == reports  # each queued for the gateway
            rid = await store.kiosk("kiosk-2").identify("loyalty", ADA.loyalty)
        finally:
            process.signal(signal.SIGCONT)
        content = store.topics.kiosk_content("kiosk-2")
        async with asyncio.timeout(30):
            await store.answers(rid, [content])
        _, metrics = await _get(port, "/metrics")
        taken = _sample(metrics, b'gateway_mqtt_received_total{route="ble_nodes"}')
        assert taken < reports  # answered while the crowd was still being taken in
        async with asyncio.timeout(60):
            while taken < reports:  # and every report is taken in the end
                await asyncio.sleep(0.5)
                _, metrics = await _get(port, "/metrics")
                taken = _sample(metrics, b'gateway_mqtt_received_total{route="ble_nodes"}')
    assert process.stop() == 0


def _sample(metrics: bytes, name: bytes) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(name + b" "))
    return float(line.rsplit(b" ", 1)[1])
