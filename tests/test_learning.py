"""Learning from the store's own log (issue 17): exploration with a floor, the projected
effective sample size, value-aware ranking, and a decision log that exports to training data
whose feature rows are exactly the ones the gateway scored."""

from __future__ import annotations

import io
import json
import random
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.codecs.topics import Topics
from gateway.decision import Context
from gateway.decision.catalog import catalog_of, save_catalog
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.export import ExportError, export_decisions, read_export
from gateway.decision.features import FeatureContext, featurize
from gateway.decision.model import Scorer
from gateway.decision.offers import load_offers, upsert_offers
from gateway.decision.policy import EssMeter, distribution, harmonic_propensity
from gateway.decision.value import offer_value
from gateway.moments.decide import commit, decide
from gateway.moments.moment import KioskMoment, TabletMoment
from gateway.runtime import cli
from gateway.runtime.config import DecisionConfig
from gateway.store import Consent, Offer, Store
from simulators.shoppers import catalog
from tests.test_decision import make_model

REPO = Path(__file__).resolve().parent.parent
TOPICS = Topics("test-store")
MORNING = datetime(2026, 11, 23, 8, 30)


def _context(segment: str | None = None) -> Context:
    return Context(MORNING.timestamp(), MORNING, "kiosk", segment)


def _features() -> FeatureContext:
    return FeatureContext(local_time=MORNING, touchpoint="kiosk", zone="entrance")


def _decide(engine: DecisionEngine, offers: list[Offer], customer: str | None = "c_1") -> Outcome:
    return engine.decide(
        offers,
        _context(),
        _features(),
        customer_ref=customer,
        touchpoint_id="kiosk-1",
        customer_counts={},
        touchpoint_counts={},
    )


OFFERS = [
    Offer("A", "Latte", category="coffee", channels=("kiosk",), priority=3),
    Offer("B", "Bun", category="bakery", channels=("kiosk",), priority=2),
    Offer("C", "Soup", category="lunch", channels=("kiosk",), priority=1),
    Offer("D", "Water", category="drinks", channels=("kiosk",)),
]


# Exploration -------------------------------------------------------------------------------------


def test_a_rules_only_store_explores_with_a_floor_and_logs_true_propensities() -> None:
    engine = DecisionEngine(DecisionConfig(holdout_share=0.0), random.Random(3))
    outcomes = [_decide(engine, OFFERS) for _ in range(20_000)]
    assert {o.policy for o in outcomes} == {"rules"}
    expected = dict(zip("ABCD", distribution(4, 0, 0.2), strict=True))  # A: the rules' pick
    counts = Counter(o.offer.id for o in outcomes if o.offer is not None)
    for offer_id, p in expected.items():
        assert counts[offer_id] / len(outcomes) == pytest.approx(p, abs=0.012)
        logged = {o.propensity for o in outcomes if o.offer is not None and o.offer.id == offer_id}
        assert len(logged) == 1
        assert logged.pop() == pytest.approx(p)
    assert min(expected.values()) == pytest.approx(0.2 / 4)  # the floor: exploration / k
    first = outcomes[0]
    assert [o.id for o in first.candidates] == ["A", "B", "C", "D"]
    assert (first.greedy, first.epsilon) == (0, 0.2)


def test_the_holdout_the_control_arm_and_learning_off_never_explore() -> None:
    held = DecisionEngine(DecisionConfig(holdout_share=1.0), random.Random(1))
    off = DecisionEngine(DecisionConfig(holdout_share=0.0, learning=False), random.Random(1))
    for engine in (held, off):
        picks = {(o.offer.id if o.offer else None, o.propensity) for o in _all(engine, 300)}
        assert picks == {("A", 1.0)}
    engine = DecisionEngine(DecisionConfig(holdout_share=0.0), random.Random(1))
    control = [
        engine.decide(
            OFFERS,
            replace(_context(), now=t),
            _features(),
            customer_ref=None,
            touchpoint_id="screen-1",
            customer_counts={},
            touchpoint_counts={},
        )
        for t in np.arange(0, 1800 * 40, 1800.0 / 8)
    ]
    assert {(o.arm, o.epsilon) for o in control} == {("control", 0.0), ("model", 0.2)}
    assert all(o.propensity == 1.0 for o in control if o.arm == "control")


def _all(engine: DecisionEngine, n: int) -> list[Outcome]:
    return [_decide(engine, OFFERS) for _ in range(n)]


def test_the_projected_effective_sample_size_follows_the_floor() -> None:
    assert harmonic_propensity([0.25] * 4) == pytest.approx(0.25)
    assert harmonic_propensity([1.0, 0.0]) == 0.0  # a candidate with no chance: no evidence
    meter = EssMeter()
    for i in range(1000):  # one decision a minute: 1000 minutes seen
        meter.add(4, 1.0, 1_000_000.0 + 60 * i)  # uniform: ESS share 1/k
    now = 1_000_000.0 + 60 * 999
    ess, decisions = meter.ess(now)
    assert ess == pytest.approx(250.0)
    assert decisions == 1000
    assert meter.projected_per_week(now) == pytest.approx(250.0 * 7 * 86400 / (999 * 60))
    deterministic = EssMeter()
    for i in range(100):
        deterministic.add(4, 0.0, 1_000_000.0 + i)
    assert deterministic.ess(1_000_100.0) == (0.0, 100)
    assert meter.ess(now + 8 * 86400) == (0.0, 0)  # a week later, forgotten


