"""Experiments the store can measure lift with: a hashed holdout, a per-screen switchback, and
the tests marketing declares in signed `experiments` bundles.

All are deterministic functions of their inputs: the same customer is in (or out of) the
holdout, and in the same arm of a test, in every store and after every restart; a screen's arm
changes only with the time slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ArmSpec",
    "Assignment",
    "ExperimentTest",
    "assign",
    "in_holdout",
    "parse_tests",
    "switchback_arm",
]

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


# -- Tests the marketing team declares (signed `experiments` bundles)


@dataclass(frozen=True, slots=True)
class ArmSpec:
    name: str
    share: float  # of the test's units; the shares of a test sum to 1
    offers: tuple[str, ...] = ()  # the arm's candidate offers; () = the whole catalog


@dataclass(frozen=True, slots=True)
class ExperimentTest:
    id: str
    touchpoints: tuple[str, ...]  # channels: kiosk, screen, tablet, receipt, app
    arms: tuple[ArmSpec, ...]  # the first is the control the others are compared with
    start: float
    end: float
    metric: str = "conversion"  # or revenue_per_visit
    slot_s: int = 1800  # anonymous audiences: a screen's arm changes with the slot

    def running(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True, slots=True)
class Assignment:
    test: str
    arm: ArmSpec
    unit: str  # the customer ref, or touchpoint:slot for an anonymous audience

    def as_json(self) -> dict[str, str]:
        return {"id": self.test, "arm": self.arm.name, "unit": self.unit}


def parse_tests(body: Mapping[str, Any]) -> tuple[ExperimentTest, ...]:
    """The tests of an `experiments` bundle body already validated against its schema."""
    tests = []
    for t in body.get("tests", ()):
        arms = tuple(
            ArmSpec(str(a["name"]), float(a["share"]), tuple(map(str, a.get("offers", ()))))
            for a in t["arms"]
        )
        tests.append(
            ExperimentTest(
                id=str(t["id"]),
                touchpoints=tuple(map(str, t["touchpoints"])),
                arms=arms,
                start=float(t["start"]),
                end=float(t["end"]),
                metric=str(t.get("metric", "conversion")),
                slot_s=int(t.get("slot_s", 1800)),
            )
        )
    return tuple(tests)


def assign(
    tests: Sequence[ExperimentTest],
    *,
    channel: str,
    touchpoint_id: str,
    customer_ref: str | None,
    now: float,
) -> Assignment | None:
    """The first running test on this channel, and the arm of this customer (or of this
    screen's time slot): a hash of the test and the unit only, the same in every store and
    after every restart. None outside every test's start..end."""
    for test in tests:
        if channel not in test.touchpoints or not test.running(now) or not test.arms:
            continue
        unit = customer_ref or f"{touchpoint_id}:{int(now // test.slot_s)}"
        u = _unit("experiment-v1", test.id, unit)
        total = sum(a.share for a in test.arms)
        cumulative = 0.0
        for arm in test.arms:
            cumulative += arm.share / total
            if u < cumulative:
                return Assignment(test.id, arm, unit)
        return Assignment(test.id, test.arms[-1], unit)
    return None
