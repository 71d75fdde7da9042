"""The shopper simulator, the shipped next-best-action model and its evaluation.

The shipped `models/nba.onnx` is the one `scripts/train_model.py` writes with its defaults.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import re
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest

from gateway.decision.features import (
    CATEGORIES,
    FEATURES,
    PRICE_BANDS,
    SEGMENTS,
    SPEC,
    SPEC_HASH,
    FeatureContext,
    Weather,
)
from gateway.decision.rules import Context, choose
from simulators.evaluation import (
    Logged,
    auc,
    compare_policies,
    log_decisions,
    logging_policy,
    off_policy_estimates,
    ope_terms_from_records,
    ope_terms_from_simulator,
    policy_lift,
    read_jsonl,
    write_jsonl,
)
from simulators.shoppers import (
    MODEL_METADATA_KEYS,
    EpsilonGreedy,
    ModelContractError,
    ModelPolicy,
    Moment,
    OnnxScorer,
    OraclePolicy,
    RandomPolicy,
    RulesPolicy,
    Shopper,
    Simulator,
    catalog,
    conversion_probability,
    eligible,
)

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "nba.onnx"
CARD = REPO / "models" / "nba.card.md"


@pytest.fixture(scope="module")
def scorer() -> OnnxScorer:
    return OnnxScorer(MODEL)


@pytest.fixture(scope="module")
def lift() -> dict[str, Any]:
    """The figure scripts/bench.py reports, with every policy's conversion."""
    return policy_lift(MODEL, seed=2026, n=20_000)


def _train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_model", REPO / "scripts/train_model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_model"] = module
    spec.loader.exec_module(module)
    return module


# The simulator ----------------------------------------------------------------------------------


def test_the_catalog_covers_every_category_with_varied_offers() -> None:
    offers = catalog()
    assert 30 <= len(offers) <= 60
    assert len({o.id for o in offers}) == len(offers)
    per_category = Counter(o.category for o in offers)
    assert set(per_category) == set(CATEGORIES)
    assert min(per_category.values()) >= 3
    assert {o.price_band for o in offers} == set(PRICE_BANDS)
    assert len({o.discount_pct for o in offers}) >= 5
    targeted = [o for o in offers if o.segments]
    assert len(targeted) >= 4
    assert all(set(o.segments) <= set(SEGMENTS) for o in targeted)
    assert all(0 <= o.margin <= 1 for o in offers)


def test_moments_are_reproducible_and_spread() -> None:
    a, b = Simulator(11).moments(400), Simulator(11).moments(400)
    assert [m.ctx for m in a] == [m.ctx for m in b]
    assert [m.offers for m in a] == [m.offers for m in b]
    assert [m.ctx for m in Simulator(12).moments(5)] != [m.ctx for m in a[:5]]
    assert {m.ctx.touchpoint for m in a} == {"kiosk", "screen", "receipt", "tablet"}
    hours = {m.ctx.local_time.hour for m in a}
    assert min(hours) <= 8
    assert max(hours) >= 19
    temps = [m.ctx.weather.temp_c for m in a]
    assert min(temps) < 5
    assert max(temps) > 22
    assert any(m.ctx.weather.raining for m in a)
    assert any(m.ctx.basket for m in a)
    assert any(not m.ctx.basket for m in a)
    assert any(m.ctx.customer is not None for m in a)  # identified and consented
    assert any(m.customer is not None and m.ctx.customer is None for m in a)  # no consent
    truth = np.concatenate([m.truth for m in a])
    assert truth.min() > 0
    assert truth.max() < 1
    assert 0.01 <= float(np.median(truth)) <= 0.25


def test_eligible_offers_honour_the_hard_rules() -> None:
    for m in Simulator(13).moments(300):
        assert m.offers
        for offer in m.offers:
            assert m.ctx.touchpoint in offer.channels
            assert offer.inventory is None or offer.inventory > 0
            assert not offer.segments or m.segment in offer.segments
        if m.segment is not None:
            assert m.ctx.customer is not None
            assert m.shopper.consent
        # The wrapped rules choose what gateway.decision.rules chooses from the whole catalog.
        ctx = Context(m.now, m.ctx.local_time, m.ctx.touchpoint, m.segment)
        assert choose(catalog(), ctx).offer == m.offers[RulesPolicy.index(m)]
        assert eligible(catalog(), m.ctx.touchpoint, m.ctx.local_time, m.segment) == list(m.offers)


