"""Evaluation of next-best-action policies: logged decisions, off-policy estimates, the simulator.

Needs only the daemon's dependencies (numpy, onnxruntime): `scripts/evaluate_policy.py`,
`scripts/train_model.py` (for its model card) and `scripts/bench.py` (`policy_lift`) share it.

Logged decisions, JSON lines (`write_jsonl`, `read_jsonl`; `--from FILE` in the scripts)
    One decision per line, an object with:
      "features":   [[float, ...], ...]  one row per candidate offer shown to the policy,
                                         columns in `gateway.decision.features.FEATURES` order
      "chosen":     int                  index of the offer shown, into "features"
      "propensity": float                P(logging policy chose it), in (0, 1]
      "reward":     float                1 converted (redeemed, tapped, accepted), else 0
      "feature_spec_hash": str           optional; if present it must equal SPEC_HASH
      "offers":     [str, ...]           optional offer ids, same order as "features"
    Training uses the chosen row; off-policy evaluation needs every candidate's row (the target
    policy's choice) as well.

Off-policy estimators, for a target policy pi from decisions logged by mu
    w_i = pi(a_i | x_i) / mu(a_i | x_i)
    IPS   = mean(w_i r_i)                          unbiased, high variance
    SNIPS = sum(w_i r_i) / sum(w_i)                self-normalised: small bias, lower variance
    DR    = mean(sum_a pi(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))
            doubly robust, with q a reward model (by default the candidate model's own scores):
            unbiased when the propensities are right, whatever q; lower variance when q is good.
    95 % confidence intervals by the normal approximation (delta method for SNIPS), or by a
    bootstrap over decisions.

On the simulator
    `compare_policies` runs policies on the same fresh moments and averages each one's *expected*
    conversion: sum_a pi(a | moment) P_true(convert | moment, a), known exactly on the simulator,
    so no reward noise is added; intervals are over moments. `policy_lift` = (model - random) /
    (oracle - random), with a delta-method interval on the paired per-moment values.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from gateway.decision.features import FEATURES, SPEC_HASH
from simulators.shoppers import (
    F32,
    F64,
    EpsilonGreedy,
    ModelPolicy,
    Moment,
    OnnxScorer,
    OraclePolicy,
    Policy,
    PopularityPolicy,
    RandomPolicy,
    RulesPolicy,
    Simulator,
    epsilon_mix,
    sample_index,
)

__all__ = [
    "Comparison",
    "Estimate",
    "Logged",
    "OpeTerms",
    "auc",
    "compare_policies",
    "log_decisions",
    "log_loss",
    "logging_policy",
    "mean_estimate",
    "off_policy_estimates",
    "ope_terms_from_records",
    "ope_terms_from_simulator",
    "policy_lift",
    "read_jsonl",
    "standard_policies",
    "write_jsonl",
]

Z95 = 1.959963984540054
DEFAULT_LOGGING_EPSILON = 0.5


# --------------------------------------------------------------------------------------------
# Estimates with confidence intervals


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    lo: float  # 95 % confidence interval
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.lo, self.hi], "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.lo:.4f}, {self.hi:.4f}]"


def mean_estimate(values: npt.ArrayLike) -> Estimate:
    """The mean with its normal-approximation 95 % interval."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean())
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(mean, mean - Z95 * se, mean + Z95 * se, n)


