"""The promotion gate (issue 17, item 6): a model from a bundle runs in shadow, and the box's own
log decides; a worse model is refused, a better one taken, each verdict an event for the cloud."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.decision.engine import DecisionEngine
from gateway.decision.manager import ModelManager
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.config import DecisionConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Store
from gateway.sync.outbox import Outbox
from simulators.gateway_log import log_through_gateway, seed_store
from simulators.shoppers import Simulator
from tests.test_decision import _weights, make_model

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "nba.onnx"  # trained on the shopper simulator: better than the rules
# The gate's settings for a small log: a test sized, not a store sized, effective sample.
GATE = DecisionConfig(promotion_min_ess=30.0, promotion_margin=0.05, promotion_window_days=400)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose rules explored uniformly: 2,500 decisions on the shopper simulator."""
    path = tmp_path_factory.mktemp("log") / "gateway.sqlite3"
    store = Store(path)
    world = Simulator(9)
    seed_store(store, world, world.shoppers, 0.0)
    engine = DecisionEngine(DecisionConfig(exploration=1.0, holdout_share=0.0), random.Random(2))
    log_through_gateway(store, world, engine, 2500, seed=3)
    store.close()
    return path


@dataclass
class Rig:
    manager: ModelManager
    engine: DecisionEngine
    db: AsyncStore
    models: Path


@pytest.fixture
async def rig(logged: Path, tmp_path: Path) -> AsyncIterator[Rig]:
    database = tmp_path / "gateway.sqlite3"
    shutil.copy(logged, database)
    db = AsyncStore(database)
    await db.open()
    # The log's decisions are dated 2026-2027 by the simulator: the gate's clock reads then.
    now = 1_800_000_000.0
    clock = TimeKeeper(wall=lambda: now, mono=time.monotonic, synchronized=lambda: True, floor=0)
    outbox = Outbox(db, "test-store", clock, Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    engine = DecisionEngine(GATE)
    models = tmp_path / "models"
    models.mkdir()
    manager = ModelManager(engine, models / "nba.onnx", None, db, outbox=outbox, now=clock.now)
    yield Rig(manager, engine, db, models)
    writer.cancel()
    await db.close()


async def _events(db: AsyncStore) -> list[dict[str, object]]:
    def read(store: Store) -> list[dict[str, object]]:
        rows = store.conn.execute("SELECT body FROM outbox WHERE type = 'model.promotion'")
        return [json.loads(body)["data"] for (body,) in rows]

    return await db.call(read)


async def test_a_better_model_is_promoted_and_serves_again_after_a_restart(rig: Rig) -> None:
    shutil.copy(SHIPPED, rig.models / "nba.onnx")
    assert "judged on the box's own log" in await rig.manager.load()
    assert rig.engine.scorer is None  # in shadow while it is judged
    assert rig.manager.judging is not None
    detail = await rig.manager.judging
    assert detail.startswith("serving: model"), detail
    assert rig.engine.scorer is not None
    assert rig.engine.shadow is None
    (verdict,) = rig.manager.verdicts
    assert verdict.outcome == "promote"
    assert verdict.ope.ess >= 30
    assert verdict.ope.value.snips.value > verdict.ope.serving.value
    (event,) = await _events(rig.db)
    assert event["outcome"] == "promote"
    assert event["model_version"] == rig.engine.scorer.info.version
    # A restart loads the same file: the gate passed it, it serves at once.
    fresh = DecisionEngine(GATE)
    again = ModelManager(fresh, rig.models / "nba.onnx", None, rig.db)
    assert (await again.load()).startswith("serving: model")
    assert again.verdicts == []
    assert again.judging is None


async def test_a_worse_model_is_refused_and_the_serving_policy_stays(
    rig: Rig, tmp_path: Path
) -> None:
    worse = make_model(tmp_path / "w.onnx", _weights(offer_household=6.0), version="household")
    shutil.copy(worse, rig.models / "nba.onnx")
    await rig.manager.load()
    assert rig.manager.judging is not None
    detail = await rig.manager.judging
    assert "model household refused" in detail
    assert rig.engine.scorer is None  # the rules still serve
    assert rig.engine.shadow is None
    assert not (rig.models / "nba.onnx").exists()
    assert (rig.models / "nba.refused.onnx").exists()  # not loaded again after a restart
    (event,) = await _events(rig.db)
    assert event["outcome"] == "refuse"


async def test_a_model_waits_in_shadow_while_the_evidence_is_thin(rig: Rig) -> None:
    rig.engine.config = replace(GATE, promotion_min_ess=1e6)
    shutil.copy(SHIPPED, rig.models / "nba.onnx")
    await rig.manager.load()
    assert rig.manager.judging is not None
    detail = await rig.manager.judging
    assert "waits for evidence" in detail
    assert rig.engine.scorer is None
    assert rig.engine.shadow is not None
    assert await _events(rig.db) == []  # only a verdict goes up
    rig.engine.config = GATE
    assert (await rig.manager.gate()).startswith("serving: model")
