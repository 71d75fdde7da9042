"""`scripts/bench.py learn`: does the gateway learn from its own log, in two shopper worlds?

For each world (`own`: simulators/shoppers.py, the world the project was built on; `second`:
simulators/world2.py, built unlike it), the whole loop, with the gateway at its defaults:

1. the gateway serves with no model (the rules, explored: `decision.exploration` 0.2) and logs
   `weeks` of moments through its real decide path into a SQLite store; rewards are drawn from
   the world's hidden truth for what it chose (simulators/gateway_log.py);
2. `export-decisions` writes the log (`export_mb_per_1k`);
3. `train_model.py --from` trains on the earlier 75 % and estimates off-policy on the rest
   (`learn_ess_share_*`: effective sample / explored decisions of the later period;
   `learn_promoted_*`: whether its gate would promote);
4. the promotion gate of the box judges the model on the box's log (`learn_gate_*`: 1 promote,
   0 wait, -1 refuse); the model is installed and the gateway serves again with exploration:
   `learn_served_conversion_*` against `learn_logged_conversion_*` (what the rules period got);
5. lifts, on fresh moments of the training period (another stream of the same world) and, for
   the second world, four weeks after it: (policy - random) / (oracle - random), the policy
   choosing from the gateway's own view of the moment (what it would serve, no exploration):
   `learn_lift_own`, `learn_lift_second`, `learn_lift_second_later`, the rules beside each
   (`learn_rules_lift_*`); and the margin a decision earns, the model ranking by conversion and
   by P x margin (`learn_margin_per_decision_*`).
6. for the second world, what 1.0 can mean from the gateway's view: the *observable oracle*
   (`SecondWorld.observable_probabilities`: the truth averaged over the hidden type, habits
   and weather, given what the gateway sees) on every 5th moment of each period:
   `learn_observable_lift_second`, `learn_observable_lift_second_later`. No model trained on
   the gateway's features can beat it in expectation; the gap to 1.0 is hidden from the box.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.decision.engine import DecisionEngine
from gateway.decision.export import export_decisions
from gateway.decision.features import featurize
from gateway.decision.model import Scorer
from gateway.decision.promotion import judge_log
from gateway.decision.value import offer_value
from gateway.runtime.config import DecisionConfig
from gateway.store import Offer, Store
from simulators.gateway_log import World, gateway_view, log_through_gateway, seed_store
from simulators.shoppers import Moment, RulesPolicy, Simulator
from simulators.world2 import SecondWorld

Figures = dict[str, float]
PER_WEEK = 2500


def _say(message: str) -> None:
    print(message, flush=True)


Truth = Callable[[Moment, Sequence[Offer]], Any]


def lifts(moments: Sequence[Moment], truth: Truth, scorer: Scorer) -> dict[str, float]:
    """Expected conversion and margin per decision of random, rules, model, oracle."""
    rows: dict[str, list[float]] = {
        k: [] for k in ("random", "rules", "model", "oracle", "margin_rules", "margin_model")
    }
    rows["margin_model_value"] = []
    for moment in moments:
        if not moment.offers:
            continue
        t = np.asarray(truth(moment, moment.offers))
        margin = np.asarray([offer_value(o, "margin") for o in moment.offers])
        p = scorer.score(featurize(gateway_view(moment), moment.offers))
        rules = RulesPolicy.index(moment)
        model = int(np.argmax(p))
        by_value = int(np.argmax(p * margin))
        rows["random"].append(float(t.mean()))
        rows["rules"].append(float(t[rules]))
        rows["model"].append(float(t[model]))
        rows["oracle"].append(float(t.max()))
        rows["margin_rules"].append(float(t[rules] * margin[rules]))
        rows["margin_model"].append(float(t[model] * margin[model]))
        rows["margin_model_value"].append(float(t[by_value] * margin[by_value]))
    mean = {k: float(np.mean(v)) for k, v in rows.items()}
    span = mean["oracle"] - mean["random"]
    return mean | {
        "lift_model": (mean["model"] - mean["random"]) / span,
        "lift_rules": (mean["rules"] - mean["random"]) / span,
    }


def observable_lift(moments: Sequence[Moment], world: SecondWorld, stride: int = 5) -> float:
    """The observable oracle's lift on every `stride`-th moment with offers (see the top)."""
    got = rand = best = 0.0
    for moment in [m for m in moments if m.offers][::stride]:
        t = world.conversion_probabilities(moment, moment.offers)
        seen = world.observable_probabilities(moment, moment.offers)
        got += float(t[int(np.argmax(seen))])
        rand += float(t.mean())
        best += float(t.max())
    return (got - rand) / (best - rand)


