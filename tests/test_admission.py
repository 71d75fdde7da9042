"""Admission of device messages, with time driven by hand: budgets, answers, trouble summaries."""

from __future__ import annotations

import pytest

from gateway.runtime.admission import Answers, Budget, Budgets, Trouble, TroubleLog


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return 1.7e9 + self.t

    def monotonic(self) -> float:
        return self.t

    def stamped_ago(self, seconds: float) -> float:
        return self.now() - seconds

    def trusted(self) -> bool:
        return True


def test_a_device_gets_its_burst_then_its_rate_and_others_are_untouched() -> None:
    clock = Clock()
    budgets = Budgets({"kiosk": Budget(rate_per_s=10.0, burst=5)}, clock)
    flood, victim = ("kiosk", "kiosk-1"), ("kiosk", "kiosk-2")
    assert [budgets.retry_after(flood) for _ in range(5)] == [0.0] * 5
    wait = budgets.retry_after(flood)
    assert wait == pytest.approx(0.1)  # one token comes back in 1/10 s
    assert budgets.retry_after(victim) == 0.0  # its own bucket, full
    clock.t += 0.1
    assert budgets.retry_after(flood) == 0.0
    assert budgets.retry_after(flood) > 0.0
    clock.t += 60  # refilled to the burst, never beyond
    assert [budgets.retry_after(flood) for _ in range(6)].count(0.0) == 5


def test_kinds_without_a_budget_are_not_limited() -> None:
    budgets = Budgets({"kiosk": Budget(1.0, 1)}, Clock())
    assert all(budgets.retry_after(("espresense", "room")) == 0.0 for _ in range(10_000))


def test_answers_are_limited_per_device_and_kind() -> None:
    clock = Clock()
    answers = Answers(clock, per_s=2.0, burst=3)
    a, b = ("kiosk", "a"), ("kiosk", "b")
    assert [answers.allow(a, "invalid") for _ in range(5)] == [True, True, True, False, False]
    assert answers.allow(b, "invalid")
    # Its garbage used up kiosk a's answers of that kind; being over budget is still said.
    assert answers.allow(a, "busy")
    clock.t += 0.5
    assert answers.allow(a, "invalid")


def test_repeated_trouble_is_one_line_per_key_and_interval_with_the_count() -> None:
    clock = Clock()
    lines: list[Trouble] = []
    trouble = TroubleLog(clock, lines.append, interval_s=10.0)
    for i in range(10_000):  # a flood of garbage from one kiosk over 20 s
        clock.t += 0.002
        trouble.note(("kiosk_identify", "kiosk/kiosk-1"), f"payload is not JSON ({i})")
    trouble.note(("kiosk_identify", "kiosk/kiosk-2"), "data.method must be one of [...]")
    clock.t += 10.0
    trouble.flush()
    assert lines[0] == Trouble(
        ("kiosk_identify", "kiosk/kiosk-1"), 1, "payload is not JSON (0)", first=True
    )
    flood = [t for t in lines if t.key[1] == "kiosk/kiosk-1"]
    assert len(flood) == 3  # the first, then one per 10 s interval
    assert sum(t.count for t in flood) == 10_000
    assert flood[-1].last_error == "payload is not JSON (9999)"
    assert [t.count for t in lines if t.key[1] == "kiosk/kiosk-2"] == [1]
    # A quiet interval closes a key: the next refusal is logged at once again.
    clock.t += 30.0
    trouble.flush()
    before = len(lines)
    trouble.note(("kiosk_identify", "kiosk/kiosk-2"), "again")
    assert lines[before:] == [Trouble(("kiosk_identify", "kiosk/kiosk-2"), 1, "again", True)]
