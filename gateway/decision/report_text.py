"""The readout in words and in the uplink's shape: the table and sentences `store-gateway report`
prints, and the `experiment.summary` event's figures (`summary`)."""

from __future__ import annotations

from typing import Any

from gateway.decision.report_figures import (
    ArmReadout,
    Comparison,
    OffPolicy,
    Readout,
    Revenue,
)

__all__ = ["render", "summary"]


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
