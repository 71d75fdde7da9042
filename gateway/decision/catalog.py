"""The catalog a decision was made against, versioned by content and kept once per version.

A decision logs its candidates as indices into the catalog version in force (`cand`), the
greedy candidate and epsilon (from which the whole logging distribution follows), the catalog
version and the feature spec hash; `catalogs` keeps each version's offers once. With the context
(logged once per decision) that rebuilds every candidate's features exactly
(`gateway.decision.export`), at a fraction of the bytes of one feature row per candidate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.decision.features import SPEC_HASH
from gateway.store import Offer, transaction

if TYPE_CHECKING:
    from gateway.decision.engine import Outcome
    from gateway.store import Store

__all__ = [
    "CatalogCache",
    "CatalogVersion",
    "catalog_of",
    "offer_from_snapshot",
    "save_catalog",
]


def _offer_json(offer: Offer) -> dict[str, Any]:
    out = dataclasses.asdict(offer)
    for key in ("channels", "segments", "dayparts"):
        out[key] = list(out[key])
    return out


def offer_from_snapshot(data: Mapping[str, Any]) -> Offer:
    known = {f.name for f in dataclasses.fields(Offer)}
    values = {k: v for k, v in data.items() if k in known}
    for key in ("channels", "segments", "dayparts"):
        if key in values:
            values[key] = tuple(values[key])
    return Offer(**values)


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    version: str  # content hash of the offers, in order
    body: str  # JSON array of the offers, what `catalogs` keeps
    index: Mapping[str, int] = field(repr=False)  # offer id -> position

    def log_fields(self, outcome: Outcome) -> dict[str, object]:
        """What the decision log keeps of an outcome's candidates (empty without any)."""
        if not outcome.candidates:
            return {}
        return {
            "catalog": self.version,
            "spec": SPEC_HASH,
            "cand": [self.index.get(o.id, -1) for o in outcome.candidates],
            "greedy": outcome.greedy,
            "eps": outcome.epsilon,
        }


def catalog_of(offers: Sequence[Offer]) -> CatalogVersion:
    body = json.dumps([_offer_json(o) for o in offers], sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(body.encode()).hexdigest()[:16]
    return CatalogVersion(version, body, {o.id: i for i, o in enumerate(offers)})


class CatalogCache:
    """One catalog version per offers list: the journey replaces its list when offers change."""

    def __init__(self) -> None:
        self._offers: Sequence[Offer] | None = None
        self._version: CatalogVersion | None = None

    def __call__(self, offers: Sequence[Offer]) -> CatalogVersion:
        version = self._version
        if version is None or offers is not self._offers:
            version = catalog_of(offers)
            self._offers, self._version = offers, version
        return version


# The catalogs' SQL, run on the store thread.


def save_catalog(store: Store, offers: Sequence[Offer], now: float) -> str:
    """Keep this catalog's version (once); returns the version."""
    catalog = catalog_of(offers)
    with transaction(store.conn, durable=False):
        store.conn.execute(
            "INSERT OR IGNORE INTO catalogs (version, offers, created_at) VALUES (?, ?, ?)",
            (catalog.version, catalog.body, now),
        )
    return catalog.version
