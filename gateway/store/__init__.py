"""SQLite, the durable truth of the box: offers, consents, decisions."""

from gateway.store._db import (
    AsyncStore,
    Consent,
    Decision,
    Offer,
    PrintJobRow,
    Reader,
    SchemaTooNew,
    Store,
    StoreClosed,
)
from gateway.store._outbox import OutboxRow, OutboxTable
from gateway.store._seed import SeedError, consent_from_json, load_seed, offer_from_json

__all__ = [
    "AsyncStore",
    "Consent",
    "Decision",
    "Offer",
    "OutboxRow",
    "OutboxTable",
    "PrintJobRow",
    "Reader",
    "SchemaTooNew",
    "SeedError",
    "Store",
    "StoreClosed",
    "consent_from_json",
    "load_seed",
    "offer_from_json",
]
