"""Stabilization windows: when a recommended thread count is applied."""

from __future__ import annotations

import pytest

from jiriaf.errors import UserError
from jiriaf.twin.stabilize import Stabilizer

pytestmark = pytest.mark.unit


def applied(gate: Stabilizer, recommendations: list[int], current: int = 16) -> list[tuple[int, int]]:
    """Feed recommendations step by step, applying each one the gate lets through."""
    out = []
    for step, rec in enumerate(recommendations):
        if gate.offer(rec, current):
            current = rec
            out.append((step, rec))
    return out


def test_default_applies_every_change_at_once() -> None:
    assert applied(Stabilizer(), [16, 32, 16, 16, 32]) == [(1, 32), (2, 16), (4, 32)]


def test_up_and_down_wait_for_their_own_number_of_steps() -> None:
    gate = Stabilizer(up=2, down=3)
    recs = [32, 32, 16, 16, 32, 16, 16, 16, 16]
    # up after steps 0-1; one quiet step at 2-3 is not enough to go down, nor is 5-6; 5-7 is
    assert applied(gate, recs) == [(1, 32), (7, 16)]


def test_an_interrupted_streak_starts_again() -> None:
    assert applied(Stabilizer(up=3), [32, 32, 16, 32, 32, 32]) == [(5, 32)]


def test_a_streak_that_led_to_a_switch_does_not_count_again() -> None:
    gate = Stabilizer(up=2, down=2)
    assert gate.offer(32, 16) is False and gate.offer(32, 16) is True
    # the recommendation matches the new setting: nothing to apply, whatever the streak
    assert gate.offer(32, 32) is False
    assert gate.offer(16, 32) is False and gate.offer(16, 32) is True


def test_windows_must_be_at_least_one_step() -> None:
    for up, down in [(0, 1), (1, 0), (-2, 3)]:
        with pytest.raises(UserError, match="stabilization"):
            Stabilizer(up=up, down=down)
