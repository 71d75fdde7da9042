#!/usr/bin/env python3
"""Evaluate a next-best-action model: off-policy estimates from logs, and on the simulator.

    scripts/evaluate_policy.py [--model models/nba.onnx] [--from FILE] [--json out.json]

Needs only the daemon's dependencies (numpy, onnxruntime); the logic is in
simulators/evaluation.py (`policy_lift` is what scripts/bench.py imports).

1. Off-policy estimates (IPS, SNIPS, doubly robust; 95 % intervals, normal approximation or
   --bootstrap B) of the candidate model's conversion, acting greedily (or --epsilon-greedy),
   from logged decisions: --from FILE (JSON lines, format in simulators/evaluation.py), or
   --samples decisions logged on the simulator by epsilon-greedy rules (--logging-epsilon).
   The DR reward model is the candidate's own scores unless --reward-model is given.
   On simulated logs the truth is known and printed beside the estimates.
2. On the simulator: expected conversion of random, popularity, rules, the model, the
   observable oracle and the oracle on the same --moments fresh moments (95 % intervals), and
   policy_lift = (model - random) / (oracle - random).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simulators.evaluation import (  # noqa: E402
    DEFAULT_LOGGING_EPSILON,
    compare_policies,
    effective_sample_size,
    logging_policy,
    off_policy_estimates,
    ope_terms_from_records,
    ope_terms_from_simulator,
    read_jsonl,
    standard_policies,
)
from simulators.shoppers import (  # noqa: E402
    ModelPolicy,
    ObservableOraclePolicy,
    OnnxScorer,
    Simulator,
)

DEFAULT_SEED = 2026  # not the training seed (7): other shoppers, other moments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "nba.onnx")
    parser.add_argument("--reward-model", type=Path, help="ONNX reward model for DR")
    parser.add_argument("--from", dest="from_file", type=Path, help="JSON lines of decisions")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--samples", type=int, default=50_000, help="simulated logged decisions")
    parser.add_argument("--logging-epsilon", type=float, default=DEFAULT_LOGGING_EPSILON)
    parser.add_argument("--epsilon", type=float, default=0.0, help="the model's exploration")
    parser.add_argument("--moments", type=int, default=20_000, help="on-simulator moments")
    parser.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for CIs")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def off_policy(args: argparse.Namespace, scorer: OnnxScorer, target: ModelPolicy) -> dict[str, Any]:
    """IPS, SNIPS, DR of `target` from logs (a file, or simulated); truth when simulated."""
    reward_model = OnnxScorer(args.reward_model) if args.reward_model else scorer
    if args.from_file is not None:
        source = f"{args.from_file}"
        terms = ope_terms_from_records(
            read_jsonl(args.from_file), scorer, args.epsilon, reward_model=reward_model
        )
    else:
        logging = logging_policy(args.logging_epsilon, args.seed)
        source = f"simulator seed {args.seed}, logging policy {logging.name}"
        sim = Simulator(args.seed)
        terms = ope_terms_from_simulator(
            target, logging, sim, args.samples, seed=args.seed, reward_model=reward_model
        )
    estimates = off_policy_estimates(terms, bootstrap=args.bootstrap, seed=args.seed)
    method = f"bootstrap ({args.bootstrap})" if args.bootstrap else "normal approximation"
    ess = effective_sample_size(terms)
    logged = sum(terms.reward) / len(terms)
    print(f"off-policy, {len(terms):,} logged decisions from {source}; 95 % CI by {method}")
    print(f"  logging policy's conversion {logged:.4f}; effective sample size {ess:,.0f}")
    for name, estimate in estimates.items():
        print(f"  {name.upper():>5}  {estimate}")
    report: dict[str, Any] = {
        "source": source,
        "decisions": len(terms),
        "ci": method,
        "effective_sample_size": ess,
        "logging_conversion": logged,
        **{name: e.as_dict() for name, e in estimates.items()},
    }
    truth = terms.true_value()
    if truth is not None:
        inside = {k: e.lo <= truth.value <= e.hi for k, e in estimates.items()}
        print(f"  truth  {truth.value:.4f} (the model on the same moments); inside: {inside}")
        report["truth_on_logged_moments"] = truth.value
        report["truth_inside_ci"] = inside
    return report


def on_simulator(
    args: argparse.Namespace, scorer: OnnxScorer, target: ModelPolicy
) -> dict[str, Any]:
    """Every policy's expected conversion on the same fresh moments; policy_lift."""
    seed = args.seed + 1  # not the moments of the logs above
    policies = standard_policies(scorer, seed)
    if args.epsilon > 0:
        policies[target.name] = target
    policies["oracle-observable"] = ObservableOraclePolicy()
    comparison = compare_policies(policies, seed, args.moments)
    print(f"on the simulator: expected conversion on {args.moments:,} moments (seed {seed})")
    for name in policies:
        print(f"  {name:>17}  {comparison.conversion(name)}   lift {comparison.lift(name)}")
    lift = comparison.lift("model")
    print(f"policy_lift {lift}")
    return {
        "seed": seed,
        "moments": args.moments,
        "conversion": comparison.as_dict(),
        "model_minus_popularity": comparison.difference("model", "popularity").as_dict(),
        "policy_lift": lift.value,
        "policy_lift_ci95": [lift.lo, lift.hi],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    scorer = OnnxScorer(args.model)
    target = ModelPolicy(scorer, epsilon=args.epsilon, seed=args.seed)
    print(f"model {args.model} ({scorer.version}), acting as {target.name}")
    report: dict[str, Any] = {
        "model": str(args.model),
        "model_version": scorer.version,
        "feature_spec_hash": scorer.metadata["feature_spec_hash"],
        "target_policy": target.name,
        "seed": args.seed,
        "off_policy": off_policy(args, scorer, target),
        "simulator": on_simulator(args, scorer, target),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
