"""Receipts at the till: an e-receipt for the customer scanned at the lane, a claim code printed
for anyone else, and the app's claim (a signed `claims` bundle) linking that visit to them.

End to end: the daemon, a real Mosquitto for the store and one for the cloud, the lane, and the
printer simulator on a pty; the claim slip's QR is read as a till's scanner reads it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.decision.log import record_decision
from gateway.decision.outcomes import DEFAULT_WINDOWS, ReportedOutcome, join_outcomes
from gateway.decision.rewards import reward_of
from gateway.escpos import CommandParser, QrStore, load_profile
from gateway.flows.printing import ClaimSlip, new_claim_code, render_job
from gateway.pos.receipts import Visit, claim_decisions, drapi, link_claims
from gateway.store import Decision, OutboxRow, Store, transaction
from simulators.broker import Mosquitto
from simulators.cloud import Cloud, CloudReceiver
from simulators.population import CUSTOMERS
from simulators.pos import PosLane
from simulators.printer import PrinterSimulator
from tests.test_cloud_sync import _gateway
from tests.test_printer_simulator import scan_qr

STORE = "demo-store"
ADA, BO = CUSTOMERS[0], CUSTOMERS[1]
LINES = [
    ("4006381333931", "Coffee beans 1kg", "coffee", 1.0, 14.9),
    ("4006381333948", "Croissant", "bakery", 2.0, 1.2),
]


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    async with PrinterSimulator(tmp_path / "usb-Sim_Printer-if00-port0") as sim:
        yield sim


def _start(tmp_path: Path, broker: Mosquitto, cloud: Cloud, printer: PrinterSimulator) -> Any:
    lane = {
        "printers__receipt-1__device": str(printer.link),
        "printers__receipt-1__profile": "generic-80mm",
        "lanes__pos-1__printer": "receipt-1",
        "decision__exploration": "0",
        "decision__holdout_share": "0",
    }
    return _gateway(tmp_path, broker, cloud, **lane)


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / "gateway.sqlite3")


def _events(receiver: CloudReceiver, type: str) -> list[dict[str, Any]]:
    return [e for e in receiver.events.values() if e.get("type") == type]


async def _acked(lane: PosLane, event_id: str) -> None:
    async with asyncio.timeout(10):
        while event_id not in lane.events.acked:  # noqa: ASYNC110 - the lane's own record
            await asyncio.sleep(0.01)


async def _checkout_decision(tmp_path: Path, total: str) -> str:
    """The decision that printed the total's coupon (committed before the coupon prints)."""
    with _db(tmp_path) as db:
        (decision,) = db.execute(
            "SELECT id FROM decisions WHERE request_id = ? AND moment = 'checkout'", (total,)
        ).fetchone()
    return str(decision)


async def test_an_identified_customer_gets_an_e_receipt_and_no_contact_detail_leaves(
    tmp_path: Path, broker: Mosquitto, printer: PrinterSimulator
) -> None:
    async with Cloud(tmp_path / "cloud") as cloud:
        process = _start(tmp_path, broker, cloud, printer)
        async with PosLane("127.0.0.1", broker.port, STORE) as lane:
            await lane.basket(["coffee", "bakery"], 17.3)
            await lane.loyalty(ADA.loyalty)
            total = await lane.total(17.3)
            async with asyncio.timeout(15):
                (coupon,) = await printer.wait_for_receipts(1)
            receipt_id = await lane.receipt(total, LINES, coupons=[])
            await _acked(lane, receipt_id)
            receiver = cloud.receiver
            async with asyncio.timeout(10):
                await receiver.wait_until(lambda: receipt_id in receiver.events)
                await receiver.wait_until(lambda: bool(_events(receiver, "followup.requested")))
        await asyncio.sleep(0.5)  # a claim slip would have printed by now
        decision = await _checkout_decision(tmp_path, total)
        with _db(tmp_path) as db:
            dump = "\n".join(db.iterdump())
        assert process.stop() == 0
    event = receiver.events[receipt_id]
    data = event["data"]
    assert event["type"] == "pos.receipt"
    assert event["priority"] == "transaction"
    assert data["delivery"] == {"Method": "loyalty_account", "CustomerRef": ADA.ref}
    assert data["decision_ids"] == [decision]
    receipt = data["DigitalReceipt"]
    assert receipt["TransactionID"] == total
    assert receipt["Coupon"]["Printed"] == scan_qr(coupon.png)
    assert [line["Sale"]["ItemID"] for line in receipt["LineItem"]] == [line[0] for line in LINES]
    assert {"TotalType": "TransactionGrandAmount", "Amount": 17.3} in receipt["Total"]
    assert len(printer.receipts) == 1  # the coupon only: no claim slip for her
    (followup,) = _events(receiver, "followup.requested")  # for the cloud's e-mail: ids only
    assert followup["data"] == {"decision_ids": [decision], "after": "e-receipt"}
    everything = json.dumps(list(receiver.events.values())) + dump + process.log(tail=None)
    assert ADA.loyalty not in everything