def _moment(
    hour: int = 15,
    temp: float = 15.0,
    basket: tuple[str, ...] = (),
    segment: str | None = None,
    raining: bool = False,
) -> Moment:
    shopper = Shopper(1, segment, member=True, consent=True, recency_days=7, frequency=4,
                      monetary=150.0)  # fmt: skip
    local = datetime(2026, 6, 3, hour, 0)  # a Wednesday
    ctx = FeatureContext(
        local_time=local,
        touchpoint="kiosk",
        zone="entrance",
        dwell_s=60,
        weather=Weather(temp, raining),
        basket=basket,
        customer=shopper.facts(),
        trend={},
    )
    now = local.replace(tzinfo=UTC).timestamp()
    offers = tuple(eligible(catalog(), "kiosk", local, segment))
    return Moment(ctx=ctx, now=now, shopper=shopper, identified=True, offers=offers)


def test_the_hidden_truth_follows_context_dependent_preferences() -> None:
    offers = {o.id: o for o in catalog()}

    def p(moment: Moment, offer_id: str) -> float:
        return conversion_probability(moment, offers[offer_id])

    assert p(_moment(temp=30), "drinks-lemonade") > 2 * p(_moment(temp=5), "drinks-lemonade")
    assert p(_moment(temp=2, raining=True), "coffee-espresso") > p(
        _moment(temp=25), "coffee-espresso"
    )
    assert p(_moment(hour=8), "coffee-espresso") > 2 * p(_moment(hour=19), "coffee-espresso")
    assert p(_moment(hour=8), "bakery-croissants") > p(_moment(hour=19), "bakery-croissants")
    assert p(_moment(hour=12), "lunch-meal-deal") > 2 * p(_moment(hour=17), "lunch-meal-deal")
    assert p(_moment(basket=("pasta",)), "sauce-tomato") > 2 * p(_moment(), "sauce-tomato")
    fan = _moment(segment="coffee-lovers")
    assert p(fan, "coffee-espresso") > 2 * p(_moment(segment="health"), "coffee-espresso")
    # Discount helps: the same offer with a bigger discount converts more.
    moment = _moment()
    base = offers["sauce-arrabbiata"]
    bigger = dataclasses.replace(base, discount_pct=40)
    assert conversion_probability(moment, bigger) > conversion_probability(moment, base)
    # The oracle picks the most likely offer.
    best = Simulator.oracle_choice(moment)
    assert conversion_probability(moment, best) == pytest.approx(float(moment.truth.max()))


def test_rewards_are_bernoulli_draws_of_the_truth() -> None:
    moment = _moment(hour=8, segment="coffee-lovers")
    offer = next(o for o in moment.offers if o.id == "coffee-espresso")
    rng = np.random.default_rng(3)
    draws = [Simulator.reward(moment, offer, rng) for _ in range(20_000)]
    truth = conversion_probability(moment, offer)
    assert set(draws) <= {0, 1}
    assert abs(np.mean(draws) - truth) < 4 * np.sqrt(truth * (1 - truth) / len(draws))


# The shipped model ------------------------------------------------------------------------------


def test_the_shipped_model_honours_the_contract(scorer: OnnxScorer) -> None:
    assert MODEL.stat().st_size < 2_000_000
    meta = scorer.metadata
    assert set(MODEL_METADATA_KEYS) <= set(meta)
    assert meta["feature_spec"] == SPEC["name"]
    assert meta["feature_spec_version"] == str(SPEC["version"])
    assert meta["feature_spec_hash"] == SPEC_HASH
    assert meta["producer"] == "scripts/train_model.py"
    assert re.fullmatch(r"nba-\d{4}\.\d{2}\.\d{2}-s\d+", meta["model_version"])
    assert datetime.strptime(meta["trained_at"], "%Y-%m-%dT%H:%M:%SZ")
    (inp,) = scorer.session.get_inputs()
    assert (inp.name, inp.type) == ("features", "tensor(float)")
    assert inp.shape[1] == len(FEATURES)
    assert not isinstance(inp.shape[0], int)
    outputs = {o.name: o for o in scorer.session.get_outputs()}
    assert meta["score_output"] in outputs
    assert outputs[meta["score_output"]].shape[1] == 2
    assert meta["score_column"] == "1"
    card = CARD.read_text()
    assert meta["model_version"] in card
    assert SPEC_HASH in card
    assert "policy_lift" in card


