"""The store's own experiment readout, from its decision log: `store-gateway report`.

Per touchpoint (kiosk, screen, tablet, receipt, app) and overall: decisions, customers, and the
comparisons the log has:

- identified customers, personalised vs the standing holdout (the hashed holdout group gets the
  rules' non-personalised choice): conversion, the share of closed decisions rewarded 1 (a
  redemption, a tap, an accepted suggestion, an outcome from another channel), each customer a
  unit with all their decisions;
- identified customers, revenue per visit, in store and online separately and together. A visit
  is a customer's decisions on one (UTC) day; its in-store revenue is the lanes' totals logged
  with its checkout decisions plus `store` outcomes, its online revenue the `online` and `app`
  outcomes joined to its decisions (docs/cloud.md). A touchpoint's visits are those it took part
  in; a customer is in the holdout arm if any of their decisions was;
- anonymous audiences, the model's switchback slots vs the rules': conversion, each decision a
  unit;
- off-policy estimates (IPS, SNIPS) of the shipped model acting greedily, from the decisions it
  logged with their propensities (epsilon-greedy), beside the rules' own conversion;
- each marketing test (an `experiments` bundle): per arm, the test's metric, and each arm's
  lift over the first (the control) with whether there is enough data yet.

Lift is the ratio of the two arms' per-unit means, minus 1. Its 95 % interval is the delta
method on the log of the ratio, each arm's mean a ratio of sums over its units (customers, or
decisions for the anonymous), with the units' variance (cluster-robust: a regular's many visits
are not counted as independent): exp(log ratio +- 1.96 se) - 1. It is computed in one pass over
the log, the identified decisions aggregated by numpy with every sum added in the log's order
(about a million decisions in 4 s, docs/decision.md).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.decision.report_experiments import applied_experiments, read_experiments
from gateway.decision.report_figures import (
    DAY,
    TOUCHPOINT_OF,
    ArmReadout,
    Comparison,
    ExperimentReadout,
    OffPolicy,
    OpeSums,
    Readout,
    Revenue,
    Sums,
    TouchpointReadout,
    lift_of,
)
from gateway.decision.report_visits import (
    TOUCHPOINTS,
    Floats,
    Ints,
    Rows,
    Visits,
    in_order,
    sum_by,
    sums_of,
)

__all__ = [
    "ArmReadout",
    "Comparison",
    "ExperimentReadout",
    "OffPolicy",
    "Readout",
    "Revenue",
    "TouchpointReadout",
    "read",
    "read_connection",
]


@dataclass
class _Touchpoint:
    decisions: int = 0
    open: int = 0
    customers: set[str] = field(default_factory=set)
    # identified conversion, each customer a unit: arm -> sums (rewards / closed decisions)
    ident: dict[str, Sums] = field(default_factory=lambda: {"model": Sums(), "holdout": Sums()})
    anon: dict[str, Sums] = field(default_factory=lambda: {"model": Sums(), "control": Sums()})
    ope: OpeSums = field(default_factory=OpeSums)

    def add_customer(
        self, customer: str, holdout: bool, decisions: float, closed: float, rewards: float
    ) -> None:
        self.decisions += int(decisions)
        self.open += int(decisions - closed)
        self.customers.add(customer)
        if closed:
            self.ident["holdout" if holdout else "model"].add(rewards, closed)

    def add_units(  # noqa: PLR0917 - the columns of the units
        self,
        refs: Sequence[str],
        customer: Ints,
        held: npt.NDArray[np.bool_],
        decisions: Floats,
        closed: Floats,
        rewards: Floats,
    ) -> None:
        """`add_customer` of units at once, in their order (the first, into empty sums)."""
        self.decisions += int(decisions.sum())
        self.open += int((decisions - closed).sum())
        self.customers.update([refs[i] for i in customer.tolist()])
        some = closed > 0
        for arm, units in (("holdout", held & some), ("model", ~held & some)):
            if self.ident[arm].k:
                raise ValueError("add_units adds to empty sums only")
            self.ident[arm] = sums_of(rewards[units], closed[units])

    def add_anonymous(self, arm: str, policy: str, group: Sequence[float]) -> None:
        """Each decision a unit (y = reward, n = 1): the sums of a group of them (decisions,
        closed, rewards, squared rewards), then the group's off-policy sums."""
        decisions, closed, rewards, squares = int(group[0]), int(group[1]), group[2], group[3]
        self.decisions += decisions
        self.open += decisions - closed
        sums = self.anon.get(arm)
        if sums is not None and closed:
            sums.k += closed
            sums.y += rewards
            sums.n += closed
            sums.yy += squares
            sums.yn += rewards
            sums.nn += closed
        if policy == "rules" and arm == "control":
            self.ope.rules_k += closed
            self.ope.rules_r += rewards
        elif policy == "nba":
            self.ope.add([closed, *group[4:]])


