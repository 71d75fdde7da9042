"""The experiment readout on a fixed decision log: figures computed by hand."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

from gateway.decision.log import record_decision
from gateway.decision.readout import DailyReadout
from gateway.decision.report import read
from gateway.decision.report_text import render, summary
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Decision, Store
from gateway.sync.outbox import Outbox

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo.toml"
NOW = 1_800_000_000.0
DAY = 86400.0


def _decision(
    i: int, moment: str, customer: str | None, policy: str, arm: str, *, ts: float = NOW - DAY
) -> Decision:
    context = json.dumps({"arm": arm})
    return Decision(
        f"d{i:04d}", ts, moment, "t-1", customer, "OFF-1", policy, 1.0, None, context=context
    )


def _log(path: Path) -> None:
    """Kiosk, identified: 10 personalised customers with two decisions each, 12 of 20 converted
    (0.6); 10 holdout customers with one each, 3 converted (0.3): lift +100 %. Screens,
    anonymous: model slots 8 of 40 (0.2), rules slots 4 of 40 (0.1): lift +100 %. Plus 5 open
    decisions, and 10 from before the window (ignored)."""
    store = Store(path)
    i = 0
    rows: list[tuple[Decision, float | None]] = []
    for c in range(10):
        for k in range(2):
            rows.append((_decision(i, "kiosk_identify", f"c_p{c}", "nba", "model"),
                         1.0 if c * 2 + k < 12 else 0.0))  # fmt: skip
            i += 1
    for c in range(10):
        rows.append((_decision(i, "kiosk_identify", f"c_h{c}", "holdout", "holdout"),
                     1.0 if c < 3 else 0.0))  # fmt: skip
        i += 1
    for arm, policy, converted in (("model", "nba", 8), ("control", "rules", 4)):
        for k in range(40):
            rows.append((_decision(i, "zone_enter", None, policy, arm),
                         1.0 if k < converted else 0.0))  # fmt: skip
            i += 1
    for _ in range(5):
        rows.append((_decision(i, "kiosk_identify", "c_open", "nba", "model"), None))
        i += 1
    for _ in range(10):
        old = _decision(i, "kiosk_identify", "c_old", "nba", "model", ts=NOW - 30 * DAY)
        rows.append((old, 1.0))
        i += 1
    for decision, _ in rows:
        record_decision(store, decision)
    with store.conn:
        store.conn.executemany(
            "UPDATE decisions SET reward = ? WHERE id = ?",
            [(reward, d.id) for d, reward in rows if reward is not None],
        )
    store.close()


def test_the_readout_gives_the_hand_computed_figures(tmp_path: Path) -> None:
    database = tmp_path / "gateway.sqlite3"
    _log(database)
    readout = read(database, since_days=14, now=NOW)
    parts = {p.touchpoint: p for p in readout.touchpoints}
    kiosk, screen, overall = parts["kiosk"], parts["screen"], parts["overall"]
    assert (kiosk.decisions, kiosk.customers, kiosk.open) == (35, 21, 5)
    personal = kiosk.personalised
    assert personal is not None
    assert personal.units == (10, 10)  # customers, each resampled with all their decisions
    assert personal.decisions == (20, 10)
    assert personal.conversion == (0.6, 0.3)
    assert personal.lift is not None
    assert abs(personal.lift - 1.0) < 1e-9
    assert personal.low is not None
    assert personal.high is not None
    assert personal.low < 1.0 < personal.high
    assert kiosk.switchback is None  # no anonymous kiosk decisions
    sb = screen.switchback
    assert sb is not None
    assert (sb.units, sb.conversion) == ((40, 40), (0.2, 0.1))
    assert sb.lift is not None
    assert abs(sb.lift - 1.0) < 1e-9
    assert overall.decisions == 115
    text = render(readout)
    assert "personalised kiosk offers: +100.0% conversion [" in text
    assert "over 14 days, 20 customers" in text
    assert "model-chosen screen offers: +100.0% conversion" in text


def test_store_gateway_report_prints_json_from_the_configured_state_dir(tmp_path: Path) -> None:
    _log(tmp_path / "gateway.sqlite3")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "report", "--config", str(DEMO), "--json",
         "--set", f"store.state_dir={tmp_path}", "--since", "36500"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    figures = json.loads(out.stdout)
    overall = figures["touchpoints"][-1]
    assert overall["touchpoint"] == "overall"
    assert overall["decisions"] == 125  # the old ones too, with a window of 100 years


def _revenue_log(path: Path) -> None:
    """One day. Personalised customers p0..p3 each pay 20 at the till (the lane's total logged
    with their checkout decision); p0 and p1 also buy online for 10 (an outcome joined to that
    decision) and used a kiosk that day. Holdout customers h0..h3 pay 20 each, nothing online;
    h0 used a kiosk. Screens, anonymous: the model logged 4 greedy decisions (propensity 0.96;
    2 converted) and 2 explored ones (0.01; 1 converted), the rules 10 (3 converted)."""
    store = Store(path)
    rows: list[tuple[Decision, float]] = []
    joins = []
    for c in range(4):
        for who, policy in (("p", "nba"), ("h", "holdout")):
            ctx = json.dumps({"arm": "holdout" if who == "h" else "model", "total": 20.0})
            decision = Decision(f"d-{who}{c}-till", NOW - DAY, "checkout", "pos-1",
                                f"c_{who}{c}", "OFF-1", policy, 1.0, None, context=ctx)  # fmt: skip
            rows.append((decision, 0.0))
            if who == "p" and c < 2:
                joins.append((f"o-{c}", decision.id, "online", 10.0, 3 * DAY))
            if (who, c) in (("p", 0), ("p", 1), ("h", 0)):
                kiosk = _decision(len(rows), "kiosk_identify", f"c_{who}{c}", policy,
                                  "holdout" if who == "h" else "model")  # fmt: skip
                rows.append((kiosk, 0.0))
    screen = [(0.96, 1.0), (0.96, 1.0), (0.96, 0.0), (0.96, 0.0), (0.01, 1.0), (0.01, 0.0)]
    for k, (propensity, reward) in enumerate(screen):
        ctx = json.dumps({"arm": "model"})
        rows.append((Decision(f"d-s{k}", NOW - DAY, "zone_enter", "screen-1", None, "OFF-1",
                              "nba", propensity, None, context=ctx), reward))  # fmt: skip
    for k in range(10):
        rows.append((_decision(100 + k, "zone_enter", None, "rules", "control"),
                     1.0 if k < 3 else 0.0))  # fmt: skip
    for decision, _ in rows:
        record_decision(store, decision)
    with store.conn:
        store.conn.executemany(
            "UPDATE decisions SET reward = ? WHERE id = ?", [(r, d.id) for d, r in rows]
        )
        store.conn.executemany(
            "INSERT INTO outcome_joins (outcome_id, decision_id, channel, share, delay_s)"
            " VALUES (?, ?, ?, ?, ?)",
            joins,
        )
    store.close()


def test_revenue_per_visit_and_off_policy_estimates_give_the_hand_computed_figures(
    tmp_path: Path,
) -> None:
    database = tmp_path / "gateway.sqlite3"
    _revenue_log(database)
    readout = read(database, since_days=14, now=NOW)
    parts = {p.touchpoint: p for p in readout.touchpoints}
    overall = parts["overall"].revenue
    assert overall is not None
    assert (overall.visits, overall.customers) == ((4, 4), (4, 4))
    assert overall.in_store == (20.0, 20.0)
    assert overall.online == (5.0, 0.0)  # 2 x 10 online over 4 visits
    assert overall.together == (25.0, 20.0)
    assert overall.lift is not None
    assert abs(overall.lift - 0.25) < 1e-9
    assert overall.in_store_lift == 0.0
    assert overall.online_lift is None  # the holdout bought nothing online
    # The delta method by hand: personalised customers' revenues 30, 30, 20, 20 (mean 25), one
    # visit each: variance of the mean 100 / 4**2 * 4/3; the holdout's is 0.
    se = math.sqrt(100 / 16 * 4 / 3) / 25
    assert overall.low is not None
    assert overall.high is not None
    assert abs(overall.low - (1.25 * math.exp(-1.959964 * se) - 1)) < 1e-6
    assert abs(overall.high - (1.25 * math.exp(1.959964 * se) - 1)) < 1e-6
    kiosk = parts["kiosk"].revenue  # the visits a kiosk took part in: p0, p1 (30 each), h0 (20)
    assert kiosk is not None
    assert (kiosk.visits, kiosk.together) == ((2, 1), (30.0, 20.0))
    ope = parts["screen"].off_policy
    assert ope is not None
    assert ope.ips is not None
    assert ope.snips is not None
    assert abs(ope.ips[0] - (2 / 0.96) / 6) < 1e-9  # the explored ones weigh 0: not greedy
    assert abs(ope.snips[0] - 0.5) < 1e-9
    assert abs(ope.effective_sample_size - 4.0) < 1e-9
    assert ope.rules_conversion == 0.3
    assert ope.rules_decisions == 10
    text = render(readout)
    assert "personalised overall: +25.0% revenue per visit [" in text
    assert "over 14 days, 8 visits (in store +0.0%)" in text
    assert "rules 30.0% (10 decisions)" in text
    figures = summary(readout)["touchpoints"]["overall"]["revenue_per_visit"]
    assert figures["together"] == [25.0, 20.0]


class _FixedClock:
    def now(self) -> float:
        return NOW

    def monotonic(self) -> float:
        return NOW

    def stamped_ago(self, seconds: float) -> float:
        return NOW - seconds

    def trusted(self) -> bool:
        return True


def test_decisions_at_a_moment_of_no_touchpoint_are_left_out(tmp_path: Path) -> None:
    """An identified decision whose moment names no touchpoint counts nowhere: not as a
    decision, a customer, a visit or its revenue (its lane's total included)."""
    database = tmp_path / "gateway.sqlite3"
    _revenue_log(database)
    before = read(database, since_days=14, now=NOW)
    store = Store(database)
    ctx = json.dumps({"arm": "model", "total": 500.0})
    for i, customer in enumerate(("c_p0", "c_h1", "c_new")):
        for policy in ("nba", "holdout"):
            decision = Decision(f"d-other-{i}-{policy}", NOW - DAY, "shelf_scan", "t-1",
                                customer, "OFF-1", policy, 0.96, None, context=ctx)  # fmt: skip
            record_decision(store, decision)
    with store.conn:
        store.conn.execute("UPDATE decisions SET reward = 1.0 WHERE moment = 'shelf_scan'")
    store.close()
    assert read(database, since_days=14, now=NOW) == before


async def test_the_daily_summary_goes_up_once_a_day_and_sets_the_gauges(tmp_path: Path) -> None:
    database = tmp_path / "gateway.sqlite3"
    _revenue_log(database)
    db = AsyncStore(database)
    await db.open()
    metrics = Metrics()
    outbox = Outbox(db, "s1", _FixedClock(), metrics)
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    try:
        daily = DailyReadout(database, outbox, _FixedClock(), metrics)
        await daily.once()
        await daily.once()  # a restart the same day: the same event id, kept once
        rows = await db.call(Store.outbox_batch, {0: -1, 1: -1, 2: -1}, 100, 10**9)
    finally:
        writer.cancel()
        await db.close()
    events = [json.loads(body) for _, _, body in rows]
    assert [e["type"] for e in events] == ["experiment.summary"]
    figures = events[0]["data"]["touchpoints"]
    assert figures["overall"]["revenue_per_visit"]["together"] == [25.0, 20.0]
    assert figures["screen"]["off_policy"]["snips"][0] == 0.5
    assert "customer" not in json.dumps(events[0]).replace('"customers"', "")
    scraped = metrics.render().decode()
    assert (
        'gateway_experiment_revenue_per_visit{arm="treatment",channel="together",'
        'touchpoint="overall"} 25.0' in scraped
    )
    assert 'gateway_experiment_off_policy{estimator="snips",touchpoint="screen"} 0.5' in scraped
