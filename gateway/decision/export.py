"""The decision log as training data: `store-gateway export-decisions` writes it, training
(`scripts/train_model.py --from`) and the box's own promotion gate read it back.

Streaming JSON lines (schema in docs/decision.md), one object per line, in time order:

    {"format": "store-gateway-decisions", "version": 1, "feature_spec_hash": ..., ...}
    {"catalog": "<version>", "offers": [{offer}, ...]}       once, before its first decision
    {"id": ..., "ts": ..., "touchpoint": ..., "policy": ..., "arm": ..., "model": ...,
     "context": {...}, "catalog": "<version>", "cand": [i, ...], "chosen": j,
     "greedy": g, "eps": e, "propensity": p, "reward": r}

`cand` indexes the catalog's offers (the eligible candidates after the rules and caps);
`chosen` and `greedy` index `cand`; the logging policy gave candidate j the probability
eps / len(cand), plus 1 - eps if j == greedy. Only decisions whose reward is known (joined, or
its window closed) are written; no customer reference ever is. Reading rebuilds each candidate's
feature row exactly as the gateway built it (`featurize(context, offers)`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.decision.catalog import offer_from_snapshot
from gateway.decision.features import (
    SPEC_HASH,
    context_from_json,
    featurize,
    unknown_vocabulary,
)
from gateway.decision.policy import distribution
from gateway.store import Offer

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "FORMAT",
    "ExportError",
    "ExportStats",
    "Exported",
    "export_decisions",
    "read_export",
]

FORMAT = "store-gateway-decisions"
VERSION = 1
_CONTEXT_KEYS = (
    "local_time",
    "touchpoint",
    "zone",
    "dwell_s",
    "weather",
    "basket",
    "customer",
    "trend",
)


@dataclass
class ExportStats:
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why a decision was left out
    catalogs: int = 0


def _line(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"


def export_decisions(
    database: Path, out: TextIO, *, since: float, now: float, batch: int = 2000
) -> ExportStats:
    """Stream the decisions logged since `since` (rewards known) to `out`; read-only."""
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    stats = ExportStats()
    catalogs: dict[str, list[str]] = {}  # version -> offer ids, once written
    try:
        out.write(
            _line(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "feature_spec_hash": SPEC_HASH,
                    "since": since,
                    "exported_at": now,
                }
            )
        )
        cursor = conn.execute(
            "SELECT id, ts, touchpoint, policy, offer_id, propensity, model_version, reward,"
            " context FROM decisions WHERE ts >= ? ORDER BY ts",
            (since,),
        )
        while rows := cursor.fetchmany(batch):
            for row in rows:
                _export_one(conn, row, out, stats, catalogs)
    finally:
        conn.close()
    return stats


def _unusable(offer_id: str | None, reward: float | None, logged: Mapping[str, Any]) -> str | None:
    """Why a decision can't be training data, or None."""
    if offer_id is None:
        return "no offer"
    if reward is None:
        return "reward window still open"
    if "cand" not in logged:
        return "no candidates logged"  # before issue 17, reminders
    if logged.get("spec") != SPEC_HASH:
        return "another feature spec"
    return None


def _export_one(
    conn: sqlite3.Connection,
    row: tuple[Any, ...],
    out: TextIO,
    stats: ExportStats,
    catalogs: dict[str, list[str]],
) -> None:
    decision_id, ts, touchpoint, policy, offer_id, propensity, model, reward, context = row
    logged = json.loads(context) if context else {}
    skip = _unusable(offer_id, reward, logged)
    if skip is not None:
        stats.skipped[skip] += 1
        return
    version = logged["catalog"]
    ids = catalogs.get(version)
    if ids is None:
        found: tuple[str] | None = conn.execute(
            "SELECT offers FROM catalogs WHERE version = ?", (version,)
        ).fetchone()
        if found is None:
            stats.skipped["catalog not kept"] += 1
            return
        offers = json.loads(found[0])
        out.write(_line({"catalog": version, "offers": offers}))
        ids = catalogs[version] = [o["id"] for o in offers]
        stats.catalogs += 1
    cand: list[int] = logged["cand"]
    if any(not 0 <= i < len(ids) for i in cand):
        stats.skipped["candidates do not match the catalog"] += 1
        return
    chosen = next((j for j, i in enumerate(cand) if ids[i] == offer_id), None)
    if chosen is None:
        stats.skipped["candidates do not match the catalog"] += 1
        return
    record = {
        "id": decision_id,
        "ts": ts,
        "touchpoint": touchpoint,
        "policy": policy,
        "arm": logged.get("arm"),
        "model": model,
        # Compact: what is absent reads back as its default (no customer, no trend, ...).
        "context": {k: logged[k] for k in _CONTEXT_KEYS if logged.get(k) not in (None, {}, [])},
        "catalog": version,
        "cand": cand,
        "chosen": chosen,
        "greedy": logged.get("greedy", chosen),
        "eps": logged.get("eps", 0.0),
        "propensity": round(propensity, 8),
        "reward": reward,
    }
    out.write(_line({k: v for k, v in record.items() if v is not None}))
    stats.written += 1