# The identified decisions of the period, one sequential pass (`+ts`: the ts index would visit
# the rows in random order), aggregated by numpy (SQLite's GROUP BY sorts the million rows and
# is slower; a loop in Python took 5 s). Per row: customer, day, touchpoint and policy as one
# small integer (3 * touchpoint + 0 other, 1 holdout, 2 the model; negative: a moment of no
# touchpoint, dropped by numpy: cheaper than `moment IN (...)` here), propensity, reward, and
# the lane's total of a checkout.
_TOUCHPOINT_CODE = " ".join(
    f"WHEN '{m}' THEN {3 * TOUCHPOINTS.index(t)}" for m, t in TOUCHPOINT_OF.items()
)
_IDENTIFIED = (
    f"SELECT customer_ref, CAST(ts / 86400 AS INTEGER), CASE moment {_TOUCHPOINT_CODE}"  # noqa: S608 - constants
    " ELSE -9 END + CASE policy WHEN 'holdout' THEN 1 WHEN 'nba' THEN 2 ELSE 0 END,"
    " propensity, reward,"
    " CASE WHEN moment = 'checkout' THEN json_extract(context, '$.total') END"
    " FROM decisions WHERE +ts >= ? AND customer_ref IS NOT NULL"
)
_ANONYMOUS = (
    "SELECT moment, coalesce(json_extract(context, '$.arm'), 'model'), policy, count(*),"
    " count(reward), total(reward), total(reward * reward),"
    " total(w), total(w * reward), total(w * w), total(w * w * reward * reward),"
    " total(w * w * reward) FROM (SELECT moment, context, policy, reward,"
    "  CASE WHEN policy = 'nba' AND reward IS NOT NULL AND propensity > 0.5"
    "  THEN 1.0 / propensity ELSE 0.0 END AS w"
    "  FROM decisions WHERE +ts >= ? AND customer_ref IS NULL) GROUP BY 1, 2, 3"
)
# Outcomes joined to identified decisions, per visit: in store (channel store) and online.
# CROSS JOIN: from the joins (the fewer) to their decisions by id; left to itself SQLite walked
# the decisions by customer and looked each one up in the joins (1.6 s instead of 0.1 s).
_OUTCOMES = (
    "SELECT d.customer_ref, CAST(d.ts / 86400 AS INTEGER), j.channel = 'store', total(j.share)"
    " FROM outcome_joins j CROSS JOIN decisions d ON d.id = j.decision_id"
    " WHERE +d.ts >= ? AND d.customer_ref IS NOT NULL GROUP BY 1, 2, 3"
)


def read(
    database: Path,
    *,
    since_days: float,
    now: float,
    experiments: Mapping[str, Mapping[str, Any]] | None = None,
) -> Readout:
    """The readout of the decisions logged in the last `since_days` (read-only).
    experiments: test id -> its declaration (metric, arms), for the per-arm readout."""
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return read_connection(conn, since_days=since_days, now=now, experiments=experiments)
    finally:
        conn.close()


def read_connection(
    conn: sqlite3.Connection,
    *,
    since_days: float,
    now: float,
    experiments: Mapping[str, Mapping[str, Any]] | None = None,
) -> Readout:
    if experiments is None:
        experiments = applied_experiments(conn)
    since = (now - since_days * DAY,)
    parts: dict[str, _Touchpoint] = defaultdict(_Touchpoint)
    overall = _Touchpoint()
    visits = _identified(Rows.read(conn.execute(_IDENTIFIED, since)), parts, overall)
    visits.add_outcomes(conn.execute(_OUTCOMES, since).fetchall())
    for moment, arm, policy, *sums in conn.execute(_ANONYMOUS, since):
        if (where := TOUCHPOINT_OF.get(moment)) is not None:
            parts[where].add_anonymous(arm, policy, sums)
            overall.add_anonymous(arm, policy, sums)
    per_visit = visits.revenue()
    readouts = [_readout(name, parts[name], per_visit.get(name)) for name in sorted(parts)]
    readouts.append(_readout("overall", overall, per_visit.get("overall")))
    return Readout(since_days, tuple(readouts), read_experiments(conn, since[0], experiments))


