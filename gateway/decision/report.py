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
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Comparison",
    "ExperimentReadout",
    "OffPolicy",
    "Readout",
    "Revenue",
    "TouchpointReadout",
    "read",
    "read_connection",
    "render",
    "summary",
]

TOUCHPOINT_OF = {
    "kiosk_identify": "kiosk",
    "zone_enter": "screen",
    "zone_dwell": "screen",
    "checkout": "receipt",
    "tablet_serve": "tablet",
    "app_message": "app",
}
_Z95 = 1.959964
_DAY = 86400.0
# Enough data for a test's verdict: at least this many units per arm, and an interval.
MIN_UNITS = 100


class _Sums:
    """Units (y_i, n_i) of one arm: the ratio sum(y) / sum(n) and its delta-method variance."""

    __slots__ = ("k", "n", "nn", "y", "yn", "yy")

    def __init__(self) -> None:
        self.k = 0
        self.y = self.n = self.yy = self.yn = self.nn = 0.0

    def add(self, y: float, n: float) -> None:
        self.k += 1
        self.y += y
        self.n += n
        self.yy += y * y
        self.yn += y * n
        self.nn += n * n

    @property
    def ratio(self) -> float:
        return self.y / self.n if self.n else 0.0

    def variance(self) -> float:
        """Of the ratio (linearisation), with the small-sample factor k / (k - 1)."""
        if self.k < 2 or not self.n:
            return math.inf
        r = self.ratio
        spread = max(0.0, self.yy - 2 * r * self.yn + r * r * self.nn)
        return spread / (self.n * self.n) * self.k / (self.k - 1)


def _lift(t: _Sums, c: _Sums) -> tuple[float | None, float | None, float | None]:
    """Lift t/c - 1 and its 95 % interval (delta method on the log of the ratio)."""
    if not t.k or not c.k or c.ratio <= 0:
        return None, None, None
    lift = t.ratio / c.ratio - 1
    if t.ratio <= 0:
        return lift, None, None
    se = math.sqrt(t.variance() / t.ratio**2 + c.variance() / c.ratio**2)
    if not math.isfinite(se):
        return lift, None, None
    log_ratio = math.log(t.ratio / c.ratio)
    return lift, math.exp(log_ratio - _Z95 * se) - 1, math.exp(log_ratio + _Z95 * se) - 1


@dataclass(frozen=True, slots=True)
class Comparison:
    treatment: str
    control: str
    decisions: tuple[int, int]  # with an outcome, per arm
    units: tuple[int, int]  # customers (identified) or decisions (anonymous), per arm
    conversion: tuple[float, float]
    lift: float | None  # conversion ratio - 1; None when the control converted nothing
    low: float | None  # 95 % interval of the lift
    high: float | None


@dataclass(frozen=True, slots=True)
class Revenue:
    """Revenue per identified visit, personalised vs holdout."""

    visits: tuple[int, int]
    customers: tuple[int, int]
    in_store: tuple[float, float]  # per visit, per arm
    online: tuple[float, float]
    together: tuple[float, float]
    lift: float | None  # of together
    low: float | None
    high: float | None
    in_store_lift: float | None
    online_lift: float | None


@dataclass(frozen=True, slots=True)
class OffPolicy:
    """The shipped model acting greedily, estimated from its own epsilon-greedy log."""

    decisions: int  # closed decisions the model logged
    effective_sample_size: float
    ips: tuple[float, float, float] | None  # value, 95 % interval
    snips: tuple[float, float, float] | None
    dr: None  # needs every candidate's score in the log (not logged yet)
    rules_conversion: float | None  # the rules' own (deterministic: on-policy)
    rules_decisions: int


@dataclass(frozen=True, slots=True)
class TouchpointReadout:
    touchpoint: str
    decisions: int
    customers: int
    open: int  # decisions whose reward window has not closed
    personalised: Comparison | None
    switchback: Comparison | None
    revenue: Revenue | None = None
    off_policy: OffPolicy | None = None


