"""Marketing tests: a signed `experiments` bundle, stable arms, the arm logged, the readout per arm.

Real parts: the bundles are signed by the cloud simulator's signer and applied to SQLite files;
a restart is a fresh interpreter reading the store; decisions go through the journey as app.py
wires it (the shipped model, a fixed clock).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gateway.codecs.payloads import encode_kiosk_identify
from gateway.decision.experiments import ExperimentTest, assign, parse_tests
from gateway.decision.log import record_decision
from gateway.decision.report import read
from gateway.decision.report_text import render
from gateway.runtime.clock import SystemClock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Decision, Store
from gateway.sync.bundles import BundleApplier, applied_body
from gateway.sync.outbox import Outbox
from simulators.cloud import BundleSigner
from tests.test_journey import LOYALTY, REF, T0, TOPICS, Rig, rig  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent
START, END = T0 - 3600, T0 + 7 * 86400
TESTS = {
    "tests": [
        {
            "id": "kiosk-offer-1",
            "touchpoints": ["kiosk", "screen"],
            "arms": [
                {"name": "coffee", "share": 0.5, "offers": ["OFF-1"]},
                {"name": "bread", "share": 0.5, "offers": ["OFF-2"]},
            ],
            "start": START,
            "end": END,
            "metric": "conversion",
        }
    ]
}
CUSTOMERS = [f"c_{i:032x}" for i in range(2000)]


async def _apply(database: Path, store_id: str, signer: BundleSigner, body: object) -> str:
    db = AsyncStore(database)
    await db.open()
    outbox = Outbox(db, store_id, SystemClock(), Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    applier = BundleApplier(
        db=db, store_id=store_id, public_key=signer.public_key, models_dir=database.parent,
        fetch=_no_fetch, outbox=outbox, clock=SystemClock(), metrics=Metrics(), reactions={},
    )  # fmt: skip
    try:
        return await applier.handle("experiments", signer.make("experiments", 1, body))  # type: ignore[arg-type]
    finally:
        writer.cancel()
        await db.close()


async def _no_fetch(url: str, limit: int) -> bytes:
    raise OSError("no artifacts")


def _tests(database: Path) -> tuple[ExperimentTest, ...]:
    store = Store(database)
    try:
        return parse_tests(json.loads(applied_body(store, "experiments") or "{}"))
    finally:
        store.close()


def _arms(tests: tuple[ExperimentTest, ...], now: float) -> list[str | None]:
    out = []
    for ref in CUSTOMERS:
        a = assign(tests, channel="kiosk", touchpoint_id="kiosk-1", customer_ref=ref, now=now)
        out.append(None if a is None else a.arm.name)
    return out


_RESTARTED = """
import json, sys
from pathlib import Path
from tests.test_experiments import CUSTOMERS, _arms, _tests
print(json.dumps(_arms(_tests(Path(sys.argv[1])), float(sys.argv[2]))))
"""


async def test_arms_are_stable_across_restarts_and_stores_and_the_test_ends_on_time(
    tmp_path: Path,
) -> None:
    signer = BundleSigner()
    one, two = tmp_path / "s1" / "g.sqlite3", tmp_path / "s2" / "g.sqlite3"
    assert await _apply(one, "s1", signer, TESTS) == "applied"  # a chain-wide bundle ("*")
    assert await _apply(two, "s2", signer, TESTS) == "applied"
    arms = _arms(_tests(one), T0)
    assert arms == _arms(_tests(two), T0)  # another store: the same arms
    restarted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _RESTARTED, str(one), str(T0)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    assert json.loads(restarted.stdout) == arms  # another process: the same arms
    counts = {name: arms.count(name) for name in ("coffee", "bread")}
    assert abs(counts["coffee"] - 1000) < 4 * 22.4, counts  # 50/50 within four sigma
    assert _arms(_tests(one), T0 + 86400) == arms  # a customer keeps the arm all along
    assert set(_arms(_tests(one), END - 1)) == {"coffee", "bread"}
    assert set(_arms(_tests(one), END)) == {None}  # ends on time
    assert set(_arms(_tests(one), START - 1)) == {None}


async def test_bad_experiments_bundles_are_refused(tmp_path: Path) -> None:
    signer = BundleSigner()
    test = TESTS["tests"][0]
    bad = {
        "shares": {**test, "arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]},
        "ends first": {**test, "end": START - 1},
        "one arm": {**test, "arms": [{"name": "a", "share": 1.0}]},
        "unknown touchpoint": {**test, "touchpoints": ["fax"]},
    }
    for name, body in bad.items():
        outcome = await _apply(tmp_path / f"{len(name)}.sqlite3", "s1", signer, {"tests": [body]})
        assert outcome.startswith("rejected:"), name


async def test_a_decision_logs_its_arm_and_shows_only_the_arms_offers(rig: Rig) -> None:  # noqa: F811
    signer = BundleSigner()
    applier = BundleApplier(
        db=rig.db, store_id="test-store", public_key=signer.public_key,
        models_dir=Path("/nonexistent"), fetch=_no_fetch, outbox=rig.outbox, clock=rig.clock,
        metrics=Metrics(), reactions={"experiments": lambda _b: rig.journey.reload_experiments()},
    )  # fmt: skip
    assert await applier.handle("experiments", signer.make("experiments", 1, TESTS)) == "applied"
    expected = assign(parse_tests(TESTS), channel="kiosk", touchpoint_id="kiosk-1",
                      customer_ref=REF, now=T0)  # fmt: skip
    assert expected is not None
    topic = TOPICS.kiosk_identify("kiosk-1")
    rig.kiosks.on_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-1"))
    await _decided(rig, 1)
    rig.wall[0] = END + 60  # the test is over
    rig.kiosks.on_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-2"))
    await _decided(rig, 2)
    rows = await rig.db.call(
        lambda s: s.conn.execute(
            "SELECT offer_id, json_extract(context, '$.experiment') FROM decisions"
            " WHERE moment = 'kiosk_identify' ORDER BY ts"
        ).fetchall()
    )
    (offer, logged), (_, after) = rows
    assert json.loads(logged) == {"id": "kiosk-offer-1", "arm": expected.arm.name, "unit": REF}
    assert offer in expected.arm.offers  # the arm's offer, whatever the model prefers
    assert after is None


async def _decided(pipeline: Rig, n: int) -> None:
    async with asyncio.timeout(10):
        while True:
            count = await pipeline.db.call(
                lambda s: s.conn.execute(
                    "SELECT count(*) FROM decisions WHERE moment = 'kiosk_identify'"
                ).fetchone()[0]
            )
            if count >= n:
                return
            await asyncio.sleep(0.02)


def test_the_readout_reports_each_arm_with_its_interval_and_whether_there_is_enough_data(
    tmp_path: Path,
) -> None:
    """kiosk-offer-1: 150 customers a side, one decision each; coffee (the control) 45 of 150
    converted (0.30), bread 68 (0.4533): lift +51.1 %. small-1: 20 a side, not enough."""
    database = tmp_path / "gateway.sqlite3"
    store = Store(database)
    rows = []
    for test_id, arms in (("kiosk-offer-1", (("coffee", 150, 45), ("bread", 150, 68))),
                          ("small-1", (("a", 20, 5), ("b", 20, 9)))):  # fmt: skip
        for arm, units, converted in arms:
            for k in range(units):
                logged = {"id": test_id, "arm": arm, "unit": f"c_{arm}{k}"}
                ctx = json.dumps({"arm": "model", "experiment": logged})
                decision = Decision(f"d-{test_id}-{arm}-{k}", T0 - 86400, "kiosk_identify",
                                    "kiosk-1", f"c_{arm}{k}", "OFF-1", "nba", 0.95, None,
                                    context=ctx)  # fmt: skip
                rows.append((decision, 1.0 if k < converted else 0.0))
    for decision, _ in rows:
        record_decision(store, decision)
    with store.conn:
        store.conn.executemany(
            "UPDATE decisions SET reward = ? WHERE id = ?", [(r, d.id) for d, r in rows]
        )
    store.close()
    declared = {
        "kiosk-offer-1": TESTS["tests"][0],
        "small-1": {"arms": [{"name": "a"}, {"name": "b"}], "metric": "conversion"},
    }
    readout = read(database, since_days=14, now=T0, experiments=declared)
    big, small = readout.experiments
    assert [(a.arm, a.units, round(a.value, 4)) for a in big.arms] == [
        ("coffee", 150, 0.3),
        ("bread", 150, 0.4533),
    ]
    bread = big.arms[1]
    assert bread.lift is not None
    assert abs(bread.lift - (68 / 45 - 1)) < 1e-9
    assert bread.low is not None
    assert bread.high is not None
    assert 0 < bread.low < bread.lift < bread.high
    assert big.enough_data
    assert big.verdict == "bread beat coffee"
    assert not small.enough_data
    assert small.verdict.startswith("not enough data yet (20 units in the smallest arm")
    text = render(readout)
    assert "test kiosk-offer-1 (conversion): bread beat coffee" in text