async def test_an_anonymous_customer_claims_the_receipt_in_the_app(
    tmp_path: Path, broker: Mosquitto, printer: PrinterSimulator
) -> None:
    async with Cloud(tmp_path / "cloud") as cloud:
        process = _start(tmp_path, broker, cloud, printer)
        receiver = cloud.receiver
        async with PosLane("127.0.0.1", broker.port, STORE) as lane:
            await lane.basket(["coffee"], 14.9)
            total = await lane.total(14.9)
            async with asyncio.timeout(15):
                await printer.wait_for_receipts(1)
            receipt_id = await lane.receipt(total, LINES[:1])
            await _acked(lane, receipt_id)
            with _db(tmp_path) as db:  # committed before the lane heard the acknowledgement
                (code,) = db.execute(
                    "SELECT claim_code FROM receipts WHERE id = ?", (receipt_id,)
                ).fetchone()
                (queued,) = db.execute(
                    "SELECT count(*) FROM print_journal WHERE coupon_code = ?", (code,)
                ).fetchone()
            assert queued == 1
            async with asyncio.timeout(15):
                _, slip = await printer.wait_for_receipts(2)
        assert scan_qr(slip.png) == code
        assert code in slip.text
        async with asyncio.timeout(10):
            await receiver.wait_until(lambda: receipt_id in receiver.events)
        assert receiver.events[receipt_id]["data"]["delivery"] == {
            "Method": "claim_code",
            "ClaimCode": code,
        }
        decision = await _checkout_decision(tmp_path, total)
        with _db(tmp_path) as db:
            before = db.execute("SELECT customer_ref FROM decisions WHERE id = ?", (decision,))
            assert before.fetchone() == (None,)

        # Bo claims it in the app; then someone else tries the same code.
        claim = {"claims": [{"code": code, "customer_ref": BO.ref}]}
        await cloud.publish_bundle(STORE, "claims", 1, claim)
        await cloud.publish_bundle(
            STORE, "claims", 2, {"claims": [{"code": code, "customer_ref": ADA.ref}]}
        )
        async with asyncio.timeout(10):
            await receiver.wait_until(lambda: len(_events(receiver, "receipt.claimed")) == 2)
        assert process.stop() == 0
    first, second = sorted(_events(receiver, "receipt.claimed"), key=lambda e: e["ts"])
    assert first["data"] == {
        "claim_code": code,
        "status": "claimed",
        "receipt_id": receipt_id,
        "decision_ids": [decision],
        "customer_ref": BO.ref,
    }
    assert second["data"]["status"] == "claimed_by_another"
    assert "customer_ref" not in second["data"]
    with _db(tmp_path) as db:
        linked = db.execute("SELECT customer_ref FROM decisions WHERE id = ?", (decision,))
        assert linked.fetchone() == (BO.ref,)  # the visit is Bo's from then on


def test_claims_that_cannot_link_are_answered_and_change_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    conn = store.conn
    conn.execute(
        "INSERT INTO receipts (id, lane, txn, claim_code, claim_until, decision_ids, coupons,"
        " gross, created_at) VALUES ('r1', 'pos-1', 't1', 'RCP-2222-3333-4444', 100.0,"
        " '[\"d1\"]', '[]', 5.0, 0.0)"
    )
    rows = []

    def uplink(type: str, priority: str, data: Any) -> OutboxRow:
        rows.append((type, dict(data)))
        return OutboxRow(f"e{len(rows)}", 0, type, 0.0, json.dumps(data).encode())

    late = link_claims(store, [("RCP-2222-3333-4444", BO.ref)], 101.0, uplink)
    unknown = link_claims(store, [("RCP-5555-6666-7777", BO.ref)], 50.0, uplink)
    assert [o.status for o in (*late, *unknown)] == ["expired", "unknown"]
    assert conn.execute("SELECT claimed_ref FROM receipts").fetchone() == (None,)
    assert [data["status"] for _, data in rows] == ["expired", "unknown"]
    assert store.conn.execute("SELECT count(*) FROM outbox").fetchone() == (2,)
    store.close()


