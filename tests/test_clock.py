"""A store box's clock, wrong as store boxes have it: the daemon under Debian's libfaketime."""

from __future__ import annotations

import asyncio
import glob
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.runtime.clock import RELEASE_FLOOR
from simulators.broker import Mosquitto, free_port
from simulators.events import EventSource
from simulators.population import CUSTOMERS
from simulators.store import SimulatedStore
from tests.conftest import GatewayFactory
from tests.test_health import _get

pytestmark = pytest.mark.e2e
STORE = "demo-store"


def _faketime(tmp_path: Path, start: str) -> tuple[dict[str, str], Path]:
    """The environment that runs a process on a fake wall clock (the monotonic clock stays real,
    as on a box whose RTC is wrong), and the file that moves it while it runs."""
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        pytest.fail("libfaketime is missing; scripts/test installs it (apt-get install faketime)")
    control = tmp_path / "faketime"
    control.write_text(start)
    env = {
        "LD_PRELOAD": found[0],
        "FAKETIME_TIMESTAMP_FILE": str(control),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    return env, control


async def test_booted_years_behind_the_gateway_serves_no_expired_offer_and_says_so(
    tmp_path: Path, broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """The demo catalog's OFF-EXPIRED (priority 99) ended in September 2020: with the clock in
    June 2020 it was served to every customer, with no warning anywhere."""
    env, _ = _faketime(tmp_path, "@2020-06-01 12:00:00")
    port = free_port()
    process = gateway(overrides={"health.enabled": "true", "health.port": str(port)}, env=env)
    process.wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_content("kiosk-1")
        offers = []
        for customer in CUSTOMERS[:4]:
            rid = await store.kiosk("kiosk-1").identify("loyalty", customer.loyalty)
            async with asyncio.timeout(10):
                content = (await store.answers(rid, [topic]))[topic].content
            offers.append(content.offer.id if content.offer else None)
            assert content.ts >= RELEASE_FLOOR  # stamped on the time the box knows, not 2020
    assert "OFF-EXPIRED" not in offers, offers
    _, body = await _get(port, "/healthz")
    report = json.loads(body)
    clock = report["components"]["clock"]
    assert report["status"] == "degraded", report
    assert clock["state"] == "degraded", clock
    assert "behind this release's date" in clock["detail"], clock
    _, metrics = await _get(port, "/metrics")
    assert b"gateway_clock_trusted 0.0" in metrics
    warnings = [line for line in process.log(tail=None).splitlines() if "clock is wrong" in line]
    assert len(warnings) == 1, process.log()
    assert "check the clock" in warnings[0]


async def test_a_forward_jump_while_running_closes_no_reward_window_early(
    tmp_path: Path, broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """NTP corrects a stale clock by 8 days: a customer's tap on the offer shown a minute
    before is still its reward (it was refused as late, and the window closed with 0)."""
    env, control = _faketime(tmp_path, "+0")
    process = gateway(overrides={"decision.reward_window_s": "3600"}, env=env)
    process.wait_ready()
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_content("kiosk-1")
        rid = await store.kiosk("kiosk-1").identify("loyalty", CUSTOMERS[4].loyalty)
        async with asyncio.timeout(10):
            content = (await store.answers(rid, [topic]))[topic].content
    control.write_text("+8d")
    await asyncio.sleep(1.5)  # the clock watch sees the jump
    async with EventSource(
        "127.0.0.1", broker.port, STORE, kind="kiosk", device_id="kiosk-1"
    ) as tap:
        await tap.send("kiosk.tap", "reward", {"decision_id": content.decision_id})
        async with asyncio.timeout(10):
            await tap.settled()
    db = sqlite3.connect(tmp_path / "state" / "gateway.sqlite3")
    deadline = time.monotonic() + 10
    while True:
        reward, decided = db.execute(
            "SELECT reward, ts FROM decisions WHERE id = ?", (content.decision_id,)
        ).fetchone()
        if reward is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    db.close()
    assert reward == 1.0, f"reward {reward}: the tap after the jump was not joined"
    assert decided < time.time() + 86400  # stamped before the jump
    deadline = time.monotonic() + 10  # the clock watch reports it within its interval
    # A subprocess's log: nothing to await but time.
    while "wall clock jumped" not in process.log(tail=None) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    assert "wall clock jumped" in process.log(tail=None)


async def test_at_night_no_decision_picks_a_daytime_offer_even_when_exploring(
    tmp_path: Path, broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """A morning-only coffee offer was shown and printed at night. With every decision
    exploring (uniformly among the eligible offers), one ranked lower but still eligible would
    come up within a few draws: excluded, it never does."""
    tomorrow_night = time.strftime("@%Y-%m-%d 23:30:00", time.gmtime(time.time() + 86400))
    env, _ = _faketime(tmp_path, tomorrow_night)
    # A start time that never moves: no control file read on every clock call (slow).
    env = {k: v for k, v in env.items() if not k.startswith("FAKETIME_")}
    env |= {"FAKETIME": tomorrow_night, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "TZ": "UTC"}
    process = gateway(
        overrides={"decision.exploration": "1", "decision.holdout_share": "0"}, env=env
    )
    process.wait_ready()
    offers = []
    async with SimulatedStore("127.0.0.1", broker.port, STORE) as store:
        topic = store.topics.kiosk_content("kiosk-1")
        for round_ in range(4):
            for customer in CUSTOMERS:
                rid = await store.kiosk("kiosk-1").identify("loyalty", customer.loyalty)
                async with asyncio.timeout(10):
                    content = (await store.answers(rid, [topic]))[topic].content
                offers.append(content.offer.id if content.offer else None)
            del round_
    assert process.stop() == 0
    assert not {"OFF-COFFEE-AM", "OFF-LUNCH"} & set(offers), offers
    assert "OFF-EVENING" not in offers  # 18:00-22:00: over by 23:30
    assert len({o for o in offers if o}) >= 2, offers  # it did explore among what is left
