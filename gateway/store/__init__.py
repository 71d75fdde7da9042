"""SQLite, the durable truth of the box: offers, consents, decisions."""

from gateway.store._async import AsyncStore
from gateway.store._db import (
    Opened,
    Reader,
    SchemaTooNew,
    StorageFull,
    Store,
    StoreClosed,
    is_storage_full,
)
from gateway.store._outbox import OutboxRow, OutboxTable, transaction
from gateway.store._recovery import StateDirUnusable, check_writable
from gateway.store._rows import DECISION_COLUMNS, Consent, Decision, Offer, PrintJobRow
from gateway.store._seed import SeedError, consent_from_json, load_seed, offer_from_json

__all__ = [
    "DECISION_COLUMNS",
    "AsyncStore",
    "Consent",
    "Decision",
    "Offer",
    "Opened",
    "OutboxRow",
    "OutboxTable",
    "PrintJobRow",
    "Reader",
    "SchemaTooNew",
    "SeedError",
    "StateDirUnusable",
    "StorageFull",
    "Store",
    "StoreClosed",
    "check_writable",
    "consent_from_json",
    "is_storage_full",
    "load_seed",
    "offer_from_json",
    "transaction",
]
