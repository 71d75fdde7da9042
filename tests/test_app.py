"""The customer's app in the store: a resolved rotating BLE identifier -> an in-app message at the
cloud, capped per visit, never pushed after its time-to-live, silent in quiet hours."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiomqtt
import pytest

from simulators.broker import Mosquitto
from simulators.cloud import Cloud
from simulators.daemon import GatewayProcess
from simulators.population import CUSTOMERS
from tests.test_ble_nodes import _publish_visit
from tests.test_cloud_sync import _gateway

pytestmark = pytest.mark.e2e
ADA = CUSTOMERS[0]  # consented, coffee-lovers; her app's identity key is in the demo seed
FAST = {"ble__min_dwell_s": "0"}


def _app_decisions(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        query = "SELECT count(*) FROM decisions WHERE moment = 'app_message'"
        (count,) = db.execute(query).fetchone()
    return int(count)


async def _visit(broker: Mosquitto, seconds: float) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="espresense-coffee") as node:
        await _publish_visit(node, seconds)


async def test_an_opted_in_app_seen_in_the_store_gets_one_message_per_visit(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with Cloud(tmp_path / "cloud") as cloud:
        process = _gateway(tmp_path, broker, cloud, **FAST)
        receiver = cloud.receiver
        started = time.monotonic()
        await _visit(broker, 4.0)  # she enters the coffee zone (and the entrance): one visit
        async with asyncio.timeout(10):
            await receiver.wait_until(lambda: receiver.inbox(ADA.ref))
        arrived = time.monotonic() - started
        await _visit(broker, 2.0)  # heard again in the same visit: no second message
        await asyncio.sleep(1.0)
        assert process.stop() == 0
    (message,) = receiver.inbox(ADA.ref)
    data = message["data"]
    assert data["kind"] == "welcome"
    assert data["offer"]["id"] == "OFF-BEANS-MEMBER"  # for her segment
    assert data["expires_at"] > message["ts"]
    assert message["priority"] == "transaction"
    assert data["decision_id"] in receiver.events  # the decision behind it went up too
    assert _app_decisions(tmp_path) == 1
    assert arrived < 10


async def test_a_message_that_could_not_leave_in_time_is_dropped_and_counted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with Cloud(tmp_path / "cloud") as cloud:
        await cloud.down()
        process = _gateway(tmp_path, broker, cloud, app__ttl_s="5", **FAST)
        await _visit(broker, 3.0)
        async with asyncio.timeout(10):
            while _app_decisions(tmp_path) == 0:  # noqa: ASYNC110 - the daemon's database
                await asyncio.sleep(0.2)
        await asyncio.sleep(6.0)  # the cloud stays away past the message's time-to-live
        await cloud.up()
        receiver = cloud.receiver
        async with asyncio.timeout(15):  # the rest of the backlog drains
            await receiver.wait_until(
                lambda: any(e["type"] == "presence.zone" for e in receiver.events.values())
            )
        await asyncio.sleep(1.0)
        assert process.stop() == 0
    assert receiver.inbox(ADA.ref) == []
    assert any(e["type"] == "decision" for e in receiver.events.values())  # it was decided
    assert '"type": "app.message"' in process.log(tail=None)  # ... and expired, counted
    assert "events expired before they could leave" in process.log(tail=None)


async def test_quiet_hours_hold_every_message(tmp_path: Path, broker: Mosquitto) -> None:
    now = time.localtime()
    start = f"{now.tm_hour:02d}:00"
    end = f"{(now.tm_hour + 2) % 24:02d}:00"
    async with Cloud(tmp_path / "cloud") as cloud:
        process: GatewayProcess = _gateway(
            tmp_path, broker, cloud, app__quiet_hours=f'"{start}-{end}"', **FAST
        )
        await _visit(broker, 4.0)
        await asyncio.sleep(1.0)
        assert process.stop() == 0
    assert _app_decisions(tmp_path) == 0
    assert cloud.receiver.inbox(ADA.ref) == []
