"""`scripts/train_model.py --from`: a store's own export and nothing else, split by time,
off-policy estimates on the later period with a gate that refuses a model it can't vouch for."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest

from gateway.decision.engine import DecisionEngine
from gateway.decision.export import export_decisions
from gateway.runtime.config import DecisionConfig
from gateway.store import Store
from simulators.gateway_log import log_through_gateway, seed_store
from simulators.shoppers import OnnxScorer, Simulator
from tests.test_shoppers_and_model import _train_module

DECISIONS = 2500


def _export(tmp: Path, config: DecisionConfig, n: int = DECISIONS) -> Path:
    """n moments of the shopper simulator decided and logged by the gateway, then exported."""
    store = Store(tmp / "gateway.sqlite3")
    world = Simulator(3)
    seed_store(store, world, world.shoppers, 0.0)
    log_through_gateway(store, world, DecisionEngine(config, random.Random(4)), n, seed=5)
    out = io.StringIO()
    export_decisions(store.path, out, since=0.0, now=0.0)
    store.close()
    path = tmp / "decisions.jsonl"
    path.write_text(out.getvalue())
    return path


@pytest.fixture(scope="module")
def explored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway at its defaults: no model, the rules explore."""
    return _export(tmp_path_factory.mktemp("explored"), DecisionConfig())


def _train(export: Path, out: Path, *extra: str) -> int:
    train = _train_module()
    code: int = train.main(["--from", str(export), "--out", str(out), *extra])
    return code


def test_a_model_from_the_stores_own_log_is_promoted_by_the_gate(
    explored: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nba.onnx"
    assert _train(explored, out, "--min-ess", "5") == 0
    scorer = OnnxScorer(out)
    assert re.fullmatch(r"nba-\d{4}\.\d\d\.\d\d-[0-9a-f]{8}", scorer.version)
    card = (tmp_path / "nba.card.md").read_text()
    assert "Promoted" in card
    lines = explored.read_text().splitlines()[2:]  # after the header and the catalog
    times = sorted(json.loads(line)["ts"] for line in lines)
    trained = sum(t < times[int(len(times) * 0.75)] for t in times)
    assert f"trained on the {trained:,} decisions before" in card  # the earlier 75 %
    assert "Effective sample size" in card
    assert "simulator" not in card.lower()  # the data given, nothing else
    assert "offers over" not in card  # no catalog but the export's


def test_too_small_an_effective_sample_is_refused(explored: Path, tmp_path: Path) -> None:
    out = tmp_path / "nba.onnx"
    assert _train(explored, out, "--min-ess", "100000") == 3
    assert not out.exists()
    card = (tmp_path / "nba.card.md").read_text()
    assert "**Not promoted**" in card
    assert "is under 100,000" in card
    assert _train(explored, out, "--min-ess", "100000", "--force") == 0
    assert out.exists()
    assert "**Written with --force**" in (tmp_path / "nba.card.md").read_text()


def test_deterministic_logs_are_refused_whatever_their_size(tmp_path: Path) -> None:
    rules = _export(tmp_path, DecisionConfig(learning=False), n=1200)
    out = tmp_path / "nba.onnx"
    assert _train(rules, out, "--min-ess", "1") == 3
    assert not out.exists()
    assert "nothing can be evaluated off-policy" in (tmp_path / "nba.card.md").read_text()


def test_rewards_must_be_conversions(explored: Path, tmp_path: Path) -> None:
    lines = explored.read_text().splitlines()
    record = json.loads(lines[5])
    record["reward"] = 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:5], json.dumps(record), *lines[6:]]))
    with pytest.raises(SystemExit, match=r"rewards must be 0 or 1 \(a conversion\); found 2 \(1\)"):
        _train(bad, tmp_path / "nba.onnx")


def test_unknown_vocabulary_is_reported(explored: Path, tmp_path: Path) -> None:
    lines = explored.read_text().splitlines()
    record = json.loads(lines[7])
    record["context"]["zone"] = "mezzanine"
    odd = tmp_path / "odd.jsonl"
    odd.write_text("\n".join([*lines[:7], json.dumps(record), *lines[8:]]))
    _train(odd, tmp_path / "nba.onnx", "--min-ess", "5")
    assert "`zone:mezzanine` (1)" in (tmp_path / "nba.card.md").read_text()


def test_out_and_a_data_source_are_required() -> None:
    train = _train_module()
    with pytest.raises(SystemExit):
        train.parse_args(["--simulate"])  # no --out: never the shipped model by default
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x.onnx"])  # neither --from nor --simulate
