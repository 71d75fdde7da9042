"""Seed files: offers and consents for development and demo stores (catalog.seed_file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.codecs.identity import customer_ref
from gateway.codecs.payloads import PayloadError, decode
from gateway.store._rows import OFFER_CHANNELS, Consent, Offer

__all__ = ["SeedError", "consent_from_json", "load_seed", "offer_from_json"]


class SeedError(ValueError):
    """The seed file cannot be used; the message names the file and the problem."""


def load_seed(path: Path, hash_key: bytes) -> tuple[list[Offer], list[Consent]]:
    """Parse a seed file; raw loyalty numbers are hashed here and go no further."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SeedError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        # A local file, so it may be larger than an MQTT payload.
        data = decode("seed", raw, max_bytes=None)
    except PayloadError as exc:
        raise SeedError(f"{path}: {exc}") from exc
    offers = [offer_from_json(o) for o in data.get("offers", [])]
    consents = [
        consent_from_json(
            c, c.get("customer_ref") or customer_ref(hash_key, "loyalty", c["loyalty"])
        )
        for c in data.get("consents", [])
    ]
    return offers, consents


def consent_from_json(c: Mapping[str, Any], ref: str) -> Consent:
    """A consent as the seed and the consents bundle describe it, already validated."""
    rotation: dict[str, int] = {"eid_k": c["eid_k"]} if "eid_k" in c else {}  # else the default
    return Consent(
        customer_ref=ref,
        personalisation=c["personalisation"],
        segment=c.get("segment"),
        eid_key=bytes.fromhex(c["eid_key"]) if "eid_key" in c else None,
        app_messages=c.get("app_messages", True),
        **rotation,
    )


def offer_from_json(o: Mapping[str, Any]) -> Offer:
    """An offer as the seed schema (and the offers bundle) describe it, already validated."""
    return Offer(
        id=o["id"],
        title=o["title"],
        body=o.get("body", ""),
        category=o.get("category", ""),
        discount_pct=float(o.get("discount_pct", 0.0)),
        channels=tuple(o.get("channels", OFFER_CHANNELS)),
        segments=tuple(o.get("segments", ())),
        dayparts=tuple(o.get("dayparts", ())),
        priority=o.get("priority", 0),
        valid_from=o.get("valid_from"),
        valid_to=o.get("valid_to"),
        inventory=o.get("inventory"),
        price_band=o.get("price_band", "mid"),
        margin=float(o.get("margin", 0.0)),
        price=None if o.get("price") is None else float(o["price"]),
    )
