"""The offer catalog in force: its SQL lives here (functions taking a `Store` run on the store
thread). A bundle replaces the whole catalog in its own transaction (`commit=False`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.store import Offer, Store, transaction

__all__ = ["load_offers", "upsert_offers"]


def upsert_offers(store: Store, offers: Iterable[Offer], now: float, *, commit: bool = True) -> int:
    """commit=False: inside the caller's transaction (a bundle applies all or nothing)."""
    rows = [
        (
            o.id,
            o.title,
            o.body,
            o.category,
            o.discount_pct,
            json.dumps(list(o.channels)),
            json.dumps(list(o.segments)),
            json.dumps(list(o.dayparts)),
            o.priority,
            o.valid_from,
            o.valid_to,
            o.inventory,
            o.price_band,
            o.margin,
            o.price,
            now,
        )
        for o in offers
    ]
    # Plain SQL, not sqlite-utils: its helpers commit, and a bundle must apply all or nothing.
    sql = (
        "INSERT OR REPLACE INTO offers (id, title, body, category, discount_pct, channels,"
        " segments, dayparts, priority, valid_from, valid_to, inventory, price_band, margin,"
        " price, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    with transaction(store.conn, durable=False) if commit else contextlib.nullcontext():
        store.conn.executemany(sql, rows)
    return len(rows)


def load_offers(store: Store) -> list[Offer]:
    """The whole catalog, by id."""
    cursor = store.conn.execute("SELECT * FROM offers ORDER BY id")
    names = [c[0] for c in cursor.description]
    return [_offer(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def _offer(row: Mapping[str, Any]) -> Offer:
    return Offer(
        id=row["id"],
        title=row["title"],
        body=row["body"] or "",
        category=row["category"] or "",
        discount_pct=row["discount_pct"] or 0.0,
        channels=tuple(json.loads(row["channels"] or "[]")),
        segments=tuple(json.loads(row["segments"] or "[]")),
        dayparts=tuple(json.loads(row["dayparts"] or "[]")),
        priority=row["priority"] or 0,
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        inventory=row["inventory"],
        price_band=row["price_band"] or "mid",
        margin=row["margin"] or 0.0,
        price=row["price"],
    )
