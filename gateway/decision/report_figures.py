"""What a readout holds, and the statistics behind its intervals: per-unit sums, the lift with
its delta-method interval, the off-policy sums (see `gateway.decision.report`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = [
    "MIN_UNITS",
    "TOUCHPOINT_OF",
    "ArmReadout",
    "Comparison",
    "ExperimentReadout",
    "OffPolicy",
    "Readout",
    "Revenue",
    "TouchpointReadout",
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


DAY = 86400.0


# Enough data for a test's verdict: at least this many units per arm, and an interval.
MIN_UNITS = 100


class Sums:
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


def lift_of(t: Sums, c: Sums) -> tuple[float | None, float | None, float | None]:
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


class OpeSums:
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
