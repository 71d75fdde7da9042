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
the log (about a million decisions in a few seconds).
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.decision.report_figures import (
    DAY,
    MIN_UNITS,
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


@dataclass
class _Experiment:
    metric: str
    arms: list[str]
    # arm -> unit -> [value, denominator]
    units: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    days: set[tuple[str, int]] = field(default_factory=set)  # (unit, day): visits


_TOUCHPOINTS = tuple(sorted(set(TOUCHPOINT_OF.values())))
_BIT = {t: 1 << k for k, t in enumerate(_TOUCHPOINTS)}
_MOMENT_BIT = {m: (t, _BIT[t]) for m, t in TOUCHPOINT_OF.items()}

# One sequential pass over the identified decisions of the period (`+ts`: the ts index would
# visit the rows in random order); Python aggregates them in dictionaries, no sorting. The
# anonymous ones are few groups, aggregated by SQLite.
_IDENTIFIED = (
    "SELECT customer_ref, CAST(ts / 86400 AS INTEGER), moment, policy, propensity, reward,"
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
_IN_TESTS = (
    "SELECT d.customer_ref, d.ts, d.reward, json_extract(d.context, '$.experiment'),"
    " coalesce(json_extract(d.context, '$.total'), 0) + coalesce(j.store, 0)"
    " + coalesce(j.online, 0)"
    " FROM decisions d LEFT JOIN (SELECT decision_id,"
    "  total(CASE WHEN channel = 'store' THEN share END) AS store,"
    "  total(CASE WHEN channel <> 'store' THEN share END) AS online"
    "  FROM outcome_joins GROUP BY decision_id) j ON j.decision_id = d.id"
    " WHERE +d.ts >= ? AND instr(d.context, '\"experiment\"') > 0"
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
        experiments = _applied_experiments(conn)
    since = (now - since_days * DAY,)
    parts: dict[str, _Touchpoint] = defaultdict(_Touchpoint)
    overall = _Touchpoint()
    visits, holdout = _identified(conn.execute(_IDENTIFIED, since), parts, overall)
    for customer, day, in_store, amount in conn.execute(_OUTCOMES, since):
        visit = visits.get((customer, day))
        if visit is not None:
            visit[1 if in_store else 2] += amount
    for moment, arm, policy, *sums in conn.execute(_ANONYMOUS, since):
        if (where := TOUCHPOINT_OF.get(moment)) is not None:
            parts[where].add_anonymous(arm, policy, sums)
            overall.add_anonymous(arm, policy, sums)
    per_visit = _revenue(visits, holdout)
    readouts = [_readout(name, parts[name], per_visit.get(name)) for name in sorted(parts)]
    readouts.append(_readout("overall", overall, per_visit.get("overall")))
    tests = {
        test_id: _Experiment(str(spec.get("metric", "conversion")), list(_arm_names(spec)))
        for test_id, spec in experiments.items()
    }
    if tests:
        for customer, ts, reward, logged, revenue in conn.execute(_IN_TESTS, since):
            _add_test(tests, logged, customer, reward, revenue=revenue, day=int(ts // DAY))
    return Readout(since_days, tuple(readouts), tuple(_experiments(tests)))


def _identified(
    rows: Iterable[tuple[str, int, str, str, float, float | None, float | None]],
    parts: dict[str, _Touchpoint],
    overall: _Touchpoint,
) -> tuple[dict[tuple[str, int], list[Any]], set[str]]:
    """The identified decisions, one pass: conversion units (per touchpoint, customer and arm),
    the off-policy sums, and the visits: (customer, day) -> [touchpoints (bits), in store,
    online]. Returns the visits and the customers in the holdout."""
    units: dict[tuple[str, str, bool], list[float]] = {}
    ope: dict[str, list[float]] = defaultdict(lambda: [0.0] * 6)
    visits: dict[tuple[str, int], list[Any]] = {}
    holdout: set[str] = set()
    for customer, day, moment, policy, propensity, reward, total in rows:
        found = _MOMENT_BIT.get(moment)
        if found is None:
            continue
        touchpoint, bit = found
        held = policy == "holdout"
        key = (touchpoint, customer, held)
        unit = units.get(key)
        if unit is None:
            unit = units[key] = [0.0, 0.0, 0.0]
            if held:
                holdout.add(customer)
        unit[0] += 1
        if reward is not None:
            unit[1] += 1
            unit[2] += reward
            if policy == "nba":
                w = 1.0 / propensity if propensity > 0.5 else 0.0
                o = ope[touchpoint]
                o[0] += 1
                o[1] += w
                o[2] += w * reward
                o[3] += w * w
                o[4] += (w * reward) ** 2
                o[5] += w * w * reward
        visit = visits.get((customer, day))
        if visit is None:
            visits[(customer, day)] = [bit, total or 0.0, 0.0]
        else:
            visit[0] |= bit
            if total:
                visit[1] += total
    everywhere: dict[tuple[str, bool], list[float]] = {}
    for (touchpoint, customer, held), (decisions, closed, rewards) in units.items():
        parts[touchpoint].add_customer(customer, held, decisions, closed, rewards)
        sums = everywhere.setdefault((customer, held), [0.0, 0.0, 0.0])
        sums[0] += decisions
        sums[1] += closed
        sums[2] += rewards
    for (customer, held), (decisions, closed, rewards) in everywhere.items():
        overall.add_customer(customer, held, decisions, closed, rewards)
    for touchpoint, sums in ope.items():
        parts[touchpoint].ope.add(sums)
        overall.ope.add(sums)
    return visits, holdout


def _add_test(
    tests: dict[str, _Experiment],
    logged: object,
    /,
    customer: str | None,
    reward: float | None,
    *,
    revenue: float,
    day: int,
) -> None:
    """A decision made inside a marketing test (its context's `experiment`: {id, arm, unit})."""
    if not isinstance(logged, str):
        return
    try:
        entry = json.loads(logged)
        test = tests[entry["id"]]
        arm, unit = str(entry["arm"]), str(entry.get("unit") or customer)
    except (ValueError, KeyError, TypeError):
        return
    units = test.units.setdefault(arm, {})
    test.decisions[arm] = test.decisions.get(arm, 0) + 1
    value = units.setdefault(unit, [0.0, 0.0])
    if test.metric == "revenue_per_visit":  # per visit: the unit's days in the test
        value[0] += revenue
        if (unit, day) not in test.days:
            test.days.add((unit, day))
            value[1] += 1.0
    elif reward is not None:
        value[0] += reward
        value[1] += 1.0


def _arm_names(spec: Mapping[str, Any]) -> Iterable[str]:
    for arm in spec.get("arms", ()):
        yield str(arm["name"]) if isinstance(arm, Mapping) else str(arm)


def _experiments(tests: Mapping[str, _Experiment]) -> Iterable[ExperimentReadout]:
    for test_id, test in sorted(tests.items()):
        sums = {}
        for arm in test.arms:
            s = Sums()
            for value, n in test.units.get(arm, {}).values():
                if n:
                    s.add(value, n)
            sums[arm] = s
        control = sums[test.arms[0]] if test.arms else Sums()
        arms = []
        for arm in test.arms:
            s = sums[arm]
            lift, low, high = (None, None, None) if arm == test.arms[0] else lift_of(s, control)
            arms.append(ArmReadout(arm, s.k, test.decisions.get(arm, 0), s.ratio, lift, low, high))
        enough = (
            len(arms) > 1
            and all(a.units >= MIN_UNITS for a in arms)
            and all(a.low is not None for a in arms[1:])
        )
        yield ExperimentReadout(test_id, test.metric, tuple(arms), enough, _verdict(arms, enough))


def _verdict(arms: Sequence[ArmReadout], enough: bool) -> str:
    if not enough:
        fewest = min((a.units for a in arms), default=0)
        return f"not enough data yet ({fewest} units in the smallest arm, {MIN_UNITS} needed)"
    better = [a.arm for a in arms[1:] if a.low is not None and a.low > 0]
    worse = [a.arm for a in arms[1:] if a.high is not None and a.high < 0]
    if better:
        return f"{', '.join(better)} beat {arms[0].arm}"
    if worse:
        return f"{', '.join(worse)} did worse than {arms[0].arm}"
    return "no arm differs from the control yet (intervals include 0)"


def _applied_experiments(conn: sqlite3.Connection) -> dict[str, Mapping[str, Any]]:
    """The tests of the last experiments bundle applied, if the store has one."""
    try:
        row = conn.execute("SELECT body FROM applied_bundles WHERE kind = 'experiments'").fetchone()
    except sqlite3.OperationalError:
        return {}
    if row is None:
        return {}
    try:
        body = json.loads(row[0])
        return {str(t["id"]): t for t in body.get("tests", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _revenue(visits: Mapping[tuple[str, int], list[Any]], holdout: set[str]) -> dict[str, Revenue]:
    """Per touchpoint and overall: each customer's visits and revenue (in store, online), then
    the per-visit revenue of each arm; a customer is in the holdout if any decision was."""
    # where -> customer -> [visits, in store, online]
    per: dict[str, dict[str, list[float]]] = {w: {} for w in (*_TOUCHPOINTS, "overall")}
    wheres = {  # the touchpoints a visit's bits name, each with its customers
        bits: (per["overall"], *(per[t] for t in _TOUCHPOINTS if bits & _BIT[t]))
        for bits in range(1 << len(_TOUCHPOINTS))
    }
    for (customer, _day), (bits, in_store, online) in visits.items():
        for customers in wheres[bits]:
            unit = customers.get(customer)
            if unit is None:
                customers[customer] = [1.0, in_store, online]
            else:
                unit[0] += 1
                unit[1] += in_store
                unit[2] += online
    out = {}
    for where, customers in per.items():
        sums = {(arm, kind): Sums() for arm in ("t", "c") for kind in ("in", "on", "all")}
        for customer, (n, in_store, online) in customers.items():
            arm = "c" if customer in holdout else "t"
            sums[(arm, "in")].add(in_store, n)
            sums[(arm, "on")].add(online, n)
            sums[(arm, "all")].add(in_store + online, n)
        t_all, c_all = sums[("t", "all")], sums[("c", "all")]
        if not t_all.k or not c_all.k or (t_all.y == 0 and c_all.y == 0):
            continue
        lift, low, high = lift_of(t_all, c_all)
        out[where] = Revenue(
            visits=(int(t_all.n), int(c_all.n)),
            customers=(t_all.k, c_all.k),
            in_store=(sums[("t", "in")].ratio, sums[("c", "in")].ratio),
            online=(sums[("t", "on")].ratio, sums[("c", "on")].ratio),
            together=(t_all.ratio, c_all.ratio),
            lift=lift,
            low=low,
            high=high,
            in_store_lift=lift_of(sums[("t", "in")], sums[("c", "in")])[0],
            online_lift=lift_of(sums[("t", "on")], sums[("c", "on")])[0],
        )
    return out


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
