"""The readout on a world with a known answer (simulators/lift.py): its 95 % interval covers
the true lift of revenue per visit in at least 18 of 20 fixed seeds.

Each seed is a whole pass of real parts: the log written to a SQLite store in the gateway's
schema, the online outcomes joined through a signed outcomes bundle by the gateway's applier,
the readout read from the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.lift import World, measure

SMALL = World(customers=2000, days=21)


@pytest.mark.timeout(180)
async def test_the_readouts_interval_covers_the_true_lift_in_18_of_20_seeds(tmp_path: Path) -> None:
    covered, lifts = 0, []
    for seed in range(20):
        measured = await measure(SMALL, seed, tmp_path)
        covered += measured.covered
        revenue = measured.readout.touchpoints[-1].revenue
        assert revenue is not None
        assert revenue.lift is not None
        lifts.append(revenue.lift)
        assert measured.outcomes > 0  # online outcomes came back and joined
        assert revenue.online[0] > 0 == revenue.online[1]  # only the personalised get follow-ups
    assert covered >= 18, f"covered in {covered} of 20 seeds"
    # The estimates scatter around the truth (about +6 %), not around zero.
    assert 0.02 < sum(lifts) / len(lifts) < 0.12
