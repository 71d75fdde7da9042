"""The decision engine: golden features, hard rules, propensities, models refused, swapped,
rolled back, all with real onnxruntime on model files built here."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.decision import Context
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.experiments import in_holdout, switchback_arm
from gateway.decision.features import (
    FEATURES,
    SPEC_HASH,
    CustomerFacts,
    FeatureContext,
    Weather,
    context_from_json,
    context_to_json,
    featurize,
)
from gateway.decision.model import ModelError, Scorer
from gateway.decision.policy import epsilon_greedy, propensities
from gateway.runtime.config import DecisionConfig
from gateway.store import Offer

MORNING = datetime(2026, 11, 23, 8, 30)  # a Monday
NOW = MORNING.timestamp()


def make_model(
    path: Path, weights: np.ndarray | None = None, *, spec: str = SPEC_HASH, version: str = "test-1"
) -> Path:
    """A logistic model over the feature spec: sigmoid(features . w)."""
    w = np.zeros((len(FEATURES), 1), dtype=np.float32) if weights is None else weights
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "nba",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        "feature_spec_hash": spec,
        "model_version": version,
        "trained_at": "2026-11-23T00:00:00Z",
        "score_output": "score",
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def _weights(**by_name: float) -> np.ndarray:
    w = np.zeros((len(FEATURES), 1), dtype=np.float32)
    for name, value in by_name.items():
        w[FEATURES.index(name), 0] = value
    return w


OFFERS = [
    Offer("COFFEE", "Flat white", category="coffee", discount_pct=20, price_band="low", margin=0.6),
    Offer("SAUCE", "Pasta sauce", category="sauce", discount_pct=10, price_band="mid", margin=0.3),
    Offer("DRINK", "Cold drink", category="drinks", discount_pct=0, inventory=40),
    Offer("VIP", "Members only", category="deli", segments=("value",)),
    Offer("GONE", "Sold out", category="snacks", inventory=0),
]


def _ctx(segment: str | None = None) -> Context:
    return Context(now=NOW, local_time=MORNING, channel="kiosk", segment=segment)


def _features(customer: CustomerFacts | None = None) -> FeatureContext:
    return FeatureContext(
        local_time=MORNING,
        touchpoint="kiosk",
        zone="coffee",
        dwell_s=300,
        weather=Weather(30.0, raining=True),
        basket=("pasta",),
        customer=customer,
        trend={"sauce": 0.25},
    )


def _decide(
    engine: DecisionEngine,
    *,
    customer: str | None = "c_1",
    segment: str | None = None,
    seen: dict[str, int] | None = None,
    here: dict[str, int] | None = None,
) -> Outcome:
    facts = CustomerFacts(segment) if customer and segment else None
    return engine.decide(
        OFFERS,
        _ctx(segment),
        _features(facts),
        customer_ref=customer,
        touchpoint_id="k1",
        customer_counts=seen or {},
        touchpoint_counts=here or {},
    )


def test_golden_features_for_a_fixed_context() -> None:
    customer = CustomerFacts(segment="value", recency_days=45, frequency=40, monetary=250)
    matrix = featurize(_features(customer), OFFERS[:3])
    assert matrix.shape == (3, len(FEATURES))
    assert matrix.dtype == np.float32
    row = dict(zip(FEATURES, matrix[1].tolist(), strict=True))  # the sauce offer
    nonzero = {k: round(v, 4) for k, v in row.items() if v != 0}
    hour = 8.5
    assert nonzero == {
        "hour_sin": round(math.sin(2 * math.pi * hour / 24), 4),
        "hour_cos": round(math.cos(2 * math.pi * hour / 24), 4),
        "dow_cos": 1.0,  # Monday: sin 0, cos 1
        "temp_c_30": 1.0,
        "raining": 1.0,
        "zone_coffee": 1.0,
        "dwell_min_30": round(5 / 30, 4),
        "touchpoint_kiosk": 1.0,
        "basket_pasta": 1.0,
        "identified": 1.0,
        "segment_value": 1.0,
        "recency_90": 0.5,
        "frequency_20": 1.0,  # clipped
        "monetary_500": 0.5,
        "offer_sauce": 1.0,
        "discount": 0.1,
        "price_mid": 1.0,
        "margin": 0.3,
        "inventory_100": 1.0,  # untracked inventory counts as available
        "complements_basket": 1.0,  # pasta in the basket
        "category_trend": 0.25,
    }
    anonymous = featurize(_features(None), OFFERS[:1])[0]
    for name in ("identified", "segment_value", "recency_90", "frequency_20", "monetary_500"):
        assert anonymous[FEATURES.index(name)] == 0.0  # nothing about a customer without consent


def test_contexts_round_trip_through_the_decision_log() -> None:
    ctx = _features(CustomerFacts(segment="health", recency_days=3))
    assert context_from_json(context_to_json(ctx)) == ctx


def test_hard_rules_exclude_out_of_stock_unconsented_and_capped() -> None:
    engine = DecisionEngine(DecisionConfig(exploration=0.0, holdout_share=0.0))
    seen = set()
    for _ in range(50):
        out = _decide(engine, customer=None)
        seen.add(out.offer.id if out.offer else None)
    assert "GONE" not in seen  # out of stock
    assert "VIP" not in seen  # targeted, and this customer gave no consent
    capped = _decide(engine, customer="c_x", seen={"COFFEE": 3, "SAUCE": 3, "DRINK": 3})
    assert capped.offer is None  # every remaining offer reached its daily cap for this customer
    busy = _decide(engine, customer=None, here={"COFFEE": 30, "SAUCE": 30})
    assert busy.offer is not None
    assert busy.offer.id == "DRINK"


def test_holdout_is_stable_and_served_without_personalisation() -> None:
    refs = [f"c_{i:032x}" for i in range(2000)]
    share = sum(in_holdout(r, 0.1) for r in refs) / len(refs)
    assert 0.08 < share < 0.12
    assert [in_holdout(r, 0.1) for r in refs] == [in_holdout(r, 0.1) for r in refs]
    engine = DecisionEngine(DecisionConfig(holdout_share=1.0))
    out = _decide(engine, segment="value")
    assert out.policy == "holdout"
    assert out.offer is not None
    assert out.offer.id != "VIP"  # the control group gets no targeted offer


def test_switchback_alternates_per_screen_and_slot() -> None:
    arms = {switchback_arm("screen-1", slot * 1800.0 + 5, 1800) for slot in range(40)}
    assert arms == {"model", "control"}
    assert switchback_arm("screen-1", 100.0, 1800) == switchback_arm("screen-1", 1700.0, 1800)


def test_propensities_sum_to_one_and_match_the_policy() -> None:
    scores = np.array([0.1, 0.7, 0.3, 0.7, 0.2])
    p = propensities(scores, 0.2)
    assert p.sum() == pytest.approx(1.0)
    assert p[1] == pytest.approx(0.8 + 0.04)
    rng = random.Random(5)
    picks = [epsilon_greedy(scores, 0.2, rng) for _ in range(40_000)]
    counts = Counter(pick.index for pick in picks)
    for index, probability in enumerate(p):
        assert counts[index] / len(picks) == pytest.approx(probability, abs=0.01)
        logged = {pk.propensity for pk in picks if pk.index == index}
        assert len(logged) == 1
        assert logged.pop() == pytest.approx(probability)


def test_the_model_decides_when_loaded(tmp_path: Path) -> None:
    scorer = Scorer.load(make_model(tmp_path / "m.onnx", _weights(offer_drinks=5.0), version="v7"))
    engine = DecisionEngine(DecisionConfig(exploration=0.0, holdout_share=0.0))
    engine.install(scorer, replay=[(_features(), OFFERS)])
    out = _decide(engine)
    assert (out.policy, out.model_version, out.offer.id if out.offer else None) == (
        "nba",
        "v7",
        "DRINK",
    )
    assert out.propensity == 1.0
    assert out.feature_hash is not None
    assert len(out.feature_hash) == 16


def test_corrupt_and_mismatched_models_are_refused_and_the_fallback_serves(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 definitely not onnx" * 10)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Scorer.load(garbage)
    with pytest.raises(ModelError, match="trained on feature spec 'ffffffffffffffff'"):
        Scorer.load(make_model(tmp_path / "old.onnx", spec="ffffffffffffffff"))
    with pytest.raises(ModelError, match="cannot read"):
        Scorer.load(tmp_path / "absent.onnx")
    engine = DecisionEngine(DecisionConfig(holdout_share=0.0))
    out = _decide(engine)
    assert out.policy == "rules"
    assert out.offer is not None


class _Failing(Scorer):
    def score(self, features: np.ndarray) -> np.ndarray:  # type: ignore[override]
        raise RuntimeError("onnxruntime went away")


def test_a_model_failing_at_run_time_is_rolled_back(tmp_path: Path) -> None:
    good = Scorer.load(make_model(tmp_path / "good.onnx", version="good"))
    loaded = Scorer.load(make_model(tmp_path / "bad.onnx", version="bad"))
    bad = _Failing(loaded.session, loaded.info, "score", None)
    engine = DecisionEngine(DecisionConfig(exploration=0.0, holdout_share=0.0))
    engine.install(good, replay=[])
    engine.scorer, engine._previous = bad, good
    out = _decide(engine)
    assert out.policy == "rules"  # this decision still got an offer
    assert engine.scorer is good
    assert engine.counters.rollbacks == 1


def test_a_model_with_bad_scores_on_the_replay_is_not_installed(tmp_path: Path) -> None:
    class Wild(Scorer):
        def score(self, features: np.ndarray) -> np.ndarray:  # type: ignore[override]
            return np.full(len(features), 7.0)

    loaded = Scorer.load(make_model(tmp_path / "m.onnx"))
    engine = DecisionEngine(DecisionConfig())
    with pytest.raises(ModelError, match="outside"):
        engine.install(Wild(loaded.session, loaded.info, "score", None), [(_features(), OFFERS)])
    assert engine.scorer is None


def test_swapping_models_under_concurrent_decisions_loses_none(tmp_path: Path) -> None:
    a = Scorer.load(make_model(tmp_path / "a.onnx", _weights(offer_coffee=4.0), version="a"))
    b = Scorer.load(make_model(tmp_path / "b.onnx", _weights(offer_drinks=4.0), version="b"))
    engine = DecisionEngine(DecisionConfig(exploration=0.1, holdout_share=0.0))
    engine.install(a, replay=[])
    results: list[str | None] = []
    stop = threading.Event()

    def decide() -> None:
        rng_ref = 0
        while not stop.is_set():
            rng_ref += 1
            out = _decide(engine, customer=f"c_{rng_ref}")
            results.append(out.model_version)

    workers = [threading.Thread(target=decide) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(100):
        engine.install(b if i % 2 == 0 else a, replay=[(_features(), OFFERS)])
        time.sleep(0.002)  # let the deciders run between swaps
    stop.set()
    for w in workers:
        w.join()
    assert len(results) > 200
    assert set(results) == {"a", "b"}  # every decision served by one model or the other
    assert engine.counters.rollbacks == 0