def _truth(world: World) -> Truth:
    if isinstance(world, SecondWorld):
        return world.conversion_probabilities
    return lambda moment, _offers: moment.truth  # the first world's, cached on the moment


def loop(name: str, world: World, fresh: World, later: World | None, weeks: float) -> Figures:
    """The whole loop on one world (see the module's docstring)."""
    import train_model  # scripts/train_model.py, beside this file (needs the train extra)

    figures: Figures = {}
    n = int(weeks * PER_WEEK)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        store = Store(directory / "gateway.sqlite3")
        seed_store(store, world, world.shoppers, 0.0)
        engine = DecisionEngine(DecisionConfig(), random.Random(1))
        started = time.monotonic()
        log_through_gateway(store, world, engine, n, seed=2)
        _say(f"  {name}: {n:,} moments logged in {time.monotonic() - started:.0f} s")
        logged = store.conn.execute(
            "SELECT avg(reward) FROM decisions WHERE reward IS NOT NULL"
        ).fetchone()[0]
        export = directory / "decisions.jsonl"
        with export.open("w", encoding="utf-8") as out:
            stats = export_decisions(store.path, out, since=0.0, now=0.0)
        figures["export_mb_per_1k"] = export.stat().st_size / 1e6 / stats.written * 1000
        model = directory / "nba.onnx"
        args = train_model.parse_args(["--from", str(export), "--out", str(model), "--force"])
        learned = train_model.learn_from_logs(args)
        figures[f"learn_promoted_{name}"] = 1.0 if learned.promoted else 0.0
        figures[f"learn_ess_share_{name}"] = learned.ope.ess_share
        figures[f"learn_ess_{name}"] = learned.ope.ess
        scorer = Scorer.load(model)
        verdict = judge_log(
            store.path,
            scorer.score,
            since=0.0,
            now=time.time(),
            objective="conversion",
            min_ess=200.0,
            margin=0.05,
        )
        figures[f"learn_gate_{name}"] = {"promote": 1.0, "wait": 0.0, "refuse": -1.0}[
            verdict.outcome
        ]
        _say(f"  {name}: the box's gate: {verdict.outcome} ({verdict.reason})")
        engine.install(scorer, replay=[])
        served_from = store.conn.execute("SELECT max(rowid) FROM decisions").fetchone()[0]
        log_through_gateway(store, world, engine, n // 4, seed=3)
        served = store.conn.execute(
            "SELECT avg(reward) FROM decisions WHERE rowid > ? AND reward IS NOT NULL",
            (served_from,),
        ).fetchone()[0]
        figures[f"learn_logged_conversion_{name}"] = float(logged)
        figures[f"learn_served_conversion_{name}"] = float(served)
        store.close()
    moments = fresh.moments(min(n, 20_000))
    period = lifts(moments, _truth(fresh), scorer)
    if isinstance(fresh, SecondWorld):
        figures[f"learn_observable_lift_{name}"] = observable_lift(moments, fresh)
    figures[f"learn_lift_{name}"] = period["lift_model"]
    figures[f"learn_rules_lift_{name}"] = period["lift_rules"]
    for key in ("margin_rules", "margin_model", "margin_model_value"):
        figures[f"learn_{key}_per_decision_{name}"] = period[key]
    if later is not None:
        later_moments = later.moments(4 * PER_WEEK)
        after = lifts(later_moments, _truth(later), scorer)
        if isinstance(later, SecondWorld):
            figures[f"learn_observable_lift_{name}_later"] = observable_lift(later_moments, later)
        figures[f"learn_lift_{name}_later"] = after["lift_model"]
        figures[f"learn_rules_lift_{name}_later"] = after["lift_rules"]
    return figures


def bench_learn(quick: bool) -> Figures:
    weeks = 2.0 if quick else 8.0
    figures: Figures = {}
    own = loop("own", Simulator(21), Simulator(22), None, weeks)
    later = SecondWorld(11, stream=2)
    later.skip_weeks(weeks + 4)
    second = loop("second", SecondWorld(11), SecondWorld(11, stream=1), later, weeks)
    figures.update(own)
    figures.update(second)
    figures["export_mb_per_1k"] = max(own["export_mb_per_1k"], second["export_mb_per_1k"])
    return figures
