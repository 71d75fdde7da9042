"""Off-policy evaluation of a scorer on logged decisions: what it would have earned, from a log
another policy made, with the effective sample size that says how much to trust it.

The target policy is the greedy one the engine would serve with the scorer: the argmax of
P(convert) x the offer's value (`decision.objective`). For decision i, logged by mu, with reward
r_i and the target's pick t_i:

    w_i   = 1[a_i = t_i] / mu(a_i | x_i)                    importance weight
    IPS   = mean(w_i r_i)                 SNIPS = sum(w_i r_i) / sum(w_i)
    DR    = mean(q(x_i, t_i) + w_i (r_i - q(x_i, a_i)))     q: the scorer's own P(convert)
    ESS   = (sum w_i)^2 / sum w_i^2

95 % intervals by the normal approximation (the delta method for SNIPS). Decisions the logging
policy took deterministically (the holdout, the switchback's control slots, rules without
learning: some candidate had no chance) are left out and counted (`deterministic`): the
experiments assign them by a hash of the customer or of the screen and time slot, not by the
context, so the explored rest is still a fair sample. A log with no explored decision can't
evaluate anything, and the gate says so. Numpy only: the gateway runs it on its own log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.decision.export import Exported
from gateway.decision.value import offer_value

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["Estimate", "Estimates", "OffPolicy", "evaluate"]

Z95 = 1.959963984540054
Score = Callable[["npt.NDArray[np.float32]"], "npt.NDArray[np.float64]"]


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    lo: float  # 95 % interval
    hi: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.lo:.4f}, {self.hi:.4f}]"

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.lo, self.hi]}


def _mean(values: npt.NDArray[np.float64]) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(mean, mean - Z95 * se, mean + Z95 * se)


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> Estimate:
    n = len(num)
    if n == 0 or den.sum() == 0:
        return Estimate(math.nan, math.nan, math.nan)
    ratio = float(num.sum() / den.sum())
    psi = (num - ratio * den) / den.mean()
    se = float(psi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(ratio, ratio - Z95 * se, ratio + Z95 * se)


@dataclass(frozen=True, slots=True)
class Estimates:
    logged: Estimate  # what the logging policy earned
    ips: Estimate
    snips: Estimate
    dr: Estimate

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).as_dict() for k in ("logged", "ips", "snips", "dr")}


@dataclass
class _Terms:
    weight: list[float] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)  # conversion
    value: list[float] = field(default_factory=list)  # conversion x the chosen offer's value
    q_target: list[float] = field(default_factory=list)  # q of the target's pick
    q_chosen: list[float] = field(default_factory=list)
    v_target: list[float] = field(default_factory=list)  # the target pick's value
    v_chosen: list[float] = field(default_factory=list)
    w_serving: list[float] = field(default_factory=list)  # the logging policy's greedy pick
    deterministic: int = 0  # left out: some candidate had no chance
    unknown_support: int = 0  # logged without the whole distribution (an older export)


@dataclass(frozen=True, slots=True)
class OffPolicy:
    decisions: int  # evaluated on: the explored ones
    ess: float
    deterministic: int  # left out: logged with no chance for some candidate
    unknown_support: int
    conversion: Estimates
    value: Estimates  # = conversion for the objective "conversion"
    objective: str
    # The serving (logging) policy without its exploration: its greedy pick, SNIPS, in value.
    serving: Estimate = Estimate(math.nan, math.nan, math.nan)

    @property
    def ess_share(self) -> float:
        return self.ess / self.decisions if self.decisions else 0.0

    def problems(self, min_ess: float) -> list[str]:
        """Why these estimates can't justify a promotion (empty: they can)."""
        if self.decisions == 0:
            return [
                f"none of the {self.deterministic:,} decisions explored (deterministic logging:"
                " propensity 1): nothing can be evaluated off-policy; turn decision.learning on"
            ]
        if self.ess < min_ess:
            return [
                f"effective sample size {self.ess:,.0f} of {self.decisions:,} explored decisions"
                f" is under {min_ess:,.0f}: too few decisions, or too little exploration"
            ]
        return []

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "ess": self.ess,
            "ess_share": self.ess_share,
            "deterministic": self.deterministic,
            "objective": self.objective,
            "conversion": self.conversion.as_dict(),
            "value": self.value.as_dict(),
        }


def evaluate(
    records: Iterable[Exported], score: Score, *, objective: str = "conversion", batch: int = 500
) -> OffPolicy:
    """The greedy policy of `score` (P(convert) x value) evaluated on `records`."""
    import numpy as np

    terms = _Terms()
    pending: list[Exported] = []

    def flush() -> None:
        scores = score(np.concatenate([r.features for r in pending]))
        start = 0
        for record in pending:
            q = scores[start : start + len(record.features)]
            start += len(record.features)
            _add(terms, record, q, objective)
        pending.clear()

    for record in records:
        pending.append(record)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return _estimates(terms, objective)


def _add(terms: _Terms, record: Exported, q: npt.NDArray[np.float64], objective: str) -> None:
    values = [offer_value(o, objective) for o in record.offers] or [1.0] * len(q)
    target = max(range(len(q)), key=lambda a: (q[a] * values[a], -a))  # ties: the first
    chosen = record.chosen
    if record.probabilities:
        if min(record.probabilities) <= 0:
            terms.deterministic += 1
            return
    elif record.propensity >= 1 and len(q) > 1:  # an older export: the rest had no chance
        terms.deterministic += 1
        return
    else:
        terms.unknown_support += 1
    weight = (1.0 if target == chosen else 0.0) / record.propensity
    if record.probabilities:
        greedy = max(range(len(q)), key=lambda a: (record.probabilities[a], -a))
        terms.w_serving.append((1.0 if greedy == chosen else 0.0) / record.propensity)
    terms.weight.append(weight)
    terms.reward.append(record.reward)
    terms.value.append(record.reward * values[chosen])
    terms.q_target.append(float(q[target]))
    terms.q_chosen.append(float(q[chosen]))
    terms.v_target.append(values[target])
    terms.v_chosen.append(values[chosen])


def _estimates(terms: _Terms, objective: str) -> OffPolicy:
    import numpy as np

    w = np.asarray(terms.weight)
    q_t, q_c = np.asarray(terms.q_target), np.asarray(terms.q_chosen)
    v_t, v_c = np.asarray(terms.v_target), np.asarray(terms.v_chosen)

    def estimates(r: npt.NDArray[np.float64], qt: Any, qc: Any) -> Estimates:
        return Estimates(
            logged=_mean(r),
            ips=_mean(w * r),
            snips=_ratio(w * r, w),
            dr=_mean(qt + w * (r - qc)),
        )

    r = np.asarray(terms.reward)
    conversion = estimates(r, q_t, q_c)
    value = estimates(np.asarray(terms.value), q_t * v_t, q_c * v_c)
    ess = float(w.sum() ** 2 / np.sum(w * w)) if len(w) and np.any(w) else 0.0
    serving = Estimate(math.nan, math.nan, math.nan)
    if len(terms.w_serving) == len(w) and len(w):
        w_s = np.asarray(terms.w_serving)
        serving = _ratio(w_s * np.asarray(terms.value), w_s)
    return OffPolicy(
        decisions=len(w),
        ess=ess,
        deterministic=terms.deterministic,
        unknown_support=terms.unknown_support,
        conversion=conversion,
        value=value,
        objective=objective,
        serving=serving,
    )