def test_scores_are_probabilities(scorer: OnnxScorer) -> None:
    moments = Simulator(21).moments(200)
    x = np.concatenate([m.features for m in moments])
    scores = scorer.scores(x)
    assert scores.shape == (len(x),)
    assert np.all(np.isfinite(scores))
    assert scores.min() >= 0
    assert scores.max() <= 1
    raw = scorer.session.run(None, {"features": x})
    probabilities = raw[[o.name for o in scorer.session.get_outputs()].index("probabilities")]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Scores rank outcomes: AUC against the truth's Bernoulli draws is well above chance.
    rng = np.random.default_rng(0)
    truth = np.concatenate([m.truth for m in moments])
    assert auc(rng.random(len(truth)) < truth, scores) > 0.7


def test_a_model_off_the_contract_is_refused(tmp_path: Path) -> None:
    proto = onnx.load(str(MODEL))
    for prop in proto.metadata_props:
        if prop.key == "feature_spec_hash":
            prop.value = "0000000000000000"
    with pytest.raises(ModelContractError, match="trained on feature spec '0000000000000000'"):
        OnnxScorer(proto.SerializeToString())
    proto = onnx.load(str(MODEL))
    kept = [p for p in proto.metadata_props if p.key != "trained_at"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    with pytest.raises(ModelContractError, match="'trained_at' missing"):
        OnnxScorer(proto.SerializeToString())
    (tmp_path / "corrupt.onnx").write_bytes(MODEL.read_bytes()[:5000])
    with pytest.raises(ModelContractError):
        OnnxScorer(tmp_path / "corrupt.onnx")


def test_the_model_beats_popularity_by_more_than_its_confidence_interval(
    lift: dict[str, Any],
) -> None:
    conversion = lift["conversion"]
    model_lo = conversion["model"]["ci95"][0]
    popularity_hi = conversion["popularity"]["ci95"][1]
    assert model_lo > popularity_hi, conversion
    paired = lift["model_minus_popularity"]
    margin, (lo, hi) = paired["value"], paired["ci95"]
    assert lo > 0
    assert margin > (hi - lo) / 2
    assert conversion["model"]["value"] > conversion["rules"]["value"]
    assert conversion["oracle"]["value"] >= conversion["model"]["value"]


def test_policy_lift_reaches_the_target(lift: dict[str, Any]) -> None:
    assert lift["policy_lift"] >= 0.7, lift
    lo, hi = lift["policy_lift_ci95"]
    assert lo <= lift["policy_lift"] <= hi
    assert hi - lo < 0.05


# Policies and off-policy evaluation -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "rules"])
def test_epsilon_greedy_propensities_sum_to_one_and_match_choices(
    scorer: OnnxScorer, kind: str
) -> None:
    epsilon = 0.3
    policy = (
        ModelPolicy(scorer, epsilon=epsilon, seed=5)
        if kind == "model"
        else EpsilonGreedy(RulesPolicy(), epsilon, seed=5)
    )
    moments = Simulator(31).moments(50)
    batched = policy.distributions(moments)
    for moment, p in zip(moments, batched, strict=True):
        np.testing.assert_allclose(policy.distribution(moment), p)
        assert p.sum() == pytest.approx(1.0)
        k = len(moment.offers)
        assert p.max() == pytest.approx(1 - epsilon + epsilon / k)
        assert p.min() == pytest.approx(epsilon / k)
    moment = moments[0]
    p = policy.distribution(moment)
    draws = 20_000
    counts: Counter[str] = Counter()
    for _ in range(draws):
        offer, propensity = policy(moment)
        assert propensity == pytest.approx(p[moment.offers.index(offer)])
        counts[offer.id] += 1
    for offer, q in zip(moment.offers, p, strict=True):
        assert abs(counts[offer.id] / draws - q) < 4 * np.sqrt(q * (1 - q) / draws) + 1e-9


def test_deterministic_policies_choose_with_propensity_one(scorer: OnnxScorer) -> None:
    for moment in Simulator(32).moments(20):
        for policy in (RulesPolicy(), OraclePolicy(), ModelPolicy(scorer)):
            offer, propensity = policy(moment)
            assert propensity == 1.0
            assert offer in moment.offers
        offer, propensity = RandomPolicy(1)(moment)
        assert propensity == pytest.approx(1 / len(moment.offers))
        assert Simulator.oracle_choice(moment) == OraclePolicy()(moment)[0]


def test_ips_and_snips_recover_the_true_value_of_policies(scorer: OnnxScorer) -> None:
    logging = logging_policy(0.5, seed=41)
    n = 8000
    # The logging policy itself, and two others, from the same logged decisions.
    for target, seed in ((logging, 41), (RulesPolicy(), 42), (ModelPolicy(scorer), 43)):
        terms = ope_terms_from_simulator(
            target, logging, Simulator(seed), n, seed=seed, reward_model=scorer
        )
        estimates = off_policy_estimates(terms)
        truth = terms.true_value()
        assert truth is not None
        for name in ("ips", "snips", "dr"):
            e = estimates[name]
            assert e.lo <= truth.value <= e.hi, (target.name, name, e, truth)
        if target is logging:
            # On fresh moments too: the logging policy's true conversion on the simulator.
            fresh = compare_policies({"logging": logging}, seed=99, n=5000).conversion("logging")
            for name in ("ips", "snips"):
                e = estimates[name]
                assert e.lo - fresh.half_width <= fresh.value <= e.hi + fresh.half_width


def test_logged_decisions_round_trip_as_json_lines(scorer: OnnxScorer, tmp_path: Path) -> None:
    sim = Simulator(51)
    records = [
        Logged(m.features, i, p, float(r), tuple(o.id for o in m.offers))
        for m, i, p, r in log_decisions(sim, logging_policy(0.5, 51), 300, seed=51)
    ]
    path = tmp_path / "decisions.jsonl"
    with path.open("w") as out:
        assert write_jsonl(records, out) == 300
    back = list(read_jsonl(path))
    assert len(back) == 300
    for a, b in zip(records, back, strict=True):
        np.testing.assert_allclose(a.features, b.features, atol=1e-6)
        assert (a.chosen, a.propensity, a.reward, a.offers) == (
            b.chosen,
            b.propensity,
            b.reward,
            b.offers,
        )
    terms = ope_terms_from_records(back, scorer, reward_model=scorer)
    greedy = [int(np.argmax(scorer.scores(r.features))) for r in back]
    manual = np.mean(
        [(g == r.chosen) / r.propensity * r.reward for g, r in zip(greedy, back, strict=True)]
    )
    assert off_policy_estimates(terms)["ips"].value == pytest.approx(manual)
    bad = io.StringIO('{"features": [[1, 2]], "chosen": 0, "propensity": 1, "reward": 0}\n')
    (tmp_path / "bad.jsonl").write_text(bad.getvalue())
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        list(read_jsonl(tmp_path / "bad.jsonl"))


# Training -------------------------------------------------------------------------------------


def test_training_is_reproducible_and_exports_the_contract() -> None:
    train = _train_module()
    data = train.simulate(4000, seed=5, epsilon=0.5)
    assert data.features.shape == (4000, len(FEATURES))
    assert np.all((data.propensity > 0) & (data.propensity <= 1))
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = train.export(train.fit(data, 5, max_iter=30), 5, at, data.features[:500])
    second = train.export(train.fit(data, 5, max_iter=30), 5, at, data.features[:500])
    x = np.concatenate([m.features for m in Simulator(61).moments(100)])
    a, b = OnnxScorer(first), OnnxScorer(second)
    np.testing.assert_array_equal(a.scores(x), b.scores(x))
    version = a.metadata["model_version"]
    assert re.fullmatch(r"nba-2026\.01\.02-[0-9a-f]{8}", version)  # date and graph hash
    assert OnnxScorer(second).version == version  # the same model, the same version
    assert a.metadata["trained_at"] == "2026-01-02T03:04:05Z"
    assert a.metadata["feature_spec_hash"] == SPEC_HASH
    other = train.export(train.fit(data, 6, max_iter=30), 6, at, data.features[:500])
    assert not np.array_equal(OnnxScorer(other).scores(x), a.scores(x))
    assert OnnxScorer(other).version != version  # trained the same day: another version


def test_the_training_script_trains_from_a_json_lines_export(tmp_path: Path) -> None:
    train = _train_module()
    export = tmp_path / "logs.jsonl"
    data = train.simulate(1500, seed=8, epsilon=0.5, export=export)
    out = tmp_path / "m.onnx"
    args = ["--from", str(export), "--out", str(out), "--min-ess", "1"]
    assert train.main(args) == 0
    scorer = OnnxScorer(out)
    assert scorer.metadata["feature_spec_hash"] == SPEC_HASH
    card = (tmp_path / "m.card.md").read_text()
    assert "trained on the 1,125 decisions before line 1,125" in card  # the earlier 75 %
    assert "Effective sample size" in card
    assert "policy_lift" not in card  # the data given only: no simulator
    assert len(data) == 1500