def _ratio_estimate(num: F64, den: F64) -> Estimate:
    """mean(num) / mean(den), delta-method interval."""
    n = len(num)
    ratio = float(num.sum() / den.sum())
    psi = (num - ratio * den) / den.mean()
    se = float(psi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(ratio, ratio - Z95 * se, ratio + Z95 * se, n)


# --------------------------------------------------------------------------------------------
# Logged decisions


@dataclass(frozen=True, slots=True)
class Logged:
    """One logged decision (the JSON-lines record; see the module's docstring)."""

    features: F32  # [K, len(FEATURES)]: every candidate's row
    chosen: int
    propensity: float
    reward: float
    offers: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "features": [[round(float(x), 6) for x in row] for row in self.features],
            "chosen": self.chosen,
            "propensity": self.propensity,
            "reward": self.reward,
            "feature_spec_hash": SPEC_HASH,
            "offers": list(self.offers),
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Logged:
        spec = record.get("feature_spec_hash")
        if spec is not None and spec != SPEC_HASH:
            raise ValueError(f"logged with feature spec {spec}, the code has {SPEC_HASH}")
        features = np.asarray(record["features"], dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(FEATURES) or len(features) == 0:
            raise ValueError(f"features must be [K, {len(FEATURES)}], not {features.shape}")
        chosen = int(record["chosen"])
        propensity = float(record["propensity"])
        if not 0 <= chosen < len(features):
            raise ValueError(f"chosen {chosen} is not a candidate index")
        if not 0 < propensity <= 1:
            raise ValueError(f"propensity {propensity} is not in (0, 1]")
        offers = tuple(str(o) for o in record.get("offers", ()))
        return cls(features, chosen, propensity, float(record["reward"]), offers)


def write_jsonl(records: Iterable[Logged], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record.as_json(), separators=(",", ":")) + "\n")
        count += 1
    return count


def read_jsonl(path: str | Path) -> Iterator[Logged]:
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield Logged.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: {e}") from e


def logging_policy(epsilon: float = DEFAULT_LOGGING_EPSILON, seed: int = 0) -> Policy:
    """The default logging policy: epsilon-greedy around the rules (what a store would run
    before it has a model), which records the propensity of every choice."""
    return EpsilonGreedy(RulesPolicy(), epsilon, seed)


def log_decisions(
    sim: Simulator, policy: Policy, n: int, seed: int, chunk: int = 500
) -> Iterator[tuple[Moment, int, float, int]]:
    """`n` decisions of `policy` on `sim`'s moments: (moment, chosen index, propensity, reward),
    the reward a Bernoulli draw of the truth."""
    choices = np.random.default_rng([seed, 1])
    rewards = np.random.default_rng([seed, 2])
    done = 0
    while done < n:
        moments = sim.moments(min(chunk, n - done))
        for moment, p in zip(moments, policy.distributions(moments), strict=True):
            i = sample_index(p, choices)
            truth = sim.conversion_probability(moment, moment.offers[i])
            yield moment, i, float(p[i]), int(rewards.random() < truth)
        done += len(moments)


def split_rows(values: F64, counts: Sequence[int]) -> Iterator[F64]:
    """`values` of concatenated moments, back into one array per moment."""
    bounds = np.cumsum([0, *counts])
    for a, b in itertools.pairwise(bounds):
        yield values[a:b]


# --------------------------------------------------------------------------------------------
# Offline metrics of a scorer


def auc(y: npt.ArrayLike, score: npt.ArrayLike, weight: npt.ArrayLike | None = None) -> float:
    """Area under the ROC curve (ties count half), optionally weighted."""
    ys = np.asarray(y, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    w = np.ones_like(s) if weight is None else np.asarray(weight, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    s, ys, w = s[order], ys[order], w[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * ys, starts)
    neg = np.add.reduceat(w * (1 - ys), starts)
    below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    return float(np.sum(pos * (below + 0.5 * neg)) / total) if total > 0 else math.nan


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike, weight: npt.ArrayLike | None = None) -> float:
    ys = np.asarray(y, dtype=np.float64)
    ps = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    w = np.ones_like(ps) if weight is None else np.asarray(weight, dtype=np.float64)
    losses = -(ys * np.log(ps) + (1 - ys) * np.log(1 - ps))
    return float(np.sum(w * losses) / np.sum(w))


# --------------------------------------------------------------------------------------------
# Off-policy estimates


@dataclass
class OpeTerms:
    """Per logged decision: importance weight, reward, the reward model's terms."""

    weight: list[float] = field(default_factory=list)  # pi(a_i|x_i) / mu(a_i|x_i)
    reward: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)  # sum_a pi(a|x_i) q(x_i, a)
    q_chosen: list[float] = field(default_factory=list)  # q(x_i, a_i)
    truth: list[float] = field(default_factory=list)  # sum_a pi(a|x_i) P_true(a): simulator only

    def add(
        self,
        pi: F64,
        q: F64 | None,
        chosen: int,
        propensity: float,
        reward: float,
        *,
        truth: F64 | None = None,
    ) -> None:
        self.truth.append(float(pi @ truth) if truth is not None else math.nan)
        self.weight.append(float(pi[chosen]) / propensity)
        self.reward.append(reward)
        self.direct.append(float(pi @ q) if q is not None else math.nan)
        self.q_chosen.append(float(q[chosen]) if q is not None else math.nan)

    def __len__(self) -> int:
        return len(self.weight)

    def true_value(self) -> Estimate | None:
        """The target's expected conversion on the logged moments (known on the simulator)."""
        if not self.truth or math.isnan(self.truth[0]):
            return None
        return mean_estimate(self.truth)


def ope_terms_from_simulator(
    target: Policy,
    logging: Policy,
    sim: Simulator,
    n: int,
    *,
    seed: int,
    reward_model: OnnxScorer | None = None,
    chunk: int = 500,
) -> OpeTerms:
    """Log `n` decisions of `logging` on `sim`, and the terms to evaluate `target` on them."""
    terms = OpeTerms()
    choices = np.random.default_rng([seed, 1])
    rewards = np.random.default_rng([seed, 2])
    done = 0
    while done < n:
        moments = sim.moments(min(chunk, n - done))
        mus = logging.distributions(moments)
        pis = target.distributions(moments)
        qs: list[F64 | None] = [None] * len(moments)
        if reward_model is not None:
            scores = reward_model.scores(np.concatenate([m.features for m in moments]))
            qs = list(split_rows(scores, [len(m.offers) for m in moments]))
        for moment, mu, pi, q in zip(moments, mus, pis, qs, strict=True):
            i = sample_index(mu, choices)
            reward = int(rewards.random() < moment.truth[i])
            terms.add(pi, q, i, float(mu[i]), reward, truth=moment.truth)
        done += len(moments)
    return terms


def ope_terms_from_records(
    records: Iterable[Logged],
    target: OnnxScorer,
    epsilon: float = 0.0,
    reward_model: OnnxScorer | None = None,
    chunk: int = 500,
) -> OpeTerms:
    """The terms to evaluate the model policy (argmax of `target`, epsilon-greedy) on logs."""
    terms = OpeTerms()
    batch: list[Logged] = []

    def flush() -> None:
        x = np.concatenate([r.features for r in batch])
        counts = [len(r.features) for r in batch]
        scores = target.scores(x)
        q_all = scores if reward_model is None or reward_model is target else reward_model.scores(x)
        rows = zip(batch, split_rows(scores, counts), split_rows(q_all, counts), strict=True)
        for record, score, q in rows:
            greedy = np.zeros(len(score), dtype=np.float64)
            greedy[int(np.argmax(score))] = 1.0
            pi = epsilon_mix(greedy, epsilon) if epsilon > 0 else greedy
            terms.add(pi, q, record.chosen, record.propensity, record.reward)
        batch.clear()

    for record in records:
        batch.append(record)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return terms


def off_policy_estimates(terms: OpeTerms, bootstrap: int = 0, seed: int = 0) -> dict[str, Estimate]:
    """IPS, SNIPS and (with a reward model) DR, each with a 95 % interval."""
    w = np.asarray(terms.weight)
    r = np.asarray(terms.reward)
    direct = np.asarray(terms.direct)
    q = np.asarray(terms.q_chosen)
    has_dr = not np.isnan(direct).any()
    dr = direct + w * (r - q)
    out = {"ips": mean_estimate(w * r), "snips": _ratio_estimate(w * r, w)}
    if has_dr:
        out["dr"] = mean_estimate(dr)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(w)
        samples: dict[str, list[float]] = {k: [] for k in out}
        for _ in range(bootstrap):
            idx = rng.integers(0, n, n)
            samples["ips"].append(float(np.mean(w[idx] * r[idx])))
            samples["snips"].append(float(np.sum(w[idx] * r[idx]) / np.sum(w[idx])))
            if has_dr:
                samples["dr"].append(float(np.mean(dr[idx])))
        out = {
            k: Estimate(
                est.value,
                float(np.quantile(samples[k], 0.025)),
                float(np.quantile(samples[k], 0.975)),
                n,
            )
            for k, est in out.items()
        }
    return out


def effective_sample_size(terms: OpeTerms) -> float:
    w = np.asarray(terms.weight)
    return float(w.sum() ** 2 / np.sum(w * w)) if len(w) else 0.0


# --------------------------------------------------------------------------------------------
# On the simulator


@dataclass
class Comparison:
    """Expected conversion per policy on the same moments (per-moment values kept)."""

    values: dict[str, F64]

    def conversion(self, name: str) -> Estimate:
        return mean_estimate(self.values[name])

    def difference(self, a: str, b: str) -> Estimate:
        """a - b, paired over moments."""
        return mean_estimate(self.values[a] - self.values[b])

    def lift(self, name: str = "model", low: str = "random", high: str = "oracle") -> Estimate:
        """(name - low) / (high - low): the share of the best possible lift that `name` gets."""
        return _ratio_estimate(
            self.values[name] - self.values[low], self.values[high] - self.values[low]
        )

    def as_dict(self) -> dict[str, Any]:
        return {name: self.conversion(name).as_dict() for name in self.values}


def compare_policies(
    policies: Mapping[str, Policy], seed: int, n: int, chunk: int = 1000
) -> Comparison:
    """Each policy's expected conversion on the same `n` fresh moments of `Simulator(seed)`."""
    sim = Simulator(seed)
    values: dict[str, list[F64]] = {name: [] for name in policies}
    done = 0
    while done < n:
        moments = sim.moments(min(chunk, n - done))
        truths = [m.truth for m in moments]
        for name, policy in policies.items():
            pis = policy.distributions(moments)
            values[name].append(np.asarray([p @ t for p, t in zip(pis, truths, strict=True)]))
        done += len(moments)
    return Comparison({name: np.concatenate(v) for name, v in values.items()})


def standard_policies(model: str | Path | OnnxScorer | None, seed: int) -> dict[str, Policy]:
    """random, popularity, rules, model (if given), oracle; popularity is ranked on moments
    from another seed than the evaluation's."""
    policies: dict[str, Policy] = {
        "random": RandomPolicy(seed),
        "popularity": PopularityPolicy.from_simulator(seed + 100_003),
        "rules": RulesPolicy(),
    }
    if model is not None:
        scorer = model if isinstance(model, OnnxScorer) else OnnxScorer(model)
        policies["model"] = ModelPolicy(scorer)
    policies["oracle"] = OraclePolicy()
    return policies


def policy_lift(model_path: str | Path, seed: int = 2026, n: int = 20_000) -> dict[str, Any]:
    """For `scripts/bench.py`: the shipped model's lift over random as a share of the oracle's,
    with every policy's conversion (95 % intervals) on `n` moments of `Simulator(seed)`."""
    scorer = OnnxScorer(model_path)
    comparison = compare_policies(standard_policies(scorer, seed), seed, n)
    lift = comparison.lift("model")
    return {
        "policy_lift": lift.value,
        "policy_lift_ci95": [lift.lo, lift.hi],
        "conversion": comparison.as_dict(),
        "model_minus_popularity": comparison.difference("model", "popularity").as_dict(),
        "model_version": scorer.version,
        "seed": seed,
        "moments": n,
    }


def summarize(policies: Sequence[str], comparison: Comparison) -> list[str]:
    """Printable lines: conversion per policy with intervals."""
    return [f"{name:>12}  {comparison.conversion(name)}" for name in policies]
