"""The promotion gate: a model from a bundle serves only once the box's own log vouches for it.

A new model is installed in shadow (it scores nothing that is shown). The gate exports the
last `decision.promotion_window_days` of the box's log, reads it back with every candidate's
features, and estimates off-policy, on the explored decisions, the value (under
`decision.objective`) of the greedy policy the new model would serve, against the serving
policy's own greedy pick on the same decisions (both self-normalised IPS: neither depends on
a model's calibration). Then:

- promote: effective sample size at least `decision.promotion_min_ess`, and the new model's
  estimate not worse than the serving policy's by more than `decision.promotion_margin`
  (a share of the serving policy's value);
- refuse: enough effective sample, but worse by more than the margin;
- wait: not enough effective sample yet (the log grows; the manager looks again hourly).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.decision.export import export_decisions, read_export
from gateway.decision.offpolicy import OffPolicy, Score, evaluate

__all__ = ["Verdict", "judge", "judge_log"]


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["promote", "refuse", "wait"]
    reason: str
    ope: OffPolicy

    def as_event(self, model_version: str) -> dict[str, Any]:
        """The `model.promotion` event's data."""
        return {
            "model_version": model_version,
            "outcome": self.outcome,
            "reason": self.reason,
            "decisions": self.ope.decisions,
            "ess": round(self.ope.ess, 1),
            "objective": self.ope.objective,
            "candidate": self.ope.value.snips.as_dict(),
            "serving": self.ope.serving.as_dict(),
        }


def judge(ope: OffPolicy, *, min_ess: float, margin: float) -> Verdict:
    if ope.decisions == 0 or ope.ess < min_ess:
        return Verdict(
            "wait",
            f"effective sample size {ope.ess:,.0f} of {ope.decisions:,} explored decisions,"
            f" under {min_ess:,.0f}",
            ope,
        )
    new, serving = ope.value.snips.value, ope.serving.value
    if math.isnan(new) or math.isnan(serving):
        return Verdict("wait", "no estimate yet", ope)
    floor = serving - margin * abs(serving)
    if new < floor:
        return Verdict(
            "refuse",
            f"estimated {new:.4f} against the serving policy's {serving:.4f}"
            f" (at least {floor:.4f} needed)",
            ope,
        )
    return Verdict(
        "promote", f"estimated {new:.4f} against the serving policy's {serving:.4f}", ope
    )


def judge_log(
    database: Path,
    score: Score,
    *,
    since: float,
    now: float,
    objective: str,
    min_ess: float,
    margin: float,
) -> Verdict:
    """Export the box's log since `since` to a temporary file beside it (read-only on the
    database), evaluate `score` on it and judge. Blocking: run it off the event loop."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=database.parent) as spool:
        export_decisions(database, spool, since=since, now=now)
        spool.seek(0)
        ope = evaluate(read_export(spool), score, objective=objective)
    return judge(ope, min_ess=min_ess, margin=margin)
