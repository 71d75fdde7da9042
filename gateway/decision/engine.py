"""The decision engine: hard rules, experiments, one model call, exploration, and a fallback.

Synchronous and deterministic given its random source: the journey runs it on a thread of its
own (off the event loop, and off the store thread, which runs SQLite only), between reading the
consent and caps and committing the decision with its log entry. Models are swapped by
replacing one reference: a decision under way finishes with the scorer it started with, none
waits.

numpy is imported on the model's paths only: a gateway deciding by the rules never loads it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import structlog

from gateway.decision import rules
from gateway.decision.catalog import CatalogCache
from gateway.decision.experiments import in_holdout, switchback_arm
from gateway.decision.features import FeatureContext, Weather, featurize, row_hash
from gateway.decision.model import ModelError, Scorer
from gateway.decision.policy import EssMeter, explore
from gateway.decision.value import offer_value
from gateway.runtime.config import DecisionConfig
from gateway.store import Offer

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DecisionEngine", "Outcome"]

log = structlog.get_logger("gateway.decision")


@dataclass(frozen=True, slots=True)
class Outcome:
    offer: Offer | None
    propensity: float
    policy: str  # "nba" (the model), "rules" (fallback or control arm), "holdout"
    reason: str
    model_version: str | None = None
    feature_hash: str | None = None
    explored: bool = False
    arm: str = "model"
    shadow: Mapping[str, object] | None = None  # the shadow model's pick, for the log
    # What the decision log keeps to rebuild the logging distribution (issue 17): the eligible
    # candidates after rules and caps, the greedy one's index, and epsilon; the propensity of
    # candidate i is epsilon / k, plus 1 - epsilon for the greedy one.
    candidates: tuple[Offer, ...] = ()
    greedy: int = 0
    epsilon: float = 0.0


@dataclass
class _Counters:
    model: int = 0
    fallback: int = 0
    rollbacks: int = 0
    refused: list[str] = field(default_factory=list)


class DecisionEngine:
    def __init__(self, config: DecisionConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self.scorer: Scorer | None = None
        self.shadow: Scorer | None = None
        self._previous: Scorer | None = None
        self.weather = Weather()  # from the latest config bundle's settings
        self.counters = _Counters()
        self.catalog = CatalogCache()  # the catalog version decisions are logged against
        self.ess = EssMeter()  # the projected effective sample size, for /metrics

    # -- model lifecycle

    def install(
        self,
        scorer: Scorer,
        replay: Sequence[tuple[FeatureContext, list[Offer]]],
        *,
        shadow: bool = False,
    ) -> str:
        """Validate a loaded model on recent decisions, then serve it (or shadow it: asked, or
        `decision.shadow` with a model serving)."""
        import numpy as np

        for ctx, offers in replay:
            if not offers:
                continue
            scores = scorer.score(featurize(ctx, offers))
            if scores.shape != (len(offers),) or not np.all(np.isfinite(scores)):
                raise ModelError(f"{scorer.info.path}: non-finite scores on a recent decision")
            if np.any(scores < 0) or np.any(scores > 1):
                raise ModelError(f"{scorer.info.path}: scores outside [0, 1] on a recent decision")
        if shadow or (self.config.shadow and self.scorer is not None):
            self.shadow = scorer
            return "shadow"
        self._previous, self.scorer = self.scorer, scorer
        return "serving"

    def promote_shadow(self) -> Scorer | None:
        """The shadow model serves (the one it replaces is kept to roll back to)."""
        shadow = self.shadow
        if shadow is not None:
            self._previous, self.scorer, self.shadow = self.scorer, shadow, None
        return shadow

    def _rollback(self, scorer: Scorer, error: Exception) -> None:
        """A model that fails at run time is dropped for the one before it (or the rules)."""
        if self.scorer is scorer:
            self.scorer, self._previous = self._previous, None
            self.counters.rollbacks += 1
            back = self.scorer.info.version if self.scorer else "the rules"
            log.error(
                "model failed at run time, rolled back",
                model=scorer.info.version,
                to=back,
                error=str(error),
            )

    # -- deciding

    def decide(
        self,
        offers: Sequence[Offer],
        context: rules.Context,
        features: FeatureContext,
        *,
        customer_ref: str | None,
        touchpoint_id: str,
        customer_counts: Mapping[str, int],
        touchpoint_counts: Mapping[str, int],
    ) -> Outcome:
        """customer_ref: the consenting customer, or None; touchpoint_id: the kiosk or screen;
        counts: offers shown today (to this customer) and this hour (at this touchpoint), for
        the frequency caps."""
        cfg = self.config
        candidates = [
            o
            for o in offers
            if rules.eligible(o, context)
            and customer_counts.get(o.id, 0) < cfg.cap_customer_per_day
            and touchpoint_counts.get(o.id, 0) < cfg.cap_touchpoint_per_hour
        ]
        if not candidates:
            return Outcome(None, 1.0, "rules", "no eligible offer")
        k = len(candidates)
        if customer_ref is not None and in_holdout(customer_ref, cfg.holdout_share):
            anonymous = replace(context, segment=None)
            choice = rules.choose(candidates, anonymous)
            return self._logged(
                Outcome(choice.offer, 1.0, "holdout", "holdout group", arm="holdout"),
                candidates,
                context.now,
            )
        arm = "model"
        if customer_ref is None:
            arm = switchback_arm(touchpoint_id, context.now, cfg.switchback_slot_s)
        scorer = self.scorer
        if scorer is None or arm == "control":
            self.counters.fallback += 1
            choice = rules.choose(candidates, context)
            reason = choice.reason if scorer is not None else f"no model; {choice.reason}"
            # Learning on, the rules explore (never the control arm: it measures the rules).
            epsilon = cfg.exploration if cfg.learning and arm == "model" else 0.0
            return self._rules(candidates, choice.offer, epsilon, reason, arm=arm, now=context.now)
        import numpy as np

        matrix = featurize(features, candidates)
        try:
            scores = scorer.score(matrix)
            if not np.all(np.isfinite(scores)):
                raise ModelError("non-finite scores")
        except Exception as exc:  # noqa: BLE001 - any model failure falls back, never crashes
            self._rollback(scorer, exc)
            choice = rules.choose(candidates, context)
            return self._rules(
                candidates, choice.offer, 0.0, "model failed", arm=arm, now=context.now
            )
        ranked = scores * self._values(candidates) if cfg.objective != "conversion" else scores
        greedy = int(ranked.argmax())  # ties: the first, i.e. the catalog's order
        pick = explore(k, greedy, cfg.exploration, self._rng)
        self.counters.model += 1
        return self._logged(
            Outcome(
                offer=candidates[pick.index],
                propensity=pick.propensity,
                policy="nba",
                reason="explore" if pick.explored else "model",
                model_version=scorer.info.version,
                feature_hash=row_hash(matrix[pick.index]),
                explored=pick.explored,
                arm=arm,
                shadow=self._shadow(matrix, candidates),
                greedy=greedy,
                epsilon=cfg.exploration,
            ),
            candidates,
            context.now,
        )

    def _values(self, candidates: Sequence[Offer]) -> np.ndarray:
        import numpy as np

        return np.asarray([offer_value(o, self.config.objective) for o in candidates])

    def _rules(
        self,
        candidates: list[Offer],
        chosen: Offer | None,
        epsilon: float,
        reason: str,
        *,
        arm: str,
        now: float,
    ) -> Outcome:
        """The rules' pick, explored with `epsilon` (0: deterministic, propensity 1)."""
        assert chosen is not None  # the candidates passed the same hard rules
        greedy = candidates.index(chosen)
        pick = explore(len(candidates), greedy, epsilon, self._rng)
        outcome = Outcome(
            candidates[pick.index],
            pick.propensity,
            "rules",
            "explore" if pick.explored else reason,
            explored=pick.explored,
            arm=arm,
            greedy=greedy,
            epsilon=epsilon,
        )
        return self._logged(outcome, candidates, now)

    def _logged(self, outcome: Outcome, candidates: list[Offer], now: float) -> Outcome:
        """The outcome with its candidates, counted for the effective sample size."""
        outcome = replace(outcome, candidates=tuple(candidates))
        if outcome.offer is not None:
            greedy = candidates.index(outcome.offer) if outcome.epsilon == 0 else outcome.greedy
            outcome = replace(outcome, greedy=greedy)
        self.ess.add(len(candidates), outcome.epsilon, now)
        return outcome

    def _shadow(
        self, matrix: np.ndarray, candidates: Sequence[Offer]
    ) -> Mapping[str, object] | None:
        shadow = self.shadow
        if shadow is None:
            return None
        try:
            scores = shadow.score(matrix)
        except Exception as exc:  # noqa: BLE001 - a shadow never affects what is served
            log.warning("shadow model failed", model=shadow.info.version, error=str(exc))
            self.shadow = None
            return None
        best = int(scores.argmax())
        return {"model_version": shadow.info.version, "offer_id": candidates[best].id}
