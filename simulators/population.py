"""The demo store's customers, and the demo keys that go with `examples/demo.toml`.

DEMO ONLY: these keys are public (they are in this file); a real store gets its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.codecs.identity import customer_ref, mint_token

__all__ = [
    "CUSTOMERS",
    "DEMO_HASH_KEY",
    "Customer",
    "demo_token",
    "demo_token_key",
    "eid_identity_key",
]

DEMO_HASH_KEY = hashlib.sha256(
    b"store-gateway demo identity hash key (never use in production)"
).digest()


def demo_token_key() -> Ed25519PrivateKey:
    seed = hashlib.sha256(b"store-gateway demo token key (never use in production)").digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


@dataclass(frozen=True, slots=True)
class Customer:
    name: str  # for the narration only; never sent anywhere
    loyalty: str
    consented: bool
    segment: str | None

    @property
    def masked(self) -> str:
        return f"card ...{self.loyalty[-4:]}"

    @property
    def ref(self) -> str:
        return customer_ref(DEMO_HASH_KEY, "loyalty", self.loyalty)


# Must agree with examples/demo-seed.json (tests/test_simulators.py checks it).
CUSTOMERS = (
    Customer("Ada", "4000000000001", consented=True, segment="coffee-lovers"),
    Customer("Bo", "4000000000002", consented=True, segment="bakery-fans"),
    Customer("Cy", "4000000000003", consented=True, segment=None),
    Customer("Di", "4000000000004", consented=False, segment=None),
    Customer("Ed", "4000000000999", consented=False, segment=None),  # not a member here
)


def demo_token(customer: Customer, now: float, ttl_s: int = 300) -> str:
    """The app's loyalty QR token for `customer`, as the chain's backend would sign it."""
    return mint_token(demo_token_key(), customer.ref, int(now), ttl_s)


def eid_identity_key(customer: Customer) -> bytes:
    """The 16-byte Eddystone-EID identity key of `customer`'s app (DEMO KEYS ONLY: derived from the
    public loyalty number; a real app gets a random key, registered with its consent)."""
    return hashlib.sha256(b"demo-eid:" + customer.loyalty.encode()).digest()[:16]
