"""POS lanes end to end: the daemon, a real Mosquitto, a lane, and the printer simulator on a pty.

A total prints a coupon whose QR decodes to its code; a redemption is accepted once and refused
after; a fault mid-job prints a marked copy with the same code; queued jobs survive a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.broker import Mosquitto
from simulators.population import CUSTOMERS
from simulators.pos import PosLane
from simulators.printer import PrinterSimulator, RenderedReceipt
from tests.conftest import GatewayFactory
from tests.test_printer_simulator import scan_qr

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

STORE = "demo-store"
ADA = CUSTOMERS[0]
TOTAL_ID, REDEEM_ID = "01a20925-dfc6-757b-9cc2-000000000001", "01a20925-dfc6-757b-9cc2-000000000002"


def _lane_settings(link: Path) -> dict[str, str]:
    return {
        "printers.receipt-1.device": str(link),
        "printers.receipt-1.profile": "generic-80mm",
        "lanes.pos-1.printer": "receipt-1",
        "decision.exploration": "0",
        "decision.holdout_share": "0",
    }


def _qr(receipt: RenderedReceipt) -> str:
    return scan_qr(receipt.png)


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    async with PrinterSimulator(tmp_path / "usb-Sim_Printer-if00-port0") as sim:
        yield sim


def _journal(tmp_path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        return list(db.execute("SELECT state, copy, attempts FROM print_journal"))


async def test_a_total_prints_a_coupon_that_redeems_once(
    broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator, tmp_path: Path
) -> None:
    process = gateway(overrides=_lane_settings(printer.link))
    await asyncio.to_thread(process.wait_ready)
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        await lane.basket(["coffee", "bakery"], 12.5)
        await lane.loyalty(ADA.loyalty)
        await lane.total(12.5)
        async with asyncio.timeout(15):
            (receipt,) = await printer.wait_for_receipts(1)
        code = _qr(receipt)
        assert code.startswith("CPN-")
        assert code in receipt.text
        assert "COPY" not in receipt.text
        async with asyncio.timeout(10):
            first = await lane.redeem(code)
            again = await lane.redeem(code.lower())  # the till may send it in any case
            unknown = await lane.redeem("CPN-2222-3333-4444")
        async with asyncio.timeout(10):  # the reward joins the decision that printed it
            while True:
                with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
                    rewarded = db.execute(
                        "SELECT d.reward FROM decisions d JOIN coupons c ON c.decision_id = d.id"
                        " WHERE c.code = ?",
                        (code,),
                    ).fetchone()
                if rewarded and rewarded[0] == 1.0:
                    break
                await asyncio.sleep(0.1)
    assert process.stop() == 0
    assert (first["status"], again["status"], unknown["status"]) == (
        "redeemed",
        "already_redeemed",
        "unknown",
    )
    assert _journal(tmp_path) == [("printed", 0, 1)]
    assert ADA.loyalty not in process.log(tail=None)
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        (total,) = db.execute(
            "SELECT json_extract(context, '$.total') FROM decisions WHERE moment = 'checkout'"
        ).fetchone()
    assert total == 12.5  # the lane's total, logged for the revenue readout


async def test_paper_out_mid_job_prints_a_marked_copy_with_the_same_code(
    broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator, tmp_path: Path
) -> None:
    printer.set_baud(9600)  # slow enough to run out of paper halfway through the coupon
    process = gateway(overrides=_lane_settings(printer.link))
    await asyncio.to_thread(process.wait_ready)
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        await lane.basket(["pasta"], 3.2)
        await lane.total(3.2)
        async with asyncio.timeout(10):
            while printer.bytes_received < 100:  # noqa: ASYNC110 - the simulator's counter
                await asyncio.sleep(0.01)
        printer.paper_out()
        await asyncio.sleep(1.0)
        printer.set_baud(None)
        printer.paper_in()
        async with asyncio.timeout(15):
            (receipt,) = await printer.wait_for_receipts(1)
    assert process.stop() == 0
    assert "COPY" in receipt.text
    assert _qr(receipt).startswith("CPN-")
    assert _journal(tmp_path) == [("printed", 1, 2)]


async def test_queued_jobs_survive_a_restart_and_print_once_the_printer_is_back(
    broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator, tmp_path: Path
) -> None:
    printer.unplug()
    settings = _lane_settings(printer.link)
    process = gateway(overrides=settings)
    await asyncio.to_thread(process.wait_ready)
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        for _ in range(3):
            await lane.basket(["dairy"], 1.5)
            await lane.total(1.5)
        async with asyncio.timeout(10):
            await lane.events.settled()  # the totals are committed
            while len(_journal(tmp_path)) < 3:  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.05)
    assert process.stop() == 0
    assert {state for state, _, _ in _journal(tmp_path)} == {"queued"}
    restarted = gateway(overrides=settings)
    await asyncio.to_thread(restarted.wait_ready)
    printer.plug()
    async with asyncio.timeout(20):
        receipts = await printer.wait_for_receipts(3)
        # printed = the status poll after the last byte confirmed it, a moment after the cut
        while {state for state, _, _ in _journal(tmp_path)} != {"printed"}:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert restarted.stop() == 0
    codes = [_qr(r) for r in receipts]
    assert len(set(codes)) == 3
    assert sorted(_journal(tmp_path)) == [("printed", 0, 1)] * 3


async def test_a_total_acknowledged_just_before_a_crash_still_gets_its_coupon(
    broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator, tmp_path: Path
) -> None:
    """The lane never re-sends an acknowledged total: its checkout is committed with it."""
    settings = _lane_settings(printer.link)
    totals = []
    for _ in range(5):  # the kill lands before the decision in about half the rounds
        process = gateway(overrides=settings)
        await asyncio.to_thread(process.wait_ready)
        async with PosLane("127.0.0.1", broker.port, STORE) as lane:
            await lane.basket(["pasta"], 3.2)
            total = await lane.total(3.2)
            async with asyncio.timeout(10):
                while total not in lane.events.acked:  # noqa: ASYNC110 - the lane's own record
                    await asyncio.sleep(0.001)
            process.kill()  # right after the ack, before or while the coupon is decided
        totals.append(total)
    restarted = gateway(overrides=settings)
    await asyncio.to_thread(restarted.wait_ready)
    async with asyncio.timeout(20):
        while True:
            with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
                decided = {
                    row[0]
                    for row in db.execute(
                        "SELECT request_id FROM decisions WHERE moment = 'checkout'"
                    )
                }
                codes = {row[0] for row in db.execute("SELECT code FROM coupons")}
                left = db.execute("SELECT count(*) FROM pending_checkouts").fetchone()[0]
            if decided >= set(totals) and left == 0 and {_qr(r) for r in printer.receipts} >= codes:
                break
            await asyncio.sleep(0.1)
    assert restarted.stop() == 0
    assert len(codes) == 5  # one coupon per total, each printed (a copy if cut off mid-job)


@pytest.mark.parametrize("profile", ["generic-80mm", "generic-58mm", "epson-tm-t20iii"])
def test_coupons_render_for_every_shipped_profile(profile: str) -> None:
    from gateway.escpos import CommandParser, QrStore, load_profile
    from gateway.flows.printing import Coupon, new_coupon_code, render_coupon

    coupon = Coupon(new_coupon_code(), "OFF-1", "Flat white", "20% off", 20, STORE, 1.79e9)
    for copy in (False, True):
        data = render_coupon(coupon, load_profile(profile), copy=copy)
        commands = CommandParser().feed(data)
        stored = [c for c in commands if isinstance(c, QrStore)]
        assert len(stored) == 1
        assert coupon.code.encode() in data
        assert (b"COPY" in data) is copy


async def test_re_sent_events_are_harmless(
    broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator, tmp_path: Path
) -> None:
    """A lane re-sends what it did not see acknowledged, with the same id: the total prints
    one coupon, and the redemption gets the same answer twice, not a refusal."""
    import json

    process = gateway(overrides=_lane_settings(printer.link))
    await asyncio.to_thread(process.wait_ready)
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        total = json.dumps(
            {
                "id": TOTAL_ID,
                "type": "pos.transaction",
                "priority": "transaction",
                "data": {},
            }
        )
        for _ in range(2):
            await lane.client.publish(f"{lane.root}/events", total, qos=1)
        async with asyncio.timeout(15):
            (receipt,) = await printer.wait_for_receipts(1)
        code = _qr(receipt)
        spaced = code.replace("-", " ").lower()  # keyed in by hand, the hyphens forgotten
        redeem = json.dumps(
            {
                "id": REDEEM_ID,
                "type": "pos.redemption",
                "priority": "reward",
                "data": {"coupon": spaced},
            }
        )
        async with asyncio.timeout(10):
            for _ in range(2):
                await lane.client.publish(f"{lane.root}/events", redeem, qos=1)
            while len([r for r in lane.replies if r["request_id"] == REDEEM_ID]) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a second coupon, if any, would have printed by now
    assert process.stop() == 0
    assert [r["status"] for r in lane.replies if r["request_id"] == REDEEM_ID] == ["redeemed"] * 2
    assert len(printer.receipts) == 1
    assert _journal(tmp_path) == [("printed", 0, 1)]


async def test_a_re_sent_total_leaves_the_next_customers_scan_alone(
    broker: Mosquitto, gateway: GatewayFactory, printer: PrinterSimulator, tmp_path: Path
) -> None:
    """The lane missed the ack of a total and sends it again after the next customer's loyalty
    scan: that scan still makes the next coupon personal."""
    import json

    process = gateway(overrides=_lane_settings(printer.link))
    await asyncio.to_thread(process.wait_ready)
    total = {"id": TOTAL_ID, "type": "pos.transaction", "priority": "transaction", "data": {}}
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        await lane.client.publish(f"{lane.root}/events", json.dumps(total), qos=1)
        async with asyncio.timeout(15):
            await printer.wait_for_receipts(1)
        await lane.basket(["coffee"], 4.2)
        await lane.loyalty(ADA.loyalty)  # the next customer
        await lane.client.publish(f"{lane.root}/events", json.dumps(total), qos=1)  # re-sent
        second = await lane.total(4.2)
        async with asyncio.timeout(15):
            await printer.wait_for_receipts(2)
    assert process.stop() == 0
    with sqlite3.connect(tmp_path / "state" / "gateway.sqlite3") as db:
        refs = dict(
            db.execute(
                "SELECT request_id, customer_ref FROM decisions WHERE moment = 'checkout'"
            ).fetchall()
        )
    assert refs[TOTAL_ID] is None
    assert refs[second] is not None  # Ada's: the re-sent total did not end her session


async def test_a_redemption_without_a_coupon_code_is_refused_with_an_answer(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """The till waits for an answer: a redemption naming no coupon (nor a decision) gets one."""
    import json

    process = gateway()
    await asyncio.to_thread(process.wait_ready)
    async with PosLane("127.0.0.1", broker.port, STORE) as lane:
        await lane.client.subscribe(lane.topics.gateway_errors, qos=1)
        bad = {
            REDEEM_ID: {"coupon": 12345678},  # scanned as a number
            TOTAL_ID: {},
        }
        for event_id, data in bad.items():
            event = {"id": event_id, "type": "pos.redemption", "priority": "reward", "data": data}
            await lane.client.publish(f"{lane.root}/events", json.dumps(event), qos=1)
        async with asyncio.timeout(10):
            while {r.get("request_id") for r in lane.replies} < set(bad):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    assert process.stop() == 0
    errors = [r for r in lane.replies if r.get("schema") == "gateway-error/1"]
    assert {e["request_id"] for e in errors} == set(bad)
    assert all("device-event schema" in e["error"] for e in errors)
