"""The associate's tablet end to end: Mosquitto, the daemon, a tablet, a lane and its printer."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.codecs.ids import uuid7
from gateway.codecs.topics import Topics
from simulators.broker import Mosquitto
from simulators.events import EventSource
from simulators.population import CUSTOMERS
from simulators.pos import PosLane
from simulators.printer import PrinterSimulator
from simulators.tablet import Tablet
from tests.conftest import GatewayFactory
from tests.test_pos import _lane_settings

pytestmark = pytest.mark.e2e
STORE = "demo-store"
ADA = CUSTOMERS[0]
STAFF_ID = "A-1042"


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    async with PrinterSimulator(tmp_path / "usb-Sim_Printer-if00-port0") as sim:
        yield sim


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / "gateway.sqlite3")


async def _rewards(tmp_path: Path, ids: list[str]) -> list[float | None]:
    """The rewards of `ids`, once every one is set (bounded by the caller's timeout)."""
    while True:
        with _db(tmp_path) as db:
            found = dict(
                db.execute(
                    "SELECT id, reward FROM decisions WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(ids),),
                ).fetchall()
            )
        if all(found.get(i) is not None for i in ids):
            return [found[i] for i in ids]
        await asyncio.sleep(0.1)


async def _followup(tmp_path: Path) -> dict[str, object]:
    """The first `followup.requested` event in the daemon's outbox (no cloud here: it stays)."""
    while True:
        with _db(tmp_path) as db:
            row = db.execute("SELECT body FROM outbox WHERE type = 'followup.requested'").fetchone()
        if row is not None:
            return dict(json.loads(row[0]))
        await asyncio.sleep(0.1)


async def test_serve_accept_decline_and_the_sale_it_assisted(
    tmp_path: Path, broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator
) -> None:
    process = gateway(overrides=_lane_settings(printer.link))
    await asyncio.to_thread(process.wait_ready)
    session = uuid7()
    async with Tablet("127.0.0.1", broker.port, STORE) as tablet, asyncio.timeout(10):
        card = await tablet.serve(
            session, STAFF_ID, method="loyalty", value=ADA.loyalty, asks=["produce"]
        )
        later = await tablet.serve(session, STAFF_ID, basket=["coffee"])  # the session's customer
        anonymous = await tablet.serve(uuid7(), STAFF_ID)
        await tablet.close(session)
    # A consenting customer: as much profile as the consent allows, three suggestions at most,
    # each a logged decision with its propensity; what she asked about comes first.
    assert card.audience == "personal"
    assert card.segment == ADA.segment
    assert card.categories is not None
    assert 1 <= len(card.suggestions) <= 3
    assert [s.rank for s in card.suggestions] == list(range(1, len(card.suggestions) + 1))
    assert len({s.offer.id for s in card.suggestions}) == len(card.suggestions)
    assert all(0 < s.propensity <= 1 for s in card.suggestions)
    assert card.suggestions[0].offer.category == "produce"  # OFF-FRUIT, eligible at any hour
    assert later.audience == "personal"
    assert (anonymous.audience, anonymous.categories, anonymous.segment) == (
        "anonymous",
        None,
        None,
    )
    assert anonymous.suggestions  # context-based suggestions for everyone
    assert tablet.retained == 0

    # The session closed: a follow-up request for the cloud's e-mail, with the session's
    # decisions and nothing that identifies anyone (the cloud knows whose decisions they are).
    async with asyncio.timeout(10):
        followup = await _followup(tmp_path)
    served = [s.decision_id for c in (card, later) for s in c.suggestions]
    assert followup["data"] == {"decision_ids": served, "after": "associate"}
    body = json.dumps(followup)
    for identifier in (ADA.loyalty, ADA.ref, ADA.name, STAFF_ID, "c_", "a_", session):
        assert identifier not in body, identifier

    first, second = card.suggestions[0], card.suggestions[1]
    async with EventSource(
        "127.0.0.1", broker.port, STORE, kind="tablet", device_id="tablet-1"
    ) as answers:
        await answers.send("tablet.accepted", "reward", {"decision_id": first.decision_id})
        await answers.send("tablet.declined", "reward", {"decision_id": second.decision_id})
        async with asyncio.timeout(10):
            await answers.settled()
            rewards = await _rewards(tmp_path, [first.decision_id, second.decision_id])
    assert rewards == [1.0, 0.0]

    # The customer pays at the till within the reward window: an associate-assisted sale.
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        await lane.basket(["bakery"], 4.5)
        await lane.loyalty(ADA.loyalty)
        await lane.total(4.5)
        async with asyncio.timeout(15):
            await printer.wait_for_receipts(1)
    with _db(tmp_path) as db:
        (checkout,) = db.execute("SELECT context FROM decisions WHERE moment = 'checkout'")
        (associate,) = db.execute(
            "SELECT DISTINCT json_extract(context, '$.associate') FROM decisions"
            " WHERE moment = 'tablet_serve' AND customer_ref IS NOT NULL"
        )
    assert json.loads(checkout[0])["assisted_by"] == associate[0]
    assert associate[0].startswith("a_")

    # Never retained: a tablet that connects now sees no card.
    topics = Topics(STORE)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="tablet-1-reboot") as fresh:
        await fresh.subscribe(topics.tablet_card("tablet-1"), qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(aiter(fresh.messages))
    assert process.stop() == 0
    log = process.log(tail=None)
    stored = (tmp_path / "state" / "gateway.sqlite3").read_bytes()
    for secret in (ADA.loyalty, STAFF_ID):
        assert secret not in log
        assert secret.encode() not in stored


async def test_a_refused_identifier_is_answered_and_an_undeclared_tablet_refused(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    gateway().wait_ready()
    async with (
        Tablet("127.0.0.1", broker.port, STORE) as tablet,
        Tablet("127.0.0.1", broker.port, STORE, tablet_id="tablet-9") as stranger,
        aiomqtt.Client("127.0.0.1", broker.port, identifier="errors-watch") as watch,
    ):
        await watch.subscribe(Topics(STORE).gateway_errors, qos=1)
        await tablet.ask(uuid7(), STAFF_ID, method="qr_token", value="SGW1.bad.token")
        await stranger.ask(uuid7(), STAFF_ID)
        errors: list[str] = []
        async with asyncio.timeout(10):
            async for message in watch.messages:
                errors.append(json.loads(message.payload)["error"])  # type: ignore[arg-type]
                if len(errors) == 2:
                    break
    assert any("QR token refused" in e for e in errors), errors
    assert any("declare it under [tablets.tablet-9]" in e for e in errors), errors
    assert "SGW1.bad.token" not in json.dumps(errors)
