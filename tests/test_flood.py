"""Floods and abuse: the daemon as a subprocess, a real Mosquitto, devices that misbehave.

A flooding kiosk never silences another; a burst the broker acknowledged is committed and
answered in full; a retained request is ignored and cleared; garbage on the status topic does not
become a storm of births; the last will carries no stale time; a failed login spends no session.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiomqtt
import pytest

from gateway.codecs.payloads import decode_status, encode_kiosk_identify, session_floor
from gateway.codecs.topics import Topics
from simulators.broker import Mosquitto
from simulators.daemon import rss_mib
from simulators.flood import Flood, event_burst, kiosk_flood
from simulators.population import CUSTOMERS
from simulators.slowdisk import slow_fsync_env
from simulators.store import SimulatedStore
from tests.conftest import GatewayFactory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

STORE = "demo-store"
ADA = CUSTOMERS[0]


async def _retained(port: int, topic: str) -> bytes | None:
    """What the broker retains on `topic`, as a new subscriber sees it within a second."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="late") as late:
        await late.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(1.0):
                async for message in late.messages:
                    if isinstance(message.payload, bytes) and message.payload:
                        return message.payload
        except TimeoutError:
            pass
    return None


def _lines(path: Path) -> int:
    return len(path.read_text(errors="replace").splitlines())


async def test_a_flooding_kiosk_never_silences_another(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway()
    await asyncio.to_thread(process.wait_ready)
    topics_seen: list[float] = []
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        kiosk = store.topics.kiosk_content("kiosk-2")
        rid = await store.kiosk("kiosk-2").identify("loyalty", ADA.loyalty)
        async with asyncio.timeout(10):
            await store.answers(rid, [kiosk])
        rss_before = rss_mib(process.pid)
        log_before = _lines(process.output)
        with Flood("127.0.0.1", broker.port, "kiosk-1-flood") as flood:
            burst = asyncio.create_task(
                asyncio.to_thread(flood.publish_all, kiosk_flood(store.topics, "kiosk-1", 40_000))
            )
            # One identification per second from kiosk-2 while kiosk-1 floods: all answered.
            while not burst.done() or len(topics_seen) < 5:
                sent = time.monotonic()
                rid = await store.kiosk("kiosk-2").identify("loyalty", ADA.loyalty)
                async with asyncio.timeout(10):
                    answer = (await store.answers(rid, [kiosk]))[kiosk]
                assert answer.content.audience == "personal"
                topics_seen.append(answer.at - sent)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - sent)))
            await burst
            await asyncio.to_thread(flood.wait_acknowledged, 20_000, 60)
        assert flood.published == 40_000
        assert len(flood.acknowledged) == 20_000  # every QoS 1 message, acknowledged
        # Right after the flood, service is as before.
        rid = await store.kiosk("kiosk-2").identify("loyalty", ADA.loyalty)
        async with asyncio.timeout(5):
            await store.answers(rid, [kiosk])
        # kiosk-1 was told it is over its budget, in a handful of answers, not 40,000.
        busy = [e for e in store.seen.errors if e["error"].startswith("busy: retry after")]
        assert busy
        assert len(store.seen.errors) < 200
    # The flood cost a few dozen log lines, and no lasting memory.
    flood_lines = _lines(process.output) - log_before
    assert flood_lines < 60, process.log()
    assert rss_mib(process.pid) < rss_before + 30
    assert process.stop() == 0
    summaries = [json.loads(line) for line in process.log(None).splitlines() if "count" in line]
    refused = [s for s in summaries if s.get("event") == "messages refused"]
    # Counted, in a few lines. Every QoS 1 message (half the flood: garbage and oversized ones)
    # reaches the gateway and is refused; the broker may drop QoS 0 ones on a busy machine.
    assert sum(s["count"] for s in refused) >= 19_000


