"""The experiment readout on a fixed decision log: figures computed by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.decision.log import record_decision
from gateway.decision.report import read, render
from gateway.store import Decision, Store

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
