"""Experiments the store can measure lift with: a hashed holdout and a per-screen switchback.

Both are deterministic functions of their inputs: the same customer is in (or out of) the
holdout in every store and after every restart; a screen's arm changes only with the time slot.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["in_holdout", "switchback_arm"]

Arm = Literal["model", "control"]


def _unit(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8]) / 2**64


def in_holdout(customer_ref: str, share: float, salt: str = "holdout-v1") -> bool:
    """Whether a (pseudonymous) customer is in the control group that gets no personalisation."""
    return _unit(salt, customer_ref) < share


def switchback_arm(touchpoint: str, now: float, slot_s: int, salt: str = "switchback-v1") -> Arm:
    """The arm a screen serves anonymous audiences with during the time slot holding `now`."""
    slot = int(now // slot_s)
    return "model" if _unit(salt, touchpoint, str(slot)) < 0.5 else "control"