def test_metrics_show_the_projected_effective_sample_size() -> None:
    from gateway.runtime.metrics import Metrics

    metrics = Metrics()
    engine = DecisionEngine(DecisionConfig(holdout_share=0.0), random.Random(1))
    metrics.decision_ess_week.set_function(
        lambda: engine.ess.projected_per_week(MORNING.timestamp())
    )
    _all(engine, 100)
    text = metrics.render().decode()
    line = next(x for x in text.splitlines() if x.startswith("gateway_decision_projected_ess_week"))
    assert float(line.split()[-1]) == pytest.approx(
        engine.ess.projected_per_week(MORNING.timestamp())
    )
    assert float(line.split()[-1]) > 0


# Value-aware ranking -----------------------------------------------------------------------------


def test_the_objective_ranks_by_probability_times_value(tmp_path: Path) -> None:
    # A flat model: every offer converts alike; the value decides.
    scorer = Scorer.load(make_model(tmp_path / "flat.onnx"))
    offers = [
        Offer("CHEAP", "x", category="coffee", channels=("kiosk",), price=2.0, margin=0.9),
        Offer(
            "DEAR",
            "y",
            category="deli",
            channels=("kiosk",),
            price=20.0,
            margin=0.05,
            discount_pct=40,
        ),
        Offer("RICH", "z", category="deli", channels=("kiosk",), price=10.0, margin=0.5),
    ]
    picks = {}
    for objective in ("conversion", "revenue", "margin"):
        config = DecisionConfig(holdout_share=0.0, exploration=0.0, objective=objective)
        engine = DecisionEngine(config)
        engine.install(scorer, replay=[])
        picks[objective] = _decide(engine, offers).offer
    assert {k: v.id if v else None for k, v in picks.items()} == {
        "conversion": "CHEAP",  # ties: the catalog's order
        "revenue": "DEAR",  # 20 x (1 - 0.4) = 12 against 10 and 2
        "margin": "RICH",  # 10 x 0.5 = 5 against 1 and 1.8
    }
    assert offer_value(offers[1], "revenue") == pytest.approx(12.0)
    assert offer_value(Offer("N", "no price"), "margin") == 1.0


# The decision log and its export -----------------------------------------------------------------


class Recording(DecisionEngine):
    """The real engine, keeping each decision's feature context and outcome."""

    def __init__(self, config: DecisionConfig) -> None:
        super().__init__(config, random.Random(5))
        self.seen: list[tuple[FeatureContext, Outcome]] = []

    def decide(self, *args: Any, **kwargs: Any) -> Outcome:
        outcome = super().decide(*args, **kwargs)
        self.seen.append((args[2], outcome))
        return outcome


def _log(store: Store, engine: Recording, n: int, t0: float) -> dict[str, tuple[Any, Outcome]]:
    """n kiosk and tablet moments decided and committed; decision id -> (features, outcome)."""
    offers = load_offers(store)
    save_catalog(store, offers, t0)
    rng = random.Random(2)
    by_id = {}
    for i in range(n):
        ref = "c_" + f"{i % 7:032x}" if i % 3 else None
        basket = tuple(rng.sample(["pasta", "coffee", "drinks", "snacks"], rng.randint(0, 2)))
        moment: Any
        if i % 5 == 4:
            moment = TabletMoment(
                touchpoint="tablet-1",
                customer_ref=ref,
                session=f"s{i}",
                associate="a_1",
                basket=basket,
                asks=("drinks",),
            )
        else:
            moment = KioskMoment(
                touchpoint="kiosk-1",
                customer_ref=ref,
                zone="entrance",
                dwell_s=rng.uniform(0, 300),
                basket=basket,
            )
        engine.seen.clear()
        plan = decide(
            store,
            moment,
            engine=engine,
            offers=offers,
            now=t0 + 97 * i,
            time_trusted=True,
            topics=TOPICS,
            uplink=None,
        )
        commit(store, [plan])
        for d in plan.decided:  # a tablet may ask the engine twice for one suggestion
            by_id[d.decision.id] = next((c, o) for c, o in engine.seen if o is d.outcome)
    return by_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state" / "gateway.sqlite3")
    upsert_offers(store, catalog(), 0.0)
    store.upsert_consents([Consent("c_" + f"{i:032x}", True, "families") for i in range(7)], 0.0)
    return store


