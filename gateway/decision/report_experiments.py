"""The readout of the marketing tests of the last `experiments` bundle (docs/decision.md): per
arm, the test's metric over its units (customers, or the declared unit), each arm's lift over
the first (the control) with its interval, and whether there is enough data yet."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.decision.report_figures import (
    DAY,
    MIN_UNITS,
    ArmReadout,
    ExperimentReadout,
    Sums,
    lift_of,
)

__all__ = ["applied_experiments", "read_experiments"]


@dataclass
class _Experiment:
    metric: str
    arms: list[str]
    # arm -> unit -> [value, denominator]
    units: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    days: set[tuple[str, int]] = field(default_factory=set)  # (unit, day): visits


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


def read_experiments(
    conn: sqlite3.Connection, since: float, experiments: Mapping[str, Mapping[str, Any]]
) -> tuple[ExperimentReadout, ...]:
    """Each declared test's readout over the decisions logged since `since` (a time)."""
    tests = {
        test_id: _Experiment(str(spec.get("metric", "conversion")), list(_arm_names(spec)))
        for test_id, spec in experiments.items()
    }
    if tests:
        for customer, ts, reward, logged, revenue in conn.execute(_IN_TESTS, (since,)):
            _add_test(tests, logged, customer, reward, revenue=revenue, day=int(ts // DAY))
    return tuple(_experiments(tests))


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


def applied_experiments(conn: sqlite3.Connection) -> dict[str, Mapping[str, Any]]:
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
