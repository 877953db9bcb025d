"""When the sender emits events: a piecewise-constant rate schedule and an arrival process over it.

Pure logic, no I/O. A :class:`RateSchedule` is a list of ``(start second, rate in Hz)`` steps; the
rate before the first step is 0 and the last step lasts forever. :class:`ArrivalProcess` turns it
into arrival times by the time-change construction: the next arrival comes when the integrated rate
has grown by one unit (regular arrivals) or by an Exp(1) amount (Poisson arrivals, exact for a
piecewise-constant rate, since the exponential distribution is memoryless).

Schedules are written ``"t1:rate1,t2:rate2,..."`` (seconds from the sender's start, Hz), a bare
``"RATE"``, or ``"paper[:STEP_SECONDS]"``: the load index of the JIRIAF paper's section 6 scenario
(:func:`jiriaf.twin.reference.ground_truth`, 80 steps) mapped linearly onto the rates of its Tables
8 and 9 (162-166 Hz), one step every STEP_SECONDS (default 30).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from jiriaf.errors import UserError

MAX_RATE = 100_000.0
PAPER_STEPS = 80
PAPER_STEP_SECONDS = 30.0


@dataclass(frozen=True)
class RateSchedule:
    """Rate steps ``(start, rate)`` sorted by start (seconds, Hz)."""

    steps: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise UserError("a rate schedule needs at least one step")
        starts = [s for s, _ in self.steps]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise UserError("schedule times must increase")
        for start, rate in self.steps:
            if not (math.isfinite(start) and start >= 0):
                raise UserError(f"schedule time {start} must be a non-negative number")
            if not (math.isfinite(rate) and 0 <= rate <= MAX_RATE):
                raise UserError(f"rate {rate} must be between 0 and {MAX_RATE:g} Hz")

    @classmethod
    def constant(cls, rate: float, start: float = 0.0) -> RateSchedule:
        """``rate`` from ``start`` on (0 before)."""
        return cls(((start, rate),))

    def rate_at(self, t: float) -> float:
        """The rate in force at time ``t``."""
        i = bisect.bisect_right([s for s, _ in self.steps], t) - 1
        return self.steps[i][1] if i >= 0 else 0.0

    def shifted(self, offset: float) -> RateSchedule:
        """The same schedule starting ``offset`` seconds later."""
        return RateSchedule(tuple((s + offset, r) for s, r in self.steps))

    @property
    def end(self) -> float:
        """Start of the last step (the schedule is constant afterwards)."""
        return self.steps[-1][0]

    def expected_events(self, t0: float, t1: float) -> float:
        """The integrated rate over ``[t0, t1]``: the mean number of arrivals."""
        total = 0.0
        bounds = [*(s for s, _ in self.steps), math.inf]
        for i, (start, rate) in enumerate(self.steps):
            lo, hi = max(t0, start), min(t1, bounds[i + 1])
            if hi > lo:
                total += rate * (hi - lo)
        return total


def parse_schedule(text: str, step_seconds: float = PAPER_STEP_SECONDS) -> RateSchedule:
    """A schedule from ``"t1:r1,t2:r2"``, ``"RATE"`` or ``"paper[:STEP_SECONDS]"``."""
    value = text.strip()
    if not value:
        raise UserError("empty schedule")
    if value == "paper" or value.startswith("paper:"):
        step = step_seconds
        if value.startswith("paper:"):
            step = _number(value[len("paper:") :], "paper step seconds")
            if step <= 0:
                raise UserError("paper step seconds must be positive")
        return paper_schedule(step)
    if ":" not in value and "," not in value:
        return RateSchedule.constant(_number(value, "rate"))
    steps: list[tuple[float, float]] = []
    for part in value.split(","):
        item = part.strip()
        if item.count(":") != 1:
            raise UserError(f"schedule step {item!r} is not TIME:RATE")
        t, r = item.split(":")
        steps.append((_number(t, "schedule time"), _number(r, "rate")))
    return RateSchedule(tuple(steps))


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{what} {text.strip()!r} is not a finite number")
    return value


def paper_rates(steps: int = PAPER_STEPS) -> list[float]:
    """The sender rate of each step of the paper's scenario (load index onto 162-166 Hz)."""
    from jiriaf.twin.reference import TABLE_RATES, ground_truth

    xs = ground_truth(steps)
    out = []
    for x in xs:
        xc = min(max(float(x), 0.0), float(len(TABLE_RATES) - 1))
        i = min(math.floor(xc), len(TABLE_RATES) - 2)
        frac = xc - i
        out.append(TABLE_RATES[i] + (TABLE_RATES[i + 1] - TABLE_RATES[i]) * frac)
    return out


def paper_schedule(step_seconds: float = PAPER_STEP_SECONDS, steps: int = PAPER_STEPS) -> RateSchedule:
    """The paper's scenario as a schedule, one step every ``step_seconds``."""
    merged: list[tuple[float, float]] = []
    for i, rate in enumerate(paper_rates(steps)):
        rounded = round(rate, 6)
        if not merged or merged[-1][1] != rounded:
            merged.append((i * step_seconds, rounded))
    return RateSchedule(tuple(merged))


class ArrivalProcess:
    """Arrival times over a schedule, Poisson or regular, from a seeded random generator."""

    def __init__(
        self, schedule: RateSchedule, poisson: bool = True, rng: random.Random | None = None
    ) -> None:
        self.schedule = schedule
        self.poisson = poisson
        self.rng = rng or random.Random()

    def next_after(self, t: float) -> float:
        """The first arrival after time ``t`` (``math.inf`` when the rate stays 0 from ``t`` on)."""
        need = self.rng.expovariate(1.0) if self.poisson else 1.0
        return self._advance(t, need)

    def _advance(self, t: float, need: float) -> float:
        steps = self.schedule.steps
        starts = [s for s, _ in steps]
        i = bisect.bisect_right(starts, t) - 1
        now = t
        while True:
            rate = steps[i][1] if i >= 0 else 0.0
            seg_end = starts[i + 1] if i + 1 < len(steps) else math.inf
            if rate > 0:
                reach = now + need / rate
                if reach < seg_end:
                    return reach
                need -= rate * (seg_end - now)
            if seg_end == math.inf:
                return math.inf
            now = seg_end
            i += 1

    def arrivals(self, t0: float, t1: float, limit: int = 10_000_000) -> list[float]:
        """All arrival times in ``(t0, t1]`` (at most ``limit``)."""
        out: list[float] = []
        t = t0
        while len(out) < limit:
            t = self.next_after(t)
            if t > t1:
                break
            out.append(t)
        return out