@dataclass(frozen=True, slots=True)
class ArmReadout:
    arm: str
    units: int  # customers or decisions
    decisions: int
    value: float  # the test's metric per unit of its denominator
    lift: float | None  # over the first arm
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class ExperimentReadout:
    id: str
    metric: str  # conversion or revenue_per_visit
    arms: tuple[ArmReadout, ...]
    enough_data: bool
    verdict: str


@dataclass(frozen=True, slots=True)
class Readout:
    days: float
    touchpoints: tuple[TouchpointReadout, ...]  # overall last
    experiments: tuple[ExperimentReadout, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class _OpeSums:
    """The greedy model's IPS / SNIPS terms over the decisions the model logged (sums)."""

    __slots__ = ("k", "rules_k", "rules_r", "w", "wr", "wr_w", "wrwr", "ww")

    def __init__(self) -> None:
        self.k = self.rules_k = 0
        self.w = self.wr = self.ww = self.wrwr = self.wr_w = self.rules_r = 0.0

    def add(self, sums: Sequence[float]) -> None:
        k, w, wr, ww, wrwr, wr_w = sums
        self.k += int(k)
        self.w += w
        self.wr += wr
        self.ww += ww
        self.wrwr += wrwr
        self.wr_w += wr_w

    def readout(self) -> OffPolicy | None:
        rules = self.rules_r / self.rules_k if self.rules_k else None
        if self.k < 2:
            if not self.rules_k:
                return None
            return OffPolicy(self.k, 0.0, None, None, None, rules, self.rules_k)
        k = self.k
        ips = self.wr / k
        ips_se = math.sqrt(max(0.0, self.wrwr / k - ips * ips) / (k - 1))
        snips_t: tuple[float, float, float] | None = None
        if self.w > 0:
            snips = self.wr / self.w
            # delta method: psi_i = (w_i r_i - snips w_i) / mean(w)
            spread = self.wrwr - 2 * snips * self.wr_w + snips * snips * self.ww
            se = math.sqrt(max(0.0, spread) / k / (k - 1)) / (self.w / k)
            snips_t = (snips, snips - _Z95 * se, snips + _Z95 * se)
        return OffPolicy(
            decisions=k,
            effective_sample_size=self.w**2 / self.ww if self.ww else 0.0,
            ips=(ips, ips - _Z95 * ips_se, ips + _Z95 * ips_se),
            snips=snips_t,
            dr=None,
            rules_conversion=rules,
            rules_decisions=self.rules_k,
        )


@dataclass
class _Touchpoint:
    decisions: int = 0
    open: int = 0
    customers: set[str] = field(default_factory=set)
    # identified conversion, each customer a unit: arm -> sums (rewards / closed decisions)
    ident: dict[str, _Sums] = field(default_factory=lambda: {"model": _Sums(), "holdout": _Sums()})
    anon: dict[str, _Sums] = field(default_factory=lambda: {"model": _Sums(), "control": _Sums()})
    ope: _OpeSums = field(default_factory=_OpeSums)

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
_OUTCOMES = (
    "SELECT d.customer_ref, CAST(d.ts / 86400 AS INTEGER), j.channel = 'store', total(j.share)"
    " FROM outcome_joins j JOIN decisions d ON d.id = j.decision_id"
    " WHERE d.ts >= ? AND d.customer_ref IS NOT NULL GROUP BY 1, 2, 3"
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
    since = (now - since_days * _DAY,)
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
            _add_test(tests, logged, customer, reward, revenue=revenue, day=int(ts // _DAY))
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
            s = _Sums()
            for value, n in test.units.get(arm, {}).values():
                if n:
                    s.add(value, n)
            sums[arm] = s
        control = sums[test.arms[0]] if test.arms else _Sums()
        arms = []
        for arm in test.arms:
            s = sums[arm]
            lift, low, high = (None, None, None) if arm == test.arms[0] else _lift(s, control)
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
        sums = {(arm, kind): _Sums() for arm in ("t", "c") for kind in ("in", "on", "all")}
        for customer, (n, in_store, online) in customers.items():
            arm = "c" if customer in holdout else "t"
            sums[(arm, "in")].add(in_store, n)
            sums[(arm, "on")].add(online, n)
            sums[(arm, "all")].add(in_store + online, n)
        t_all, c_all = sums[("t", "all")], sums[("c", "all")]
        if not t_all.k or not c_all.k or (t_all.y == 0 and c_all.y == 0):
            continue
        lift, low, high = _lift(t_all, c_all)
        out[where] = Revenue(
            visits=(int(t_all.n), int(c_all.n)),
            customers=(t_all.k, c_all.k),
            in_store=(sums[("t", "in")].ratio, sums[("c", "in")].ratio),
            online=(sums[("t", "on")].ratio, sums[("c", "on")].ratio),
            together=(t_all.ratio, c_all.ratio),
            lift=lift,
            low=low,
            high=high,
            in_store_lift=_lift(sums[("t", "in")], sums[("c", "in")])[0],
            online_lift=_lift(sums[("t", "on")], sums[("c", "on")])[0],
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


def _compare_sums(treatment: tuple[str, _Sums], control: tuple[str, _Sums]) -> Comparison | None:
    (name_t, t), (name_c, c) = treatment, control
    if not t.k or not c.k:
        return None
    lift, low, high = _lift(t, c)
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


def summary(readout: Readout) -> dict[str, Any]:
    """The figures of the `experiment.summary` event and /metrics: per touchpoint, compact."""
    out: dict[str, Any] = {"days": readout.days, "touchpoints": {}, "experiments": {}}
    for part in readout.touchpoints:
        entry: dict[str, Any] = {"decisions": part.decisions, "customers": part.customers}
        for key, comparison in (
            ("personalised", part.personalised),
            ("switchback", part.switchback),
        ):
            if comparison is not None:
                entry[key] = {
                    "units": list(comparison.units),
                    "conversion": [round(v, 6) for v in comparison.conversion],
                    "lift": _round(comparison.lift),
                    "ci95": [_round(comparison.low), _round(comparison.high)],
                }
        if part.revenue is not None:
            r = part.revenue
            entry["revenue_per_visit"] = {
                "visits": list(r.visits),
                "in_store": [round(v, 4) for v in r.in_store],
                "online": [round(v, 4) for v in r.online],
                "together": [round(v, 4) for v in r.together],
                "lift": _round(r.lift),
                "ci95": [_round(r.low), _round(r.high)],
            }
        o = part.off_policy
        if o is not None and o.snips is not None and o.ips is not None:
            entry["off_policy"] = {
                "decisions": o.decisions,
                "ess": round(o.effective_sample_size, 1),
                "ips": [_round(v) for v in o.ips],
                "snips": [_round(v) for v in o.snips],
                "rules_conversion": _round(o.rules_conversion),
            }
        out["touchpoints"][part.touchpoint] = entry
    for test in readout.experiments:
        out["experiments"][test.id] = {
            "metric": test.metric,
            "enough_data": test.enough_data,
            "arms": {a.arm: _arm_summary(a) for a in test.arms},
        }
    return out


def _arm_summary(arm: ArmReadout) -> dict[str, Any]:
    ci95 = [_round(arm.low), _round(arm.high)]
    return {
        "units": arm.units,
        "value": round(arm.value, 6),
        "lift": _round(arm.lift),
        "ci95": ci95,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# -- text


def render(readout: Readout) -> str:
    """The readout as text: a table, then one plain sentence per comparison."""
    lines = [
        f"{'touchpoint':<10} {'decisions':>9} {'customers':>9} {'open':>6}"
        f"  {'personalised vs holdout':<30}  {'model vs rules (anonymous)':<30}"
        f"  {'revenue/visit (in store + online)':<36}"
    ]
    sentences = []
    for part in readout.touchpoints:
        lines.append(
            f"{part.touchpoint:<10} {part.decisions:>9,} {part.customers:>9,} {part.open:>6,}"
            f"  {_cell(part.personalised):<30}  {_cell(part.switchback):<30}"
            f"  {_revenue_cell(part.revenue):<36}"
        )
        if part.revenue is not None and part.revenue.lift is not None:
            sentences.append(_revenue_sentence(part.touchpoint, part.revenue, readout.days))
        for comparison, who in ((part.personalised, "personalised"), (part.switchback, "model")):
            if comparison is not None and comparison.lift is not None:
                sentences.append(_sentence(part.touchpoint, who, comparison, readout.days))
    lines += ["", *sentences]
    ope = [p for p in readout.touchpoints if p.off_policy is not None]
    if ope:
        lines += ["", "off-policy (the shipped model acting greedily, from its own log; IPS/SNIPS"
                      " with 95 % intervals) beside the rules' own conversion:"]  # fmt: skip
        for part in ope:
            lines.append(f"  {part.touchpoint:<10} {_ope_cell(part.off_policy)}")
    for test in readout.experiments:
        lines += ["", f"test {test.id} ({test.metric}): {test.verdict}"]
        for a in test.arms:
            lift = "" if a.lift is None else f"  lift {_interval(a.lift, a.low, a.high)}"
            lines.append(f"  {a.arm:<12} {a.units:>7,} units  {a.value:.4g}{lift}")
    return "\n".join(lines)


def _cell(comparison: Comparison | None) -> str:
    if comparison is None:
        return "-"
    t, c = comparison.conversion
    lift = "n/a" if comparison.lift is None else f"{comparison.lift:+.1%}"
    return f"{t:.1%} vs {c:.1%} ({lift})"


def _revenue_cell(revenue: Revenue | None) -> str:
    if revenue is None:
        return "-"
    (t_in, c_in), (t_on, c_on) = revenue.in_store, revenue.online
    lift = "n/a" if revenue.lift is None else f"{revenue.lift:+.1%}"
    return f"{t_in:.2f}+{t_on:.2f} vs {c_in:.2f}+{c_on:.2f} ({lift})"


def _interval(value: float, low: float | None, high: float | None, label: str = "") -> str:
    """'+6.1% [+2.0%, +10.3%]', with the metric's name after the value if given."""
    named = f"{value:+.1%} {label}".rstrip()
    if low is None or high is None:
        return f"{named} (too few data for an interval)"
    return f"{named} [{low:+.1%}, {high:+.1%}]"


def _ope_cell(ope: OffPolicy | None) -> str:
    assert ope is not None
    parts = []
    for name, estimate in (("IPS", ope.ips), ("SNIPS", ope.snips)):
        if estimate is not None:
            value, low, high = estimate
            parts.append(f"{name} {value:.1%} [{low:.1%}, {high:.1%}]")
    if parts:
        parts.append(f"ESS {ope.effective_sample_size:,.0f} of {ope.decisions:,}")
    if ope.rules_conversion is not None:
        parts.append(f"rules {ope.rules_conversion:.1%} ({ope.rules_decisions:,} decisions)")
    return "; ".join(parts) or "-"


def _where(touchpoint: str) -> str:
    return "overall" if touchpoint == "overall" else f"{touchpoint} offers"


def _sentence(touchpoint: str, who: str, comparison: Comparison, days: float) -> str:
    assert comparison.lift is not None
    what = "personalised" if who == "personalised" else "model-chosen"
    unit = "customers" if who == "personalised" else "decisions"
    figure = _interval(comparison.lift, comparison.low, comparison.high, "conversion")
    units = sum(comparison.units)
    return f"{what} {_where(touchpoint)}: {figure} over {days:g} days, {units:,} {unit}"


def _revenue_sentence(touchpoint: str, revenue: Revenue, days: float) -> str:
    assert revenue.lift is not None
    figure = _interval(revenue.lift, revenue.low, revenue.high, "revenue per visit")
    split = []
    if revenue.in_store_lift is not None:
        split.append(f"in store {revenue.in_store_lift:+.1%}")
    if revenue.online_lift is not None:
        split.append(f"online {revenue.online_lift:+.1%}")
    tail = f" ({', '.join(split)})" if split else ""
    return (
        f"personalised {_where(touchpoint)}: {figure} over {days:g} days,"
        f" {sum(revenue.visits):,} visits{tail}"
    )
