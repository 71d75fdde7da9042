"""The store's own experiment readout, from its decision log: `store-gateway report`.

Per touchpoint (kiosk, screen, tablet, receipt, app) and overall: decisions, customers, and two
comparisons where the log has them:

- identified customers, personalised vs the standing holdout (the hashed holdout group gets the
  rules' non-personalised choice): conversion, and the lift of the first over the second with a
  95 % interval from a bootstrap over customers (customers are resampled, each with all their
  decisions, so repeat visitors are not counted as independent);
- anonymous audiences, the model's switchback slots vs the rules' (per screen and slot): the
  same, the unit being the decision.

Conversion is the share of decisions whose reward is 1 (a redemption, a tap, an accepted
suggestion) among those whose window has closed; decisions still open are counted apart.
Revenue is not on the box (totals go to the cloud), so the readout is in conversion.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Comparison", "Readout", "TouchpointReadout", "read", "render"]

TOUCHPOINT_OF = {
    "kiosk_identify": "kiosk",
    "zone_enter": "screen",
    "zone_dwell": "screen",
    "checkout": "receipt",
    "tablet_serve": "tablet",
    "app_message": "app",
}
_RESAMPLES = 1000


@dataclass(frozen=True, slots=True)
class _Row:
    touchpoint: str
    customer: str | None
    arm: str  # model, control, holdout
    reward: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    treatment: str
    control: str
    decisions: tuple[int, int]  # with an outcome, per arm
    units: tuple[int, int]  # customers (identified) or decisions (anonymous), per arm
    conversion: tuple[float, float]
    lift: float | None  # conversion ratio - 1; None when the control converted nothing
    low: float | None  # 95 % interval of the lift (bootstrap)
    high: float | None


@dataclass(frozen=True, slots=True)
class TouchpointReadout:
    touchpoint: str
    decisions: int
    customers: int
    open: int  # decisions whose reward window has not closed
    personalised: Comparison | None
    switchback: Comparison | None


@dataclass(frozen=True, slots=True)
class Readout:
    days: float
    touchpoints: tuple[TouchpointReadout, ...]  # overall last

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read(database: Path, *, since_days: float, now: float, seed: int = 0) -> Readout:
    """The readout of the decisions logged in the last `since_days` (read-only)."""
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = list(_rows(conn, now - since_days * 86400))
    finally:
        conn.close()
    rng = random.Random(seed)
    by_touchpoint: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        by_touchpoint[row.touchpoint].append(row)
    parts = [_touchpoint(name, by_touchpoint[name], rng) for name in sorted(by_touchpoint)]
    parts.append(_touchpoint("overall", rows, rng))
    return Readout(since_days, tuple(parts))


def _rows(conn: sqlite3.Connection, since: float) -> Iterable[_Row]:
    for moment, customer, policy, reward, logged_arm in conn.execute(
        "SELECT moment, customer_ref, policy, reward, json_extract(context, '$.arm')"
        " FROM decisions WHERE ts >= ?",
        (since,),
    ):
        touchpoint = TOUCHPOINT_OF.get(moment)
        if touchpoint is None:
            continue
        arm = "holdout" if policy == "holdout" else (logged_arm or "model")
        yield _Row(touchpoint, customer, arm, reward)


def _touchpoint(name: str, rows: Sequence[_Row], rng: random.Random) -> TouchpointReadout:
    closed = [r for r in rows if r.reward is not None]
    # Identified: a customer's decisions stay together when resampled.
    by_customer: dict[str, dict[str, list[float]]] = {"model": {}, "holdout": {}}
    # Anonymous: each decision is its own unit.
    by_slot: dict[str, list[list[float]]] = {"model": [], "control": []}
    for row in closed:
        reward = float(row.reward or 0.0)
        if row.customer is not None and row.arm in by_customer:
            by_customer[row.arm].setdefault(row.customer, []).append(reward)
        elif row.customer is None and row.arm in by_slot:
            by_slot[row.arm].append([reward])
    return TouchpointReadout(
        touchpoint=name,
        decisions=len(rows),
        customers=len({r.customer for r in rows if r.customer is not None}),
        open=len(rows) - len(closed),
        personalised=_compare(
            ("personalised", list(by_customer["model"].values())),
            ("holdout", list(by_customer["holdout"].values())),
            rng,
        ),
        switchback=_compare(("model", by_slot["model"]), ("rules", by_slot["control"]), rng),
    )


def _compare(
    treatment: tuple[str, list[list[float]]],
    control: tuple[str, list[list[float]]],
    rng: random.Random,
) -> Comparison | None:
    """Conversion per arm and the lift, its interval from resampling units within each arm."""
    (name_t, units_t), (name_c, units_c) = treatment, control
    if not units_t or not units_c:
        return None
    conv_t, conv_c = _conversion(units_t), _conversion(units_c)
    lifts = []
    for _ in range(_RESAMPLES):
        t = _conversion([rng.choice(units_t) for _ in units_t])
        c = _conversion([rng.choice(units_c) for _ in units_c])
        if c > 0:
            lifts.append(t / c - 1)
    lifts.sort()
    enough = len(lifts) >= _RESAMPLES * 0.95  # a control that often converts nothing: no interval
    return Comparison(
        treatment=name_t,
        control=name_c,
        decisions=(sum(map(len, units_t)), sum(map(len, units_c))),
        units=(len(units_t), len(units_c)),
        conversion=(conv_t, conv_c),
        lift=conv_t / conv_c - 1 if conv_c > 0 else None,
        low=lifts[int(0.025 * len(lifts))] if enough else None,
        high=lifts[int(0.975 * len(lifts)) - 1] if enough else None,
    )


def _conversion(units: Sequence[list[float]]) -> float:
    trials = sum(len(u) for u in units)
    return sum(sum(u) for u in units) / trials if trials else 0.0


def render(readout: Readout) -> str:
    """The readout as text: a table, then one plain sentence per comparison."""
    lines = [
        f"{'touchpoint':<10} {'decisions':>9} {'customers':>9} {'open':>6}"
        f"  {'personalised vs holdout':<32}  {'model vs rules (anonymous)':<32}"
    ]
    sentences = []
    for part in readout.touchpoints:
        lines.append(
            f"{part.touchpoint:<10} {part.decisions:>9,} {part.customers:>9,} {part.open:>6,}"
            f"  {_cell(part.personalised):<32}  {_cell(part.switchback):<32}"
        )
        for comparison, who in ((part.personalised, "personalised"), (part.switchback, "model")):
            if comparison is not None and comparison.lift is not None:
                sentences.append(_sentence(part.touchpoint, who, comparison, readout.days))
    return "\n".join([*lines, "", *sentences])


def _cell(comparison: Comparison | None) -> str:
    if comparison is None:
        return "-"
    t, c = comparison.conversion
    lift = "n/a" if comparison.lift is None else f"{comparison.lift:+.1%}"
    return f"{t:.1%} vs {c:.1%} ({lift})"


def _sentence(touchpoint: str, who: str, comparison: Comparison, days: float) -> str:
    assert comparison.lift is not None
    what = "personalised" if who == "personalised" else "model-chosen"
    where = "overall" if touchpoint == "overall" else f"{touchpoint} offers"
    interval = (
        f" [{comparison.low:+.1%}, {comparison.high:+.1%}]"
        if comparison.low is not None and comparison.high is not None
        else " (too few data for an interval)"
    )
    unit = "customers" if who == "personalised" else "decisions"
    return (
        f"{what} {where}: {comparison.lift:+.1%} conversion{interval} over {days:g} days,"
        f" {sum(comparison.units):,} {unit}"
    )