def test_the_uplinked_receipt_names_the_sale_in_arts_terms() -> None:
    data = {
        "transaction": "01a20925-dfc6-757b-9cc2-000000000001",
        "currency": "EUR",
        "lines": [{"sku": "1", "description": "Tea", "quantity": 2, "unit_price": 1.5,
                   "amount": 3.0}],
        "totals": {"net": 2.5, "tax": 0.5, "gross": 3.0},
        "tenders": [{"method": "cash", "amount": 3.0}],
        "decision_ids": ["01a20925-dfc6-757b-9cc2-0000000000aa"],
    }  # fmt: skip
    visit = Visit(decision_ids=("d0",), coupon="CPN-X")
    anonymous = drapi(
        data, receipt_id="r", store_id=STORE, lane="pos-1", ts=0.0, visit=visit, claim_code=None
    )
    receipt = anonymous["DigitalReceipt"]
    assert receipt["ReceiptDateTime"] == "1970-01-01T00:00:00+00:00"
    assert [t["TotalType"] for t in receipt["Total"]] == [
        "TransactionNetAmount",
        "TransactionTaxAmount",
        "TransactionGrandAmount",
    ]
    assert receipt["Tender"] == [{"TenderType": "cash", "Amount": 3.0}]
    assert receipt["LineItem"][0]["Sale"]["RegularSalesUnitPrice"] == 1.5
    assert anonymous["decision_ids"] == ["01a20925-dfc6-757b-9cc2-0000000000aa", "d0"]
    assert anonymous["delivery"] == {"Method": "none"}  # no printer for a claim slip


def test_an_online_outcome_named_by_a_claim_code_joins_that_visits_decisions(
    tmp_path: Path,
) -> None:
    """The cloud attributes a purchase to a receipt's claim code (the app that claimed it): it
    joins the checkout's decision of that visit, found through the receipt."""
    store = Store(tmp_path / "g.sqlite3")
    checkout = Decision("d-checkout", 10.0, "checkout", "pos-1", None, "OFF-1", "rules", 1.0,
                        request_id="t1")  # fmt: skip
    record_decision(store, checkout)
    store.conn.execute(
        "INSERT INTO receipts (id, lane, txn, claim_code, claim_until, decision_ids, coupons,"
        " gross, created_at) VALUES ('r1', 'pos-1', 't1', 'RCP-2222-3333-4444', 1e12, '[]',"
        " '[]', 5.0, 10.0)"
    )
    assert claim_decisions(store.conn, "RCP-2222-3333-4444") == ["d-checkout"]
    assert claim_decisions(store.conn, "RCP-5555-6666-7777") == []
    outcome = ReportedOutcome("o1", "online", 30.0, 20.0, claim_code="RCP-2222-3333-4444")
    rows: list[OutboxRow] = []

    def event(type: str, priority: str, data: Any, **_: Any) -> OutboxRow:
        rows.append(OutboxRow(f"e{len(rows)}", 0, type, 0.0, json.dumps(data).encode()))
        return rows[-1]

    with transaction(store.conn, durable=False):
        tally = join_outcomes(
            store, [outcome], windows=DEFAULT_WINDOWS, now=30.0, event=event,
            lookup=claim_decisions,
        )  # fmt: skip
    assert (tally.joined, tally.rewards) == (1, 1)
    assert reward_of(store, "d-checkout") == 1.0
    store.close()


@pytest.mark.parametrize("profile", ["generic-80mm", "generic-58mm", "epson-tm-t20iii"])
def test_claim_slips_render_for_every_shipped_profile(profile: str) -> None:
    """A job that cannot print raises at render time: every profile takes the slip, its QR
    holds the code, and a reprint says so."""
    slip = ClaimSlip(new_claim_code(), STORE, 1.79e9, 90)
    for copy in (False, True):
        data = render_job(slip.to_json(), load_profile(profile), copy=copy)
        stored = [c for c in CommandParser().feed(data) if isinstance(c, QrStore)]
        assert [c.data for c in stored] == [slip.code.encode()]
        assert (b"COPY" in data) is copy
