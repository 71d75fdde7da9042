"""End to end: the daemon as a subprocess, a real Mosquitto, the kiosk and signage simulators."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from simulators.broker import Mosquitto
from simulators.events import EventSource
from simulators.population import CUSTOMERS, demo_token
from simulators.store import SimulatedStore
from tests.conftest import REPO, GatewayFactory

pytestmark = pytest.mark.e2e

ADA, BO, CY, DI, ED = CUSTOMERS  # segments: coffee-lovers, bakery-fans, none; Di: no consent
STORE = "demo-store"


async def _identify(store: SimulatedStore, kiosk: str, method: str, value: str) -> str:
    return await store.kiosk(kiosk).identify(method, value)  # type: ignore[arg-type]


def _mapped_libraries(pid: int) -> str:
    """The shared objects a live process has loaded (numpy's and onnxruntime's among them)."""
    return Path(f"/proc/{pid}/maps").read_text()


async def test_kiosk_identification_shows_offer_on_kiosk_and_nearby_screens(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway()
    process.wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        t = store.topics
        rid = await _identify(store, "kiosk-2", "loyalty", ADA.loyalty)
        wanted = [
            t.kiosk_content("kiosk-2"),
            t.screen_content("coffee-1"),
            t.screen_content("bakery-1"),
        ]
        async with asyncio.timeout(5):
            answers = await store.answers(rid, wanted)
    contents = [a.content for a in answers.values()]
    assert {c.audience for c in contents} == {"personal"}
    assert {c.offer.id for c in contents if c.offer} == {"OFF-BEANS-MEMBER"}
    assert len({c.decision_id for c in contents}) == 1
    # The entrance screen is not near kiosk-2 and got nothing.
    assert t.screen_content("entrance-1") not in store.seen.content
    # Deciding by the rules (no model file) never loads numpy or onnxruntime: ~45 MiB saved.
    maps = _mapped_libraries(process.pid)
    assert "_multiarray_umath" not in maps
    assert "onnxruntime" not in maps


async def test_qr_token_identifies_and_bad_tokens_get_anonymous_content_and_an_error(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    gateway().wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        kiosk = store.topics.kiosk_content("kiosk-1")
        rid = await _identify(store, "kiosk-1", "qr_token", demo_token(BO, time.time()))
        async with asyncio.timeout(5):
            good = (await store.answers(rid, [kiosk]))[kiosk].content
        expired = demo_token(BO, time.time() - 3600, ttl_s=60)
        rid_bad = await _identify(store, "kiosk-1", "qr_token", expired)
        async with asyncio.timeout(5):
            bad = (await store.answers(rid_bad, [kiosk]))[kiosk].content
            await store.wait_for(lambda: any(e["request_id"] == rid_bad for e in store.seen.errors))
    assert good.audience == "personal"
    assert good.offer is not None
    assert good.offer.id == "OFF-CROISSANT-MEMBER"
    assert bad.audience == "anonymous"
    error = next(e for e in store.seen.errors if e["request_id"] == rid_bad)
    assert error["error"] == "QR token refused: token expired"
    assert expired not in json.dumps(store.seen.errors)  # the token is never echoed


async def test_unknown_and_non_consenting_customers_get_anonymous_content(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    gateway().wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_content("kiosk-1")
        answers = []
        for customer in (DI, ED):
            rid = await _identify(store, "kiosk-1", "loyalty", customer.loyalty)
            async with asyncio.timeout(5):
                answers.append((await store.answers(rid, [topic]))[topic].content)
    assert [a.audience for a in answers] == ["anonymous", "anonymous"]
    for content in answers:
        assert content.offer is not None
        assert "MEMBER" not in content.offer.id  # targeted offers need consent and a segment


async def test_malformed_payloads_are_answered_on_the_error_topic_and_service_goes_on(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway()
    process.wait_ready()
    garbage = [
        b"\xff\xfe not utf-8",
        b"{not json",
        b'{"method": "loyalty"}',
        b'{"method": "fax", "value": "1", "id": "req-7"}',
        b'{"method": "loyalty", "value": "' + b"9" * 20_000 + b'"}',
        b"[" * 5000,
        b"",
    ]
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        kiosk = store.kiosk("kiosk-1")
        for payload in garbage:
            await kiosk.send_raw(payload)
        async with asyncio.timeout(5):
            await store.wait_for(lambda: len(store.seen.errors) >= len(garbage))
        rid = await _identify(store, "kiosk-1", "loyalty", CY.loyalty)
        topic = store.topics.kiosk_content("kiosk-1")
        async with asyncio.timeout(5):
            served = (await store.answers(rid, [topic]))[topic].content
    errors = store.seen.errors
    assert all(e["topic"] == "store/demo-store/v1/kiosk/kiosk-1/identify" for e in errors)
    messages = [e["error"] for e in errors]
    assert any("not UTF-8" in m for m in messages)
    assert any("not JSON" in m for m in messages)
    assert any("data must contain ['value'] properties" in m for m in messages)
    assert any("exceeds" in m for m in messages)
    assert next(e for e in errors if "must be one of" in e["error"])["request_id"] == "req-7"
    assert served.audience == "personal"
    assert process.alive


async def test_an_undeclared_kiosk_is_refused_with_the_fix(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    gateway().wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        rid = await _identify(store, "screen-1", "loyalty", ADA.loyalty)
        async with asyncio.timeout(5):
            await store.wait_for(lambda: any(e["request_id"] == rid for e in store.seen.errors))
    error = next(e for e in store.seen.errors if e["request_id"] == rid)
    assert error["error"] == "unknown kiosk 'screen-1': declare it under [kiosks.screen-1]"
    assert store.topics.kiosk_content("screen-1") not in store.seen.content


async def test_events_from_undeclared_devices_are_refused_with_the_fix(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    """The broker's ACL lets user kiosk-1 write pos/kiosk-1/events: the gateway hears only the
    devices config.toml declares (demo.toml: lanes pos-1 and pos-2, kiosks, screens, tablet-1)."""
    gateway().wait_ready()
    async with (
        SimulatedStore("127.0.0.1", broker.port, STORE) as store,
        EventSource("127.0.0.1", broker.port, STORE, device_id="kiosk-1") as posing,
        EventSource("127.0.0.1", broker.port, STORE, device_id="pos-9") as stranger,
        EventSource("127.0.0.1", broker.port, STORE, kind="tablet", device_id="tablet-1") as tab,
    ):
        refused = [
            await posing.send("pos.transaction", "transaction", {"total": 1.0}),
            await stranger.send("pos.transaction", "transaction", {"total": 2.0}),
        ]
        accepted = await tab.send("tablet.accepted", "reward", {"note": "coffee"})
        async with asyncio.timeout(5):
            await tab.settled()
            await store.wait_for(lambda: len(store.seen.errors) >= 2)
    errors = {e["topic"]: e["error"] for e in store.seen.errors}
    topics = store.topics
    assert errors == {
        topics.device_events("pos", "kiosk-1"): (
            "unknown pos 'kiosk-1': declare it under [lanes.kiosk-1]"
        ),
        topics.device_events("pos", "pos-9"): "unknown pos 'pos-9': declare it under [lanes.pos-9]",
    }
    assert not (posing.acked | stranger.acked)
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        stored = {row[0] for row in db.execute("SELECT id FROM outbox")}
    assert accepted in stored
    assert not stored & set(refused)


async def test_broker_restart_reconnects_and_restores_retained_state(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    gateway().wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        rid = await _identify(store, "kiosk-1", "loyalty", ADA.loyalty)
        topic = store.topics.screen_content("entrance-1")
        async with asyncio.timeout(5):
            before = (await store.answers(rid, [topic]))[topic].content
    broker.stop()  # persistence is off: the broker forgets every retained message
    await asyncio.sleep(1.0)
    broker.start()
    async with SimulatedStore("127.0.0.1", broker.port, STORE, client_id="watcher") as watcher:
        async with asyncio.timeout(15):  # the gateway reconnects by itself: a new birth
            await watcher.wait_for(
                lambda: any(s.state == "online" and s.session >= 2 for s in watcher.seen.statuses)
            )
    async with SimulatedStore("127.0.0.1", broker.port, STORE, client_id="late-screen") as fresh:
        # A screen that connects now gets the gateway's state from the broker, retained.
        async with asyncio.timeout(5):
            await fresh.wait_for(lambda: topic in fresh.seen.content)
        restored = fresh.seen.content[topic]
        assert restored.retained
        assert restored.content.decision_id == before.decision_id
        # And it serves new moments again.
        rid = await _identify(fresh, "kiosk-1", "loyalty", BO.loyalty)
        async with asyncio.timeout(5):
            after = (await fresh.answers(rid, [topic]))[topic].content
    assert after.offer is not None
    assert after.offer.id == "OFF-CROISSANT-MEMBER"
    online = [s for s in fresh.seen.statuses if s.state == "online"]
    assert online[-1].session >= 2  # a new connection, a new session number


async def test_stale_will_never_marks_a_live_gateway_offline(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    gateway().wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        async with asyncio.timeout(5):
            await store.wait_for(lambda: any(s.state == "online" for s in store.seen.statuses))
        live = store.seen.statuses[-1].session
        # What a broker does when it finally notices an old, dead connection: its will.
        stale = {
            "schema": "gateway-status/1",
            "state": "offline",
            "session": max(1, live - 1),
            "ts": time.time(),
            "version": "0.1.0",
        }
        await store.client.publish(
            store.topics.gateway_status, json.dumps(stale), qos=1, retain=True
        )
        async with asyncio.timeout(5):
            await store.wait_for(lambda: store.seen.statuses[-1].state == "online")
    async with SimulatedStore("127.0.0.1", broker.port, STORE, client_id="late") as late:
        async with asyncio.timeout(5):
            await late.wait_for(lambda: bool(late.seen.statuses))
        assert late.seen.statuses[-1].state == "online"  # the retained truth
        assert late.seen.statuses[-1].session == live


async def test_sigterm_drains_and_exits_zero_within_the_bound(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway(overrides={"supervisor.shutdown_timeout_s": "3"})
    process.wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 5)
        elapsed = time.monotonic() - started
        async with asyncio.timeout(5):
            await store.wait_for(lambda: store.seen.statuses[-1].state == "offline")
    assert code == 0
    assert elapsed < 3
    assert '"stopped"' in process.log()


def test_sd_notify_sequence_on_a_real_datagram_socket(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway(watchdog_usec=400_000)  # WATCHDOG=1 every 0.2 s
    process.wait_ready()
    time.sleep(1.0)
    assert process.stop() == 0
    messages = process.messages()
    lines = [line for m in messages for line in m.split("\n")]
    ready = lines.index("READY=1")
    stopping = lines.index("STOPPING=1")
    assert ready < stopping
    assert any(line.startswith("STATUS=") for line in lines[:ready])  # progress while starting
    assert lines.count("WATCHDOG=1") >= 3
    assert lines.index("WATCHDOG=1") < stopping
    log = process.log()
    # READY=1 only after the store opened and the broker connected.
    assert log.index('"connected"') < log.index('"gateway ready"')


def test_sigint_also_drains_and_exits_zero(broker: Mosquitto, gateway: GatewayFactory) -> None:
    process = gateway()
    process.wait_ready()
    process.signal(signal.SIGINT)
    assert process.wait(10) == 0


async def test_no_raw_identifier_reaches_the_log(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    process = gateway(overrides={"logging.level": "debug"})
    process.wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        token = demo_token(CY, time.time())
        sent = [
            ("loyalty", ADA.loyalty),
            ("loyalty", DI.loyalty),
            ("qr_token", token),
            ("phone", "+33612345678"),
            ("email", "ada@example.com"),
        ]
        rids = [await _identify(store, "kiosk-1", m, v) for m, v in sent]
        topic = store.topics.kiosk_content("kiosk-1")
        async with asyncio.timeout(5):
            await store.wait_for(lambda: all(r in store.seen.by_request for r in rids))
    assert process.stop() == 0
    log = process.log(tail=None)
    assert ADA.ref in log  # the keyed ref is what identifies a customer in the log
    for _, value in sent:
        assert value not in log
    assert topic


async def test_the_shipped_model_decides_the_demo_stores_moments(
    broker: Mosquitto, gateway: GatewayFactory, tmp_path: Path
) -> None:
    shipped = REPO / "models" / "nba.onnx"
    process = gateway(
        overrides={
            "decision.model_file": str(shipped),
            "decision.exploration": "0",
            "decision.holdout_share": "0",
            "health.enabled": "false",
        }
    )
    process.wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_content("kiosk-1")
        async with asyncio.timeout(10):
            # Until the model has loaded (just after READY) the rules serve; then the model.
            while True:
                rid = await _identify(store, "kiosk-1", "loyalty", ADA.loyalty)
                content = (await store.answers(rid, [topic]))[topic].content
                with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
                    row = db.execute(
                        "SELECT policy, model_version, propensity FROM decisions WHERE id = ?",
                        (content.decision_id,),
                    ).fetchone()
                if row is not None and row[0] == "nba":
                    break
                await asyncio.sleep(0.2)
    maps = _mapped_libraries(process.pid)
    assert "_multiarray_umath" in maps
    assert "onnxruntime" in maps
    assert process.stop() == 0
    assert content.offer is not None
    assert row[1].startswith("nba-")  # the shipped model's version, from its ONNX metadata
    assert row[2] == 1.0  # no exploration: the greedy pick, propensity one
