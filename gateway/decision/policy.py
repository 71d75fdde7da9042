"""Exploration with logged propensities, so every decision can be evaluated off-policy.

Epsilon-greedy: the best-scored candidate with probability 1 - epsilon, otherwise one drawn
uniformly (the best included). The propensity recorded is the probability this policy had of
choosing what it chose, given the scores: what IPS / SNIPS / DR estimators need.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is loaded with a model (gateway.decision.model), never before
    import numpy as np
    import numpy.typing as npt

__all__ = ["Pick", "epsilon_greedy", "propensities"]


@dataclass(frozen=True, slots=True)
class Pick:
    index: int
    propensity: float
    explored: bool


def _best(scores: npt.NDArray[np.float64]) -> int:
    return int(scores.argmax())  # ties: the first, i.e. the catalog's order


def propensities(scores: npt.NDArray[np.float64], epsilon: float) -> npt.NDArray[np.float64]:
    """The probability of each candidate under epsilon-greedy (sums to one)."""
    import numpy as np

    k = len(scores)
    probabilities = np.full(k, epsilon / k)
    probabilities[_best(scores)] += 1 - epsilon
    return probabilities


def epsilon_greedy(scores: npt.NDArray[np.float64], epsilon: float, rng: random.Random) -> Pick:
    if len(scores) == 0:
        raise ValueError("no candidates")
    explored = rng.random() < epsilon
    index = rng.randrange(len(scores)) if explored else _best(scores)
    return Pick(index, float(propensities(scores, epsilon)[index]), explored)
