#!/usr/bin/env python3
"""Train the next-best-action model on logged decisions; write models/nba.onnx and its card.

    scripts/train_model.py --simulate --out models/nba.onnx [--samples N] [--seed S]
    scripts/train_model.py --from decisions.jsonl --out nba.onnx [--objective margin]

Needs the `train` extra (scikit-learn, skl2onnx, onnx):  pip install -e '.[train]'
The daemon never does: it only runs the exported ONNX file with onnxruntime.

THE MODEL CONTRACT (what gateway/decision/model.py enforces; simulators.shoppers.OnnxScorer too)
    input     exactly one, named "features", tensor(float) (float32), shape [None, len(FEATURES)]:
              one row per candidate offer, columns in gateway.decision.features.FEATURES order,
              as `featurize(ctx, offers)` builds them.
    output    the conversion probability per row, in [0, 1]: either a 2-D float tensor [N, 2]
              whose column `score_column` (here 1) is P(convert), or a [N] / [N, 1] tensor.
              Its name is in metadata `score_output`. This script writes skl2onnx's classifier
              graph with zipmap disabled: outputs "label" [N] (int64) and "probabilities" [N, 2]
              (float32); score_output = "probabilities", score_column = "1".
    metadata  ONNX metadata_props, all strings:
              feature_spec          = SPEC["name"]             ("nba-features")
              feature_spec_version  = str(SPEC["version"])
              feature_spec_hash     = SPEC_HASH                 (a model on another spec is refused)
              model_version         e.g. "nba-2026.11.23-1f0c9a3e"  (training date, the first
                                    8 hex digits of the SHA-256 of the graph: unique)
              trained_at            ISO 8601 UTC, e.g. "2026-11-23T10:00:00Z"
              score_output          the output holding the probabilities
              score_column          the column of P(convert) in a 2-D output ("" for 1-D)
              producer              "scripts/train_model.py"
    runtime   loads and runs in onnxruntime (CPU provider) with intra_op_num_threads = 1,
              inter_op_num_threads = 1 and spinning disabled; operators from the default and
              ai.onnx.ml domains only. Scoring 100 rows takes well under 1 ms (the p99 over 2000
              calls is measured below and written into the card).

Data
    --from FILE: a store's own log, and nothing else: what `store-gateway export-decisions`
    writes (docs/decision.md), or the older JSON lines of simulators/evaluation.py (one feature
    row per candidate). Split by time: the model trains on the earlier decisions and is
    evaluated off-policy on the later ones (--eval-share), with the effective sample size; the
    model file is written only when those estimates can be trusted (--min-ess, and no decision
    where the model picks what the logging policy could not): else exit 3, the card says why.
    Rewards must be 0/1 conversions; --objective revenue|margin declares the value of each
    conversion (from the offers' prices in the export), estimated beside conversion.
    --simulate: decisions logged on the shopper simulator (simulators/shoppers.py) by the
    logging policy a store runs before it has a model: epsilon-greedy around the rule-based
    policy (epsilon 0.5), which records the propensity of each choice; evaluated on the
    simulator. --export FILE writes those logs in the older format (every candidate's row).

Method
    A gradient-boosted tree classifier (HistGradientBoostingClassifier) of P(reward | features)
    on the chosen rows: a direct model. --weighting ipw trains with inverse propensity weights
    (1 / propensity, clipped at 100) instead; the card reports both, measured on the simulator,
    and why the default was chosen. Reproducible: the same seed gives the same predictions.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.decision.export import Exported, ExportError, read_export  # noqa: E402
from gateway.decision.features import (  # noqa: E402
    CATEGORIES,
    FEATURES,
    SPEC,
    SPEC_HASH,
    drop_unavailable,
    featurize,
)
from gateway.decision.offpolicy import OffPolicy  # noqa: E402
from gateway.decision.offpolicy import evaluate as evaluate_off_policy  # noqa: E402
from gateway.decision.value import OBJECTIVES  # noqa: E402
from simulators.evaluation import (  # noqa: E402
    DEFAULT_LOGGING_EPSILON,
    Comparison,
    Estimate,
    Logged,
    auc,
    compare_policies,
    effective_sample_size,
    log_decisions,
    log_loss,
    logging_policy,
    off_policy_estimates,
    ope_terms_from_simulator,
    read_jsonl,
    standard_policies,
    write_jsonl,
)
from simulators.shoppers import (  # noqa: E402
    F32,
    F64,
    ModelPolicy,
    ObservableOraclePolicy,
    OnnxScorer,
    OraclePolicy,
    RandomPolicy,
    Simulator,
    catalog,
)

try:
    import onnx
    import skl2onnx
    import sklearn
    from onnx import numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import HistGradientBoostingClassifier
except ImportError as missing:  # pragma: no cover - depends on the environment
    sys.exit(
        f"scripts/train_model.py needs the `train` extra ({missing.name} is missing):\n"
        "    pip install -e '.[train]'    (or: .venv/bin/pip install -e '.[train]')"
    )

DEFAULT_SEED = 7
DEFAULT_SAMPLES = 400_000
EVAL_SEED = 2026  # the on-simulator comparison: other moments and shoppers than training's
IPW_CLIP = 100.0  # largest inverse-propensity weight
SCORE_OUTPUT = "probabilities"
SCORE_COLUMN = "1"
PRODUCER = "scripts/train_model.py"
HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 0.15,
    "max_iter": 300,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 50,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 20,
}


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainingSet:
    """The chosen rows of logged decisions."""

    features: F32
    reward: F64
    propensity: F64
    source: str

    def __len__(self) -> int:
        return len(self.reward)


def simulate(samples: int, seed: int, epsilon: float, export: Path | None = None) -> TrainingSet:
    """`samples` decisions of the epsilon-greedy rules on Simulator(seed)."""
    sim = Simulator(seed)
    policy = logging_policy(epsilon, seed)
    features = np.empty((samples, len(FEATURES)), dtype=np.float32)
    reward = np.empty(samples, dtype=np.float64)
    propensity = np.empty(samples, dtype=np.float64)
    sink = export.open("w", encoding="utf-8") if export else None
    started = time.monotonic()
    try:
        for k, (moment, i, p, r) in enumerate(log_decisions(sim, policy, samples, seed)):
            # The simulator knows more than the live gateway: training sees what serving will.
            features[k] = drop_unavailable(featurize(moment.ctx, [moment.offers[i]]))[0]
            reward[k], propensity[k] = r, p
            if sink is not None:
                ids = tuple(o.id for o in moment.offers)
                write_jsonl([Logged(moment.features, i, p, float(r), ids)], sink)
            if (k + 1) % 50_000 == 0:
                say(f"  logged {k + 1:>8,} decisions  ({time.monotonic() - started:.0f} s)")
    finally:
        if sink is not None:
            sink.close()
    source = (
        f"simulator (simulators/shoppers.py), seed {seed}: {samples:,} decisions of the logging "
        f"policy {policy.name} (epsilon-greedy around gateway.decision.rules)"
    )
    return TrainingSet(features, reward, propensity, source)


# --------------------------------------------------------------------------------------------
# Training and export


def sample_weights(data: TrainingSet, weighting: str) -> F64 | None:
    if weighting == "direct":
        return None
    w = np.minimum(1.0 / data.propensity, IPW_CLIP)
    return np.asarray(w / w.mean(), dtype=np.float64)


def fit(
    data: TrainingSet, seed: int, weighting: str = "direct", max_iter: int | None = None
) -> HistGradientBoostingClassifier:
    params = dict(HYPERPARAMETERS)
    if max_iter is not None:
        params["max_iter"] = max_iter
    model = HistGradientBoostingClassifier(random_state=seed, **params)
    model.fit(
        data.features, data.reward.astype(np.int64), sample_weight=sample_weights(data, weighting)
    )
    return model


def _int_missing_flags() -> None:
    """skl2onnx 1.20 puts a Python bool into TreeEnsemble's integer attribute
    nodes_missing_value_tracks_true for HistGradientBoosting leaves, which onnx >= 1.19 rejects
    ("Expected an int, got a boolean"). Pass it as an int; `export` checks the ONNX
    probabilities against scikit-learn's, so a wrong conversion cannot slip through."""
    from skl2onnx.common import tree_ensemble

    add_node = tree_ensemble.add_node
    if getattr(add_node, "_ints", False):
        return

    def patched(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        flag = int(nodes_missing_value_tracks_true)
        return add_node(*args, nodes_missing_value_tracks_true=flag, **kwargs)

    patched._ints = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = patched


def export(
    model: HistGradientBoostingClassifier, seed: int, trained_at: datetime, check: F32
) -> bytes:
    """The ONNX file honouring the contract (see the top of this file)."""
    _int_missing_flags()
    onx = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.doc_string = "store-gateway next-best-action: P(convert) per candidate offer"
    metadata = {
        "feature_spec": str(SPEC["name"]),
        "feature_spec_version": str(SPEC["version"]),
        "feature_spec_hash": SPEC_HASH,
        "model_version": f"nba-{trained_at:%Y.%m.%d}-s{seed}",
        "trained_at": trained_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "score_output": SCORE_OUTPUT,
        "score_column": SCORE_COLUMN,
        "producer": PRODUCER,
    }
    del onx.metadata_props[:]
    metadata["model_version"] = f"nba-{trained_at:%Y.%m.%d}-{graph_hash(onx)[:8]}"
    for key, value in metadata.items():
        onx.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(onx)
    data: bytes = onx.SerializeToString()
    ours = OnnxScorer(data).scores(check)
    theirs = model.predict_proba(check)[:, 1]
    gap = float(np.max(np.abs(ours - theirs)))
    if gap > 1e-4:
        raise SystemExit(f"the ONNX model disagrees with scikit-learn by {gap:.2g}")
    return data


def graph_hash(model: Any) -> str:
    """A content hash of what the model computes: its operators, their attributes and its
    weights, not the names the converter makes up (they differ between two runs)."""
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(node.op_type.encode())
        for attribute in sorted(node.attribute, key=lambda a: a.name):
            digest.update(attribute.SerializeToString(deterministic=True))
    for tensor in model.graph.initializer:
        digest.update(numpy_helper.to_array(tensor).tobytes())
    return digest.hexdigest()


def scoring_p99_ms(scorer: OnnxScorer, rows: F32, calls: int = 2000) -> tuple[float, float]:
    """p50 and p99 of one onnxruntime call on `rows`, in milliseconds."""
    for _ in range(100):
        scorer.scores(rows)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        scorer.scores(rows)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# --------------------------------------------------------------------------------------------
# Evaluation and the model card


def evaluate(
    scorer: OnnxScorer,
    args: argparse.Namespace,
    training: TrainingSet,
    *,
    holdout: int,
    moments: int,
) -> dict[str, Any]:
    """Offline metrics on held-out logs, off-policy estimates, the on-simulator comparison."""
    seed, epsilon = args.seed, args.logging_epsilon
    out: dict[str, Any] = {}
    # Held-out logs: the same logging policy on another simulator seed.
    held = simulate(holdout, seed + 1, epsilon)
    sim = Simulator(seed + 1)
    target = ModelPolicy(scorer)
    terms = ope_terms_from_simulator(
        target, logging_policy(epsilon, seed + 1), sim, holdout, seed=seed + 2,
        reward_model=scorer,
    )  # fmt: skip
    out["holdout_source"] = f"simulator seed {seed + 1}, {holdout:,} logged decisions"
    p = scorer.scores(held.features)
    w = 1.0 / held.propensity
    out["offline"] = {
        "auc": auc(held.reward, p),
        "auc_ipw": auc(held.reward, p, w),
        "log_loss": log_loss(held.reward, p),
        "log_loss_ipw": log_loss(held.reward, p, w),
        "log_loss_base_rate": log_loss(held.reward, np.full_like(p, held.reward.mean())),
        "mean_predicted": float(p.mean()),
        "mean_observed": float(held.reward.mean()),
        "decisions": len(held),
    }
    out["ope"] = {k: v.as_dict() for k, v in off_policy_estimates(terms).items()}
    out["ope"]["effective_sample_size"] = effective_sample_size(terms)
    out["ope"]["logging_value"] = float(np.mean(terms.reward))
    on_logs = terms.true_value()  # the model's truth on the logged moments (simulator only)
    out["ope"]["truth"] = on_logs.as_dict() if on_logs is not None else None
    # On the simulator: the same fresh moments for every policy.
    policies = standard_policies(scorer, EVAL_SEED)
    policies["oracle-observable"] = ObservableOraclePolicy()
    comparison = compare_policies(policies, EVAL_SEED, moments)
    out["comparison"] = comparison
    return out


def _fmt(e: Estimate | dict[str, Any], digits: int = 4) -> str:
    if isinstance(e, Estimate):
        value, lo, hi = e.value, e.lo, e.hi
    else:
        value, (lo, hi) = e["value"], e["ci95"]
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass
class Trained:
    """What the card tells about one training run."""

    args: argparse.Namespace
    data: TrainingSet
    model: HistGradientBoostingClassifier
    metadata: dict[str, str]
    size: int
    train_s: float
    elapsed: float
    timing: tuple[float, float]
    results: dict[str, Any]
    ablation: dict[str, Estimate]


def card(t: Trained) -> str:
    """The model card, in Markdown."""
    args, data, meta, results = t.args, t.data, t.metadata, t.results
    c: Comparison = results["comparison"]
    off, ope = results["offline"], results["ope"]
    names = ["random", "popularity", "rules", "model", "oracle-observable", "oracle"]
    table = [f"| {n} | {_fmt(c.conversion(n))} | {_fmt(c.lift(n), 3)} |" for n in names]
    ope_rows = [f"| {k.upper()} | {_fmt(ope[k])} |" for k in ("ips", "snips", "dr") if k in ope]
    ablation = [f"| {k} | {_fmt(v, 3)} |" for k, v in t.ablation.items()]
    other = "ipw" if args.weighting == "direct" else "direct"
    out = args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out
    versions = (
        f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, "
        f"onnx {onnx.__version__}, numpy {np.__version__}"
    )
    spec = f"`{meta['feature_spec']}` v{meta['feature_spec_version']}"
    score = f"`{meta['score_output']}`: float32 [N, 2], column {meta['score_column']} = P(convert)"
    truth = c.conversion("model")
    ratio = data.propensity.max() / data.propensity.min()
    ope_truth = (
        [f"| truth: the model on the same logged moments | {ope['truth']['value']:.4f} |"]
        if ope.get("truth")
        else ["| truth | unknown (logs from a file) |"]
    )
    hidden = c.conversion("oracle").value - c.conversion("oracle-observable").value
    params = ", ".join(f"{k}={v}" for k, v in HYPERPARAMETERS.items())
    lines = [
        f"# Model card: {meta['model_version']}",
        "",
        "The next-best-action scorer of store-gateway: for each candidate offer of a moment, the",
        "probability that the shopper converts (redeems, taps, accepts). The gateway scores every",
        "eligible offer with one onnxruntime call and shows the argmax (epsilon-greedy when",
        "exploring).",
        "",
        "| | |",
        "| --- | --- |",
        f"| file | `{out}` ({t.size:,} bytes) |",
        f"| model_version | `{meta['model_version']}` |",
        f"| trained_at | `{meta['trained_at']}` |",
        f"| produced by | `{args.command}` (seed {args.seed}) |",
        f"| feature spec | {spec}, hash `{meta['feature_spec_hash']}` |",
        f"| input | `features`: float32 [N, {len(FEATURES)}], columns in `FEATURES` order |",
        f"| output | {score} (also `label` [N]) |",
        "| runtime | onnxruntime CPU, 1 intra-op and 1 inter-op thread, no spinning |",
        f"| scoring 100 rows | p50 {t.timing[0]:.3f} ms, p99 {t.timing[1]:.3f} ms"
        f" (2000 calls; {platform.machine()}, Python {platform.python_version()}) |",
        f"| libraries | {versions} |",
        "",
        "## Data",
        "",
        f"{data.source}.",
        "",
        f"Training rows: {len(data):,} (the chosen offer's row of each decision); conversion"
        f" {data.reward.mean():.4f}; propensities from {data.propensity.min():.4f} to"
        f" {data.propensity.max():.4f}. Catalog: {len(catalog())} offers over"
        f" {len(CATEGORIES)} categories.",
        "",
        "The simulator's shoppers have hidden preferences that depend on the context (morning",
        "-> coffee and bakery, lunch time -> lunch, evening -> pasta and sauce, hot weather ->",
        "drinks, cold or rain -> coffee, basket complements such as pasta -> sauce, the zone,",
        "segment affinities, discount, price band, trend), so the true best offer is known.",
        "A shopper's segment reaches the features only when they identified and consented.",
        "",
        "## Features",
        "",
        f"`gateway.decision.features` spec v{SPEC['version']} (hash `{SPEC_HASH}`):"
        f" {len(FEATURES)} columns.",
        "Context: cyclic hour and weekday, temperature, rain, zone, dwell, touchpoint, basket",
        "categories and, for a consenting customer, segment and recency / frequency / monetary.",
        "Offer: category, discount, price band, margin, inventory, complements the basket, trend.",
        "",
        "## Method",
        "",
        f"`HistGradientBoostingClassifier` ({params}, random_state={args.seed}):"
        f" {t.model.n_iter_} boosting iterations kept by early stopping, trained in"
        f" {t.train_s:.0f} s (the whole run, logging and evaluation included:"
        f" {t.elapsed:.0f} s). Weighting: **{args.weighting}**.",
        "",
        "Why: the logging policy records its propensities, so inverse propensity weighting",
        f"(1 / propensity, clipped at {IPW_CLIP:g}) could reshape the training set into the",
        "uniform choice of offers the argmax needs. But the model is a flexible model of",
        "P(convert | context, offer), not a policy: a shift between logged and other offers does",
        "not bias it where the logs cover the space, and the logging policy's epsilon"
        f" ({args.logging_epsilon:g}) covers",
        "every eligible offer. Weighting then mostly throws data away (the rules' own choices",
        f"weigh up to {ratio:.0f} times less than explored ones) and raises the variance. Measured",
        "on the same evaluation moments (policy lift, 95 % interval):",
        "",
        "| weighting | policy lift |",
        "| --- | --- |",
        *ablation,
        "",
        f"The shipped model uses `{args.weighting}`; `--weighting {other}` trains the other.",
        "Propensities stay essential downstream: off-policy evaluation (below) and the promotion",
        "of a new model rely on them.",
        "",
        "## Offline metrics (held-out logs)",
        "",
        f"Held-out: {results['holdout_source']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| AUC | {off['auc']:.4f} |",
        f"| AUC, propensity-weighted | {off['auc_ipw']:.4f} |",
        f"| log-loss | {off['log_loss']:.4f} (base rate alone: {off['log_loss_base_rate']:.4f}) |",
        f"| log-loss, propensity-weighted | {off['log_loss_ipw']:.4f} |",
        f"| mean predicted / observed | {off['mean_predicted']:.4f} / {off['mean_observed']:.4f} |",
        "",
        "Off-policy estimates of the model's conversion (greedy) from those logs (the logging",
        f"policy converted {ope['logging_value']:.4f}; effective sample size"
        f" {ope['effective_sample_size']:,.0f}), against the truth the simulator knows:",
        "",
        "| estimator | conversion [95 % CI] |",
        "| --- | --- |",
        *ope_rows,
        *ope_truth,
        "",
        "## On the simulator",
        "",
        f"Expected conversion on the same {truth.n:,} fresh moments (seed {EVAL_SEED}, other",
        "shoppers than training's); 95 % intervals over moments; lift = (policy - random) /",
        "(oracle - random). `oracle-observable` is the best any policy can do from what the",
        "features show (the truth averaged over the hidden segment's posterior): the ceiling.",
        "",
        "| policy | conversion [95 % CI] | lift [95 % CI] |",
        "| --- | --- | --- |",
        *table,
        "",
        f"**policy_lift = {_fmt(c.lift('model'), 3)}**; model - popularity (paired) ="
        f" {_fmt(c.difference('model', 'popularity'))}.",
        "",
        "## Limits",
        "",
        "- Trained and measured on a simulator whose effects are logistic and mostly additive in",
        "  the logit; real shoppers are not. The figures show the pipeline learns such effects,",
        "  not what a store will see: a store's own logs (`--from`) and off-policy evaluation",
        "  before promotion are what count.",
        f"- Hidden segments (anonymous screens, no consent) cost {hidden:.4f} of conversion that",
        "  no feature-based model can recover (oracle - oracle-observable).",
        "- It predicts conversion only: margin is a feature, not an objective. Offers outside the",
        "  catalog's ranges (discounts, new categories) are extrapolation.",
        "- Off-policy estimates are only as right as the logged propensities; deterministic",
        "  logging (propensity 1) cannot evaluate another policy.",
        "- The reward is a conversion within the reward window: nothing of later effects",
        "  (fatigue, cannibalisation).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="logged decisions")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, required=True, help="the model file to write")
    parser.add_argument("--card", type=Path, help="default: --out with .card.md")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--from", dest="from_file", type=Path, help="a decision export to learn from")
    data.add_argument("--simulate", action="store_true", help="learn on the shopper simulator")
    parser.add_argument(
        "--eval-share", type=float, default=0.25, help="--from: the later share evaluated on"
    )
    parser.add_argument(
        "--min-ess", type=float, default=500.0, help="--from: least effective sample to promote"
    )
    parser.add_argument(
        "--objective", choices=OBJECTIVES, default="conversion", help="--from: what a pick earns"
    )
    parser.add_argument(
        "--force", action="store_true", help="--from: write the model even if the gate refuses"
    )
    parser.add_argument("--export", type=Path, help="write the simulated logs as JSON lines")
    parser.add_argument("--weighting", choices=("direct", "ipw"), default="direct")
    parser.add_argument("--logging-epsilon", type=float, default=DEFAULT_LOGGING_EPSILON)
    parser.add_argument("--holdout", type=int, default=50_000, help="held-out logged decisions")
    parser.add_argument("--moments", type=int, default=20_000, help="on-simulator moments")
    parser.add_argument("--no-ablation", action="store_true", help="skip the other weighting")
    args = parser.parse_args(argv)
    args.command = " ".join(["scripts/train_model.py", *(sys.argv[1:] if argv is None else argv)])
    args.out = args.out.resolve()
    if args.card is None:
        args.card = args.out.with_name(args.out.name.removesuffix(".onnx") + ".card.md")
    return args


def ablation(
    args: argparse.Namespace, data: TrainingSet, trained_at: datetime, lift: Estimate
) -> dict[str, Estimate]:
    """The policy lift of the shipped weighting and, unless skipped, of the other one."""
    out = {args.weighting: lift}
    if args.no_ablation:
        return out
    other = "ipw" if args.weighting == "direct" else "direct"
    say(f"ablation: training with {other} weighting")
    model = fit(data, args.seed, other)
    scorer = OnnxScorer(export(model, args.seed, trained_at, data.features[:5000]))
    policies = {"random": RandomPolicy(), "model": ModelPolicy(scorer), "oracle": OraclePolicy()}
    out[other] = compare_policies(policies, EVAL_SEED, args.moments).lift("model")
    say(f"  policy_lift with {other}: {out[other]}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_file is not None:
        return train_from_logs(args)
    started = time.monotonic()
    say(f"logging {args.samples:,} decisions on the simulator (seed {args.seed})")
    data = simulate(args.samples, args.seed, args.logging_epsilon, args.export)
    say(f"  {len(data):,} decisions, conversion {data.reward.mean():.4f}")

    say(f"training ({args.weighting})")
    t0 = time.monotonic()
    model = fit(data, args.seed, args.weighting)
    train_s = time.monotonic() - t0
    say(f"  {model.n_iter_} boosting iterations in {train_s:.1f} s")

    trained_at = datetime.now(UTC).replace(microsecond=0)
    onnx_bytes = export(model, args.seed, trained_at, data.features[:5000])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(onnx_bytes)
    scorer = OnnxScorer(onnx_bytes)
    timing = scoring_p99_ms(scorer, data.features[:100])
    say(f"wrote {args.out} ({len(onnx_bytes):,} bytes); 100 rows: p99 {timing[1]:.3f} ms")

    say("evaluating")
    results = evaluate(scorer, args, data, holdout=args.holdout, moments=args.moments)
    comparison: Comparison = results["comparison"]
    for name in ("random", "popularity", "rules", "model", "oracle-observable", "oracle"):
        say(f"  {name:>17}  {comparison.conversion(name)}")
    say(f"  policy_lift {comparison.lift('model')}")
    for key in ("ips", "snips", "dr"):
        say(f"  {key.upper():>5} of the model {_fmt(results['ope'][key])}")

    weightings = ablation(args, data, trained_at, comparison.lift("model"))
    trained = Trained(
        args=args,
        data=data,
        model=model,
        metadata=dict(scorer.metadata),
        size=len(onnx_bytes),
        train_s=train_s,
        elapsed=time.monotonic() - started,
        timing=timing,
        results=results,
        ablation=weightings,
    )
    args.card.write_text(card(trained), encoding="utf-8")
    say(f"wrote {args.card} in {time.monotonic() - started:.0f} s total")
    return 0


# --------------------------------------------------------------------------------------------
# Learning from a store's own log (--from)

MIN_TRAIN = 200  # fewer decisions than this in the earlier period: nothing to learn from


def _records(path: Path, vocabulary: Counter[str] | None = None) -> Iterator[Exported]:
    """The decisions of an export; the older format (one feature row per candidate, no time)
    is read in file order, its time the line number, its logging distribution unknown."""
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), "")
    if '"format"' in first:
        yield from read_export(path, vocabulary)
        return
    for number, record in enumerate(read_jsonl(path)):
        yield Exported(
            id=str(number),
            ts=float(number),
            touchpoint="",
            policy="",
            features=record.features,
            offers=(),
            chosen=record.chosen,
            propensity=record.propensity,
            probabilities=(),
            reward=record.reward,
        )


@dataclass
class LogSummary:
    decisions: int
    cut: float  # decisions at or after it are evaluated on, not trained on
    first: float
    last: float
    rewards: Counter[float]
    vocabulary: Counter[str]
    policies: Counter[str]
    propensity_min: float
    propensity_max: float


def summarise(path: Path, eval_share: float) -> LogSummary:
    """Pass one: times, rewards, vocabulary; the time that splits training from evaluation."""
    vocabulary: Counter[str] = Counter()
    times, rewards, policies = [], Counter[float](), Counter[str]()
    low, high = 1.0, 0.0
    for record in _records(path, vocabulary):
        times.append(record.ts)
        rewards[record.reward] += 1
        policies[record.policy or "unknown"] += 1
        low, high = min(low, record.propensity), max(high, record.propensity)
    if not times:
        raise SystemExit(f"{path}: no logged decisions")
    ordered = sorted(times)
    cut = ordered[min(int(len(ordered) * (1 - eval_share)), len(ordered) - 1)]
    return LogSummary(
        len(times), cut, ordered[0], ordered[-1], rewards, vocabulary, policies, low, high
    )


def check_rewards(summary: LogSummary) -> None:
    """Rewards are 0/1 conversions; anything else is refused, never silently a 3-class model."""
    odd = sorted(r for r in summary.rewards if r not in (0.0, 1.0))
    if odd:
        shown = ", ".join(f"{r:g} ({summary.rewards[r]:,})" for r in odd[:5])
        raise SystemExit(
            f"rewards must be 0 or 1 (a conversion); found {shown}. A sale's value is not a"
            " reward: give the offers a price and pick --objective revenue or margin."
        )
    if len(summary.rewards) < 2:
        raise SystemExit("every reward is the same: nothing to learn")


def _when(ts: float) -> str:
    if ts < 10**9:  # the older format: line numbers, not times
        return f"line {ts:,.0f}"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


@dataclass
class Learned:
    """What `--from` did: the exit code, the off-policy estimates, whether it was promoted."""

    code: int
    ope: OffPolicy
    promoted: bool
    problems: list[str]


def train_from_logs(args: argparse.Namespace) -> int:
    return learn_from_logs(args).code


def learn_from_logs(args: argparse.Namespace) -> Learned:
    """Train on the earlier decisions of a store's log, evaluate off-policy on the later ones,
    and write the model only if the estimates can be trusted (or --force)."""
    started = time.monotonic()
    path: Path = args.from_file
    say(f"reading {path}")
    try:
        summary = summarise(path, args.eval_share)
    except (ExportError, ValueError) as exc:
        raise SystemExit(f"{path}: {exc}") from None
    check_rewards(summary)
    if summary.vocabulary:
        top = ", ".join(f"{k} ({n:,})" for k, n in summary.vocabulary.most_common(8))
        say(f"  unknown to the feature spec (zeros in the features): {top}")
    rows, rewards, propensities = [], [], []
    for record in _records(path):
        if record.ts < summary.cut:
            rows.append(record.features[record.chosen])
            rewards.append(record.reward)
            propensities.append(record.propensity)
    if len(rows) < MIN_TRAIN:
        raise SystemExit(f"{len(rows):,} decisions before the evaluation period: too few")
    data = TrainingSet(
        drop_unavailable(np.asarray(rows, dtype=np.float32)),
        np.asarray(rewards, dtype=np.float64),
        np.asarray(propensities, dtype=np.float64),
        f"{path}: {len(rows):,} logged decisions from {_when(summary.first)} to before"
        f" {_when(summary.cut)}",
    )
    if len(set(rewards)) < 2:
        raise SystemExit("every reward of the training period is the same: nothing to learn")
    say(f"training on {len(data):,} decisions (before {_when(summary.cut)})")
    t0 = time.monotonic()
    model = fit(data, args.seed, args.weighting)
    train_s = time.monotonic() - t0
    trained_at = datetime.now(UTC).replace(microsecond=0)
    onnx_bytes = export(model, args.seed, trained_at, data.features[:5000])
    scorer = OnnxScorer(onnx_bytes)
    later = (r for r in _records(path) if r.ts >= summary.cut)
    ope = evaluate_off_policy(later, scorer.scores, objective=args.objective)
    say(f"off-policy on the {ope.decisions:,} later decisions (ESS {ope.ess:,.0f}):")
    say(f"  conversion: logged {ope.conversion.logged}, the model (DR) {ope.conversion.dr}")
    if args.objective != "conversion":
        say(f"  {args.objective}: logged {ope.value.logged}, the model (DR) {ope.value.dr}")
    problems = ope.problems(args.min_ess)
    if ope.deterministic:
        say(f"  left out: {ope.deterministic:,} decisions logged deterministically (holdout,"
            " control slots)")  # fmt: skip
    if ope.unknown_support:
        say("  note: the log does not say which offers could have been chosen (older format)")
    for problem in problems:
        say(f"  REFUSED: {problem}")
    promoted = not problems or args.force
    if promoted:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(onnx_bytes)
        say(f"wrote {args.out} ({len(onnx_bytes):,} bytes)")
    card = card_from_logs(
        args,
        summary=summary,
        data=data,
        ope=ope,
        metadata=dict(scorer.metadata),
        problems=problems,
        promoted=promoted,
        train_s=train_s,
        iterations=int(model.n_iter_),
    )
    args.card.write_text(card, encoding="utf-8")
    say(f"wrote {args.card} in {time.monotonic() - started:.0f} s")
    return Learned(0 if promoted else 3, ope, not problems, problems)


def card_from_logs(
    args: argparse.Namespace,
    *,
    summary: LogSummary,
    data: TrainingSet,
    ope: OffPolicy,
    metadata: dict[str, str],
    problems: list[str],
    promoted: bool,
    train_s: float,
    iterations: int,
) -> str:
    """The model card of a model trained on a store's log: that data only, no simulator."""

    def rows(name: str, e: Any) -> list[str]:
        return [
            f"| {name}: the logging policy (observed) | {e.logged} |",
            f"| {name}: the model, IPS | {e.ips} |",
            f"| {name}: the model, SNIPS | {e.snips} |",
            f"| {name}: the model, DR | {e.dr} |",
        ]

    value_rows = rows(args.objective, ope.value) if args.objective != "conversion" else []
    if not promoted:
        verdict = "**Not promoted**: the model file was not written."
    elif problems:
        verdict = "**Written with --force** although the gate refused it."
    else:
        verdict = "Promoted: the gate found the estimates trustworthy."
    vocabulary = (
        ", ".join(f"`{k}` ({n:,})" for k, n in summary.vocabulary.most_common(20))
        if summary.vocabulary
        else "none"
    )
    policies = ", ".join(f"{k} {n:,}" for k, n in summary.policies.most_common())
    rewards = ", ".join(f"{k:g}: {n:,}" for k, n in sorted(summary.rewards.items()))
    lines = [
        f"# Model card: {metadata['model_version']}",
        "",
        "A next-best-action scorer trained on one store's own decision log: P(convert) per",
        "candidate offer; the gateway serves the argmax of P(convert) x the offer's value.",
        "",
        "| | |",
        "| --- | --- |",
        f"| model_version | `{metadata['model_version']}` (date and graph hash) |",
        f"| trained_at | `{metadata['trained_at']}` |",
        f"| produced by | `{args.command}` |",
        f"| feature spec | hash `{metadata['feature_spec_hash']}`, {len(FEATURES)} columns |",
        f"| method | HistGradientBoostingClassifier, {iterations} iterations, {train_s:.0f} s,"
        f" weighting {args.weighting} |",
        "",
        "## Data",
        "",
        f"{path_name(args.from_file)}: {summary.decisions:,} decisions with a known reward, from"
        f" {_when(summary.first)} to {_when(summary.last)}. Policies: {policies}. Rewards:"
        f" {rewards}. Logged propensities from {summary.propensity_min:.4f} to"
        f" {summary.propensity_max:.4f}.",
        "",
        f"Split by time: trained on the {len(data):,} decisions before {_when(summary.cut)},"
        f" evaluated on the {summary.decisions - len(data):,} from then on (the later"
        f" {args.eval_share:.0%}).",
        "",
        f"Values the feature spec does not know (they became zeros): {vocabulary}.",
        "",
        "## Off-policy estimates on the later period",
        "",
        f"On the {ope.decisions:,} explored decisions of the period (left out:"
        f" {ope.deterministic:,} logged deterministically: the holdout and the switchback's"
        " control slots, assigned by hash, not by context). Effective sample size"
        f" **{ope.ess:,.0f}** ({ope.ess_share:.1%} of them). 95 % intervals.",
        "",
        "| estimate | value [95 % CI] |",
        "| --- | --- |",
        *rows("conversion", ope.conversion),
        *value_rows,
        "",
        "## Promotion",
        "",
        verdict,
        "",
        *([f"- {p}" for p in problems] or ["- no problem found"]),
        f"- gate: an effective sample size of at least {args.min_ess:,.0f} on explored decisions.",
        "",
        "## Limits",
        "",
        "- The estimates are only as right as the logged propensities.",
        "- Later periods drift: the evaluation period is the closest to what comes next, not it.",
        "- It predicts conversion; value comes from the offers' prices (`--objective`).",
        "",
    ]
    return "\n".join(lines)


def path_name(path: Path) -> str:
    return str(path.relative_to(REPO) if path.resolve().is_relative_to(REPO) else path)


if __name__ == "__main__":
    sys.exit(main())