def test_the_export_rebuilds_exactly_the_rows_the_gateway_scored(
    store: Store, tmp_path: Path
) -> None:
    engine = Recording(DecisionConfig(holdout_share=0.2))
    engine.install(Scorer.load(REPO / "models" / "nba.onnx"), replay=[])
    t0 = time.time() - 86400
    logged = _log(store, engine, 300, t0)
    rewards = {i: float(k % 4 == 0) for k, i in enumerate(logged)}
    open_one = next(iter(logged))
    store.conn.executemany(
        "UPDATE decisions SET reward = ? WHERE id = ?",
        [(r, i) for i, r in rewards.items() if i != open_one],
    )
    out = io.StringIO()
    stats = export_decisions(store.path, out, since=t0 - 1, now=t0 + 86400)
    assert stats.skipped == Counter({"reward window still open": 1})
    assert stats.catalogs == 1
    vocabulary: Counter[str] = Counter()
    exported = list(read_export(out.getvalue().splitlines(), vocabulary))
    assert len(exported) == stats.written == len(logged) - 1
    assert not vocabulary
    policies = Counter(e.policy for e in exported)
    assert set(policies) == {"nba", "rules", "holdout"}  # switchback control slots, holdout
    for e in exported:
        ctx, outcome = logged[e.id]
        assert [o.id for o in e.offers] == [o.id for o in outcome.candidates]
        assert np.array_equal(e.features, featurize(ctx, outcome.candidates))
        assert e.offers[e.chosen] == outcome.offer
        assert e.propensity == pytest.approx(outcome.propensity)
        assert e.probabilities[e.chosen] == pytest.approx(e.propensity)
        assert sum(e.probabilities) == pytest.approx(1.0)
        assert e.reward == rewards[e.id]
    assert "c_0000" not in out.getvalue()  # no customer reference leaves in an export


def test_export_refuses_another_spec_and_reports_unknown_vocabulary(store: Store) -> None:
    engine = Recording(DecisionConfig(holdout_share=0.0))
    t0 = time.time() - 3600
    _log(store, engine, 10, t0)
    store.conn.execute("UPDATE decisions SET reward = 0")
    out = io.StringIO()
    export_decisions(store.path, out, since=t0 - 1, now=t0)
    lines = out.getvalue().splitlines()
    header = json.loads(lines[0])
    with pytest.raises(ExportError, match="line 1: exported with feature spec"):
        list(read_export([json.dumps(header | {"feature_spec_hash": "0" * 16}), *lines[1:]]))
    record = json.loads(lines[2])
    record["context"]["zone"] = "mezzanine"
    vocabulary: Counter[str] = Counter()
    list(read_export([*lines[:2], json.dumps(record)], vocabulary))
    assert vocabulary == Counter({"zone:mezzanine": 1})
    with pytest.raises(ExportError, match="line 2: catalog"):
        list(read_export([lines[0], lines[2]]))


def test_a_decision_whose_catalog_was_not_kept_is_left_out(store: Store) -> None:
    engine = Recording(DecisionConfig(holdout_share=0.0))
    offers = [replace(o, price=3.0) for o in load_offers(store)]  # never saved as a catalog
    assert catalog_of(offers).version != catalog_of(load_offers(store)).version
    t0 = time.time() - 60
    plan = decide(
        store,
        KioskMoment(touchpoint="kiosk-1", customer_ref=None),
        engine=engine,
        offers=offers,
        now=t0,
        time_trusted=True,
        topics=TOPICS,
        uplink=None,
    )
    commit(store, [plan])
    store.conn.execute("UPDATE decisions SET reward = 1")
    stats = export_decisions(store.path, io.StringIO(), since=t0 - 1, now=t0)
    assert (stats.written, stats.skipped) == (0, Counter({"catalog not kept": 1}))


def test_export_decisions_command_streams_the_log(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = Recording(DecisionConfig(holdout_share=0.0))
    now = time.time()
    _log(store, engine, 20, now - 3 * 86400)  # three days ago
    recent = _log(store, engine, 20, now - 3600)  # the last hour
    store.conn.execute("UPDATE decisions SET reward = 0")
    out = tmp_path / "decisions.jsonl"
    args = [
        "export-decisions",
        "--config",
        str(REPO / "examples" / "demo.toml"),
        "--set",
        f"store.state_dir={tmp_path / 'state'}",
        "--since",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    assert f"exported {len(recent)} decisions, 1 catalog(s)" in capsys.readouterr().err
    assert {e.id for e in read_export(out)} == set(recent)


def test_offers_keep_their_price_through_the_seed_and_the_store(tmp_path: Path) -> None:
    from gateway.store import offer_from_json

    offer = offer_from_json({"id": "P", "title": "Priced", "price": 4.5, "margin": 0.3})
    assert offer.price == 4.5
    store = Store(tmp_path / "g.sqlite3")
    upsert_offers(store, [offer, Offer("U", "Unpriced")], 0.0)
    assert {o.id: o.price for o in load_offers(store)} == {"P": 4.5, "U": None}
