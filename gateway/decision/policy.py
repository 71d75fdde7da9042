"""Exploration with logged propensities, so every decision can be evaluated off-policy.

Epsilon-greedy: the greedy candidate (the model's best score, or the rules' pick) with
probability 1 - epsilon, otherwise one drawn uniformly (the greedy one included). So every
eligible candidate has a probability of at least epsilon / k (k candidates): the floor that
makes the log worth learning from. The propensity recorded is the probability this policy had
of choosing what it chose: what IPS / SNIPS / DR estimators need. The whole distribution follows
from the greedy index and epsilon (`distribution`), which is what the decision log keeps.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is loaded with a model (gateway.decision.model), never before
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "EssMeter",
    "Pick",
    "distribution",
    "epsilon_greedy",
    "explore",
    "harmonic_propensity",
    "propensities",
]


@dataclass(frozen=True, slots=True)
class Pick:
    index: int
    propensity: float
    explored: bool


def _best(scores: npt.NDArray[np.float64]) -> int:
    return int(scores.argmax())  # ties: the first, i.e. the catalog's order


def distribution(k: int, greedy: int, epsilon: float) -> list[float]:
    """The probability of each of k candidates under epsilon-greedy around `greedy`."""
    probabilities = [epsilon / k] * k
    probabilities[greedy] += 1 - epsilon
    return probabilities


def propensities(scores: npt.NDArray[np.float64], epsilon: float) -> npt.NDArray[np.float64]:
    """The probability of each candidate under epsilon-greedy (sums to one)."""
    import numpy as np

    return np.asarray(distribution(len(scores), _best(scores), epsilon), dtype=np.float64)


def explore(k: int, greedy: int, epsilon: float, rng: random.Random) -> Pick:
    """Epsilon-greedy around the candidate `greedy` of k; no numpy (the rules use it too)."""
    if k == 0:
        raise ValueError("no candidates")
    explored = rng.random() < epsilon
    index = rng.randrange(k) if explored else greedy
    return Pick(index, distribution(k, greedy, epsilon)[index], explored)


def epsilon_greedy(scores: npt.NDArray[np.float64], epsilon: float, rng: random.Random) -> Pick:
    if len(scores) == 0:
        raise ValueError("no candidates")
    return explore(len(scores), _best(scores), epsilon, rng)


def harmonic_propensity(probabilities: Sequence[float]) -> float:
    """k / sum(1 / p): one decision's worth for evaluating a policy that picks among the same
    candidates with no regard to this one's preference (its expected effective sample share).
    1 for a single candidate; 1/k for a uniform choice; 0 when a candidate can't be chosen."""
    if any(p <= 0 for p in probabilities):
        return 0.0
    return len(probabilities) / sum(1 / p for p in probabilities)


_WEEK_S = 7 * 86400.0
_HOUR_S = 3600.0


class EssMeter:
    """The effective sample size the log is gathering, projected to a week (for /metrics).

    Per decision, the ESS share for evaluating a deterministic policy whose pick is unrelated
    to the logging policy's is the harmonic mean of the candidates' propensities
    (`harmonic_propensity`): 1/k for a uniform choice, about epsilon/k for epsilon-greedy.
    Over N decisions the ESS is N^2 / sum(1 / share); a decision that gives some candidate no
    chance (deterministic, with k > 1) adds nothing. Hourly buckets over the last week; the
    week is projected from the hours seen (at least one).
    """

    def __init__(self) -> None:
        self._buckets: deque[list[float]] = deque()  # [hour, decisions, supported, sum 1/share]
        self._first: float | None = None

    def add(self, k: int, epsilon: float, now: float) -> None:
        hour = now // _HOUR_S
        if not self._buckets or self._buckets[-1][0] != hour:
            self._buckets.append([hour, 0.0, 0.0, 0.0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        share = 1.0 if k == 1 else harmonic_propensity(distribution(k, 0, epsilon))
        if share > 0:
            bucket[2] += 1
            bucket[3] += 1 / share
        if self._first is None:
            self._first = now

    def _window(self, now: float) -> tuple[float, float, float]:
        while self._buckets and self._buckets[0][0] < (now - _WEEK_S) // _HOUR_S:
            self._buckets.popleft()
        decisions = sum(b[1] for b in self._buckets)
        supported = sum(b[2] for b in self._buckets)
        inverse = sum(b[3] for b in self._buckets)
        return decisions, supported, inverse

    def ess(self, now: float) -> tuple[float, float]:
        """(effective sample size, decisions) over the last week."""
        decisions, supported, inverse = self._window(now)
        return (supported * supported / inverse if inverse else 0.0), decisions

    def projected_per_week(self, now: float) -> float:
        ess, _ = self.ess(now)
        if self._first is None:
            return 0.0
        seen = min(max(now - self._first, _HOUR_S), _WEEK_S)
        return ess * _WEEK_S / seen