async def test_a_burst_the_broker_acknowledged_is_committed_and_answered_in_full(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    """20,000 QoS 1 events from four lanes that never send again (each within its budget's
    burst): none is lost after the broker's PUBACK."""
    lanes = ("pos-1", "pos-2", "pos-3", "pos-4")
    process = gateway(overrides={f"lanes.{lane}.printer": '""' for lane in lanes[2:]})
    await asyncio.to_thread(process.wait_ready)
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topics = store.topics
    floods = [Flood("127.0.0.1", broker.port, f"{lane}-burst") for lane in lanes]
    for lane, flood in zip(lanes, floods, strict=True):
        flood.__enter__()
        flood.subscribe(topics.device_events_ack("pos", lane))
    try:
        await asyncio.sleep(0.3)  # the ack subscriptions are in place
        await asyncio.gather(
            *(
                asyncio.to_thread(f.publish_all, event_burst(topics, "pos", lane, 5_000))
                for lane, f in zip(lanes, floods, strict=True)
            )
        )
        for flood in floods:
            await asyncio.to_thread(flood.wait_acknowledged, 5_000, 60)
        acknowledged = set().union(*(f.acknowledged for f in floods))
        assert len(acknowledged) == 20_000

        def answered() -> set[str]:
            ids: set[str] = set()
            for flood in floods:
                for _, payload in list(flood.received):
                    ids.update(json.loads(payload)["ids"])
            return ids

        deadline = time.monotonic() + 60
        while not acknowledged <= answered() and time.monotonic() < deadline:  # noqa: ASYNC110 - paho's thread fills `received`
            await asyncio.sleep(0.2)
        assert acknowledged <= answered()
    finally:
        for flood in floods:
            flood.__exit__(None, None, None)
    assert process.stop() == 0
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        committed = {i for (i,) in db.execute("SELECT id FROM outbox WHERE type = 'pos.scan'")}
    assert acknowledged <= committed


async def test_a_retained_identify_is_ignored_and_cleared(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway()
    await asyncio.to_thread(process.wait_ready)
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_identify("kiosk-1")
        payload = encode_kiosk_identify("phone", "+44 7700 900123", "retained-req")
        await store.client.publish(topic, payload, qos=1, retain=True)
        await asyncio.sleep(1.5)
        assert "retained-req" not in store.seen.by_request  # never acted on
        # ...and gone from the broker: a new subscriber gets no retained message.
        retained = await _retained(broker.port, topic)
        assert retained is None, "the retained identify is still on the broker"
    assert "+44 7700 900123" not in process.log(None)
    assert process.stop() == 0


async def test_garbage_on_the_status_topic_brings_one_birth_per_second(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway()
    await asyncio.to_thread(process.wait_ready)
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        async with asyncio.timeout(5):
            await store.wait_for(lambda: bool(store.seen.statuses))
        store.seen.statuses.clear()
        start = time.monotonic()
        for n in range(200):
            await store.client.publish(store.topics.gateway_status, f"junk {n}".encode(), qos=1)
        await asyncio.sleep(2.5)
        took = time.monotonic() - start
        births = [s for s in store.seen.statuses if s.state == "online"]
    assert 1 <= len(births) <= took / 1.0 + 2  # not 1:1 with the garbage
    assert process.stop() == 0


async def test_the_last_will_carries_no_stale_time(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway()
    await asyncio.to_thread(process.wait_ready)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="watcher") as watcher:
        await watcher.subscribe(f"store/{STORE}/v1/gateway/status", qos=1)
        process.kill()
        async with asyncio.timeout(60):  # the broker notices within 1.5 keepalives
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                status = decode_status(message.payload)
                if status.state == "offline":
                    break
    assert status.ts is None  # the will does not claim the connection time as its time


async def test_failed_logins_spend_no_session_number(tmp_path: Path) -> None:
    """Against a broker refusing the password, the durable session counter stays put."""
    from simulators.daemon import GatewayProcess, settings
    from tests.conftest import DEMO_CONFIG

    passwd = tmp_path / "passwd"
    passwd.write_text("")
    with Mosquitto(
        tmp_path / "broker", extra_conf=f"allow_anonymous false\npassword_file {passwd}\n"
    ) as locked:
        secret = tmp_path / "password"
        secret.write_text("wrong")
        values = settings(
            store_port=locked.port,
            state_dir=tmp_path / "state",
            mqtt__username="store-gateway",
            mqtt__password_file=str(secret),
            mqtt__reconnect_min_s="0.05",
            mqtt__reconnect_max_s="0.1",
            decision__model_file="",
        )
        process = GatewayProcess(DEMO_CONFIG, tmp_path, overrides=values)
        started = time.time()
        process.start()
        try:
            await asyncio.sleep(4)  # dozens of refused attempts
            assert process.alive
        finally:
            process.stop()
        stopped = time.time()
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        (counter,) = db.execute("SELECT value FROM meta WHERE key = 'mqtt_session'").fetchone()
    # One number, taken from the clock (docs/mqtt.md) at the first attempt: dozens of attempts
    # each spending one would have run it ahead of the clock.
    assert session_floor(started) <= int(counter) <= session_floor(stopped)


def _stored(tmp_path: Path, event_id: str) -> bool:
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        return db.execute("SELECT 1 FROM outbox WHERE id = ?", (event_id,)).fetchone() is not None


async def test_event_times_far_from_the_gateways_clock_are_refused(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    process = gateway()
    await asyncio.to_thread(process.wait_ready)
    now = time.time()
    times = {
        "01a20925-dfc6-757b-9cc2-000000000011": -1e300,
        "01a20925-dfc6-757b-9cc2-000000000012": 1e300,
        "01a20925-dfc6-757b-9cc2-000000000013": now - 40 * 86400,
        "01a20925-dfc6-757b-9cc2-000000000014": now + 2 * 86400,
    }
    good = "01a20925-dfc6-757b-9cc2-000000000015"
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.device_events("pos", "pos-1")
        for event_id, ts in [*times.items(), (good, now - 86400)]:
            event = {"id": event_id, "type": "pos.scan", "priority": "telemetry", "ts": ts}
            body = json.dumps({**event, "data": {}})
            await store.client.publish(topic, body, qos=1)
        async with asyncio.timeout(10):
            await store.wait_for(lambda: {e["request_id"] for e in store.seen.errors} >= set(times))
            # The good one was sent last: committed once the outbox has it (its ack comes then).
            while not _stored(tmp_path, good):  # noqa: ASYNC110 - the daemon's database
                await asyncio.sleep(0.05)
    assert process.stop() == 0
    refused = {e["request_id"]: e["error"] for e in store.seen.errors}
    assert good not in refused
    assert all(refused[i].startswith("ts is out of range") for i in times)
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        stored = {i for (i,) in db.execute("SELECT id FROM outbox WHERE type = 'pos.scan'")}
    assert stored == {good}


async def test_a_retained_request_waiting_at_the_broker_is_cleared_when_the_gateway_connects(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """Retained before the gateway starts: it arrives while the link still restores its state
    (right after a subscription), and is cleared all the same, never answered."""
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_identify("kiosk-1")
        payload = encode_kiosk_identify("phone", "+44 7700 900123", "waiting-req")
        await store.client.publish(topic, payload, qos=1, retain=True)
        process = gateway()
        await asyncio.to_thread(process.wait_ready)
        await asyncio.sleep(1.5)
        assert "waiting-req" not in store.seen.by_request
        retained = await _retained(broker.port, topic)
        assert retained is None, "the retained identify is still on the broker"
    assert process.stop() == 0


async def test_a_burst_survives_kill_9_of_the_gateway_without_a_single_resend(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    """SIGKILL mid-burst: what the gateway took but had not committed was never acknowledged,
    so the broker keeps it in the gateway's session and hands it over after the restart. The
    lanes send nothing twice; every event the broker acknowledged ends up committed."""
    lanes = ("pos-1", "pos-2")
    # A slow disk (300 ms a commit), so that the kill finds thousands taken and not committed.
    process = gateway(env=slow_fsync_env(tmp_path, 300))
    await asyncio.to_thread(process.wait_ready)
    topics = Topics(STORE)
    floods = [Flood("127.0.0.1", broker.port, f"{lane}-burst") for lane in lanes]
    for flood in floods:
        flood.__enter__()
    try:
        bursts = [
            asyncio.to_thread(f.publish_all, event_burst(topics, "pos", lane, 5_000))
            for lane, f in zip(lanes, floods, strict=True)
        ]
        sending = asyncio.gather(*bursts)
        await asyncio.sleep(1.0)  # the burst is under way
        process.kill()
        await sending
        for flood in floods:
            await asyncio.to_thread(flood.wait_acknowledged, 5_000, 60)
        acknowledged = set().union(*(f.acknowledged for f in floods))
    finally:
        for flood in floods:
            flood.__exit__(None, None, None)
    assert len(acknowledged) == 10_000
    restarted = gateway()
    await asyncio.to_thread(restarted.wait_ready)
    database = tmp_path / "state" / "gateway.sqlite3"
    committed: set[str] = set()
    deadline = time.monotonic() + 60
    while not acknowledged <= committed and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        with sqlite3.connect(database) as db:
            committed = {i for (i,) in db.execute("SELECT id FROM outbox")}
    assert restarted.stop() == 0
    assert acknowledged <= committed, f"{len(acknowledged - committed)} lost"