# --------------------------------------------------------------------------------------------
# Reading an export back


@dataclass(frozen=True, slots=True)
class Exported:
    """One decision of an export, its candidates' feature rows rebuilt."""

    id: str
    ts: float
    touchpoint: str
    policy: str
    features: npt.NDArray[np.float32]  # [k, len(FEATURES)]
    offers: tuple[Offer, ...]  # the candidates
    chosen: int
    propensity: float
    probabilities: tuple[float, ...]  # the logging policy's, per candidate
    reward: float
    model: str | None = None


class ExportError(ValueError):
    """An export that can't be read; the message names the line."""


def read_export(
    lines: Sequence[str] | TextIO | Path, vocabulary: Counter[str] | None = None
) -> Iterator[Exported]:
    """The decisions of an export, in its order; `vocabulary` counts values the feature spec
    does not know (they become zeros, or zone 'other'), e.g. 'zone:mezzanine'."""
    if isinstance(lines, Path):
        with lines.open(encoding="utf-8") as handle:
            yield from read_export(handle, vocabulary)
        return
    catalogs: dict[str, list[Offer]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if "format" in data:
                if data["format"] != FORMAT:
                    raise ExportError(f"not a decision export ({data['format']!r})")
                if data.get("feature_spec_hash") != SPEC_HASH:
                    raise ExportError(
                        f"exported with feature spec {data.get('feature_spec_hash')!r},"
                        f" this code has {SPEC_HASH!r}"
                    )
                continue
            if "offers" in data and "catalog" in data and "id" not in data:
                catalogs[data["catalog"]] = [offer_from_snapshot(o) for o in data["offers"]]
                continue
            yield _decision(data, catalogs, vocabulary)
        except ExportError as exc:
            raise ExportError(f"line {number}: {exc}") from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ExportError(f"line {number}: {type(exc).__name__}: {exc}") from None


def _decision(
    data: Mapping[str, Any], catalogs: Mapping[str, list[Offer]], vocabulary: Counter[str] | None
) -> Exported:
    catalog = catalogs.get(data["catalog"])
    if catalog is None:
        raise ExportError(f"catalog {data['catalog']!r} is not in the export before its use")
    offers = tuple(catalog[i] for i in data["cand"])
    ctx = context_from_json(data["context"])
    if vocabulary is not None:
        vocabulary.update(unknown_vocabulary(ctx, offers))
    k, chosen, greedy, eps = len(offers), int(data["chosen"]), int(data["greedy"]), data["eps"]
    if not 0 <= chosen < k or not 0 <= greedy < k:
        raise ExportError(f"chosen {chosen} / greedy {greedy} not among {k} candidates")
    propensity = float(data["propensity"])
    if not 0 < propensity <= 1:
        raise ExportError(f"propensity {propensity} is not in (0, 1]")
    return Exported(
        id=str(data["id"]),
        ts=float(data["ts"]),
        touchpoint=str(data["touchpoint"]),
        policy=str(data["policy"]),
        features=featurize(ctx, offers),
        offers=offers,
        chosen=chosen,
        propensity=propensity,
        probabilities=tuple(distribution(k, greedy, float(eps))),
        reward=float(data["reward"]),
        model=data.get("model"),
    )