def _identified(rows: Rows, parts: dict[str, _Touchpoint], overall: _Touchpoint) -> Visits:
    """The identified decisions: conversion units (per touchpoint, customer and arm), the
    off-policy sums, and the visits. Every sum adds its terms in the order of the rows, one by
    one (np.bincount, np.cumsum), as the loop in Python this replaces did: same figures."""
    _conversion(rows, parts, overall)
    _off_policy(rows, parts, overall)
    return Visits(rows)


def _conversion(rows: Rows, parts: dict[str, _Touchpoint], overall: _Touchpoint) -> None:
    """Each customer a unit per touchpoint and arm (decisions, closed ones, rewards), then
    overall, each arm's units added in the order they appeared."""
    width = 2 * len(TOUCHPOINTS)
    closed = ~np.isnan(rows.reward)
    key = rows.customer * width + rows.touchpoint * 2 + (rows.policy == 1)
    units, _ = in_order(key)
    size = len(rows.ids) * width
    n = np.bincount(key, minlength=size)[units].astype(np.float64)
    k = sum_by(key, closed.astype(np.float64), size)[units]
    y = sum_by(key, np.where(closed, rows.reward, 0.0), size)[units]
    refs = list(rows.ids)
    who, where, held = units // width, units % width // 2, (units % 2).astype(np.bool_)
    for index, name in enumerate(TOUCHPOINTS):
        if (here := where == index).any():
            parts[name].add_units(refs, who[here], held[here], n[here], k[here], y[here])
    # overall: each customer (and arm) a unit with its decisions of every touchpoint
    both, of_unit = in_order(who * 2 + held)
    sums = [sum_by(of_unit, column, len(both)) for column in (n, k, y)]
    overall.add_units(refs, both // 2, (both % 2).astype(np.bool_), *sums)


def _off_policy(rows: Rows, parts: dict[str, _Touchpoint], overall: _Touchpoint) -> None:
    """The model's closed decisions, per touchpoint: the IPS / SNIPS sums of `OpeSums`."""
    model = (rows.policy == 2) & ~np.isnan(rows.reward)
    touchpoint, propensity, reward = (
        rows.touchpoint[model],
        rows.propensity[model],
        rows.reward[model],
    )
    w = np.divide(1.0, propensity, out=np.zeros_like(propensity), where=propensity > 0.5)
    wr = w * reward
    # np.power with an array of 2s is C's pow, as Python's ** (np.square can differ in the
    # last bit)
    terms = (np.ones_like(w), w, wr, w * w, np.power(wr, np.full_like(wr, 2.0)), w * w * reward)
    size = len(TOUCHPOINTS)
    sums = [sum_by(touchpoint, term, size) for term in terms]
    seen, _ = in_order(touchpoint)
    for k in seen.tolist():
        row = [float(term[k]) for term in sums]
        parts[TOUCHPOINTS[k]].ope.add(row)
        overall.ope.add(row)


def _readout(name: str, part: _Touchpoint, revenue: Revenue | None) -> TouchpointReadout:
    return TouchpointReadout(
        touchpoint=name,
        decisions=part.decisions,
        customers=len(part.customers),
        open=part.open,
        personalised=_compare_sums(
            ("personalised", part.ident["model"]), ("holdout", part.ident["holdout"])
        ),
        switchback=_compare_sums(("model", part.anon["model"]), ("rules", part.anon["control"])),
        revenue=revenue,
        off_policy=part.ope.readout(),
    )


def _compare_sums(treatment: tuple[str, Sums], control: tuple[str, Sums]) -> Comparison | None:
    (name_t, t), (name_c, c) = treatment, control
    if not t.k or not c.k:
        return None
    lift, low, high = lift_of(t, c)
    return Comparison(
        treatment=name_t,
        control=name_c,
        decisions=(int(t.n), int(c.n)),
        units=(t.k, c.k),
        conversion=(t.ratio, c.ratio),
        lift=lift,
        low=low,
        high=high,
    )


# -- text
