"""The stream workload's pure parts: wire format, rate schedules, arrival process, cost model, meters."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from jiriaf.errors import UserError
from jiriaf.twin import reference
from jiriaf.twin.queueing import PAPER_MU_16, PAPER_MU_32
from jiriaf.workloads.stream.arrivals import (
    ArrivalProcess,
    RateSchedule,
    paper_rates,
    paper_schedule,
    parse_schedule,
)
from jiriaf.workloads.stream.protocol import (
    MAX_LINE,
    MAX_PAYLOAD,
    Event,
    ProtocolError,
    decode_event,
    encode_event,
)
from jiriaf.workloads.stream.rates import RateMeter
from jiriaf.workloads.stream.service import PAPER_COST, ServiceCost

pytestmark = pytest.mark.unit

# ---------------------------------------------------------------------------------------- protocol


def test_event_round_trip() -> None:
    line = encode_event(17, 1712345678.1234567, 10)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_event(line) == Event(seq=17, sent=1712345678.123457, size=10)
    assert decode_event(encode_event(0, 1.0)) == Event(0, 1.0, 0)
    assert decode_event(b'{"seq":3,"sent":5}') == Event(3, 5.0, 0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not JSON"),
        (b"\xff\xfe\n", "not JSON"),
        (b"[1,2]\n", "not a JSON object"),
        (b'{"sent":1}\n', "seq"),
        (b'{"seq":-1,"sent":1}\n', "seq"),
        (b'{"seq":true,"sent":1}\n', "seq"),
        (b'{"seq":1.5,"sent":1}\n', "seq"),
        (b'{"seq":1}\n', "sent"),
        (b'{"seq":1,"sent":"now"}\n', "sent"),
        (b'{"seq":1,"sent":NaN}\n', "sent"),
        (b'{"seq":1,"sent":1,"pad":5}\n', "pad"),
    ],
)
def test_bad_lines_are_protocol_errors(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_event(line)


def test_size_limits() -> None:
    assert len(encode_event(1, 1.0, MAX_PAYLOAD)) <= MAX_LINE
    with pytest.raises(ValueError):
        encode_event(1, 1.0, MAX_PAYLOAD + 1)
    with pytest.raises(ValueError):
        encode_event(-1, 1.0)
    with pytest.raises(ProtocolError, match="longer"):
        decode_event(b"x" * (MAX_LINE + 1))


# ---------------------------------------------------------------------------------------- schedules


def test_parse_schedule_forms() -> None:
    assert parse_schedule("150").steps == ((0.0, 150.0),)
    s = parse_schedule("0:100, 30:166,60:100")
    assert s.steps == ((0.0, 100.0), (30.0, 166.0), (60.0, 100.0))
    assert [s.rate_at(t) for t in (0, 29.9, 30, 59, 60, 1e6)] == [100, 100, 166, 166, 100, 100]
    late = parse_schedule("10:50")
    assert late.rate_at(5) == 0.0 and late.rate_at(10) == 50.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("fast", "not a number"),
        ("0:100,0:200", "increase"),
        ("30:100,10:200", "increase"),
        ("0:100,abc", "TIME:RATE"),
        ("0:1:2", "TIME:RATE"),
        ("0:-5", "between 0"),
        ("-1:5", "non-negative"),
        ("0:inf", "finite"),
        ("0:1e9", "between 0"),
        ("paper:0", "positive"),
        ("paper:x", "not a number"),
    ],
)
def test_parse_schedule_rejects(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_schedule(text)


def test_schedule_shift_and_expected_events() -> None:
    s = parse_schedule("0:100,30:200")
    assert s.shifted(5).steps == ((5.0, 100.0), (35.0, 200.0))
    assert s.expected_events(0, 30) == pytest.approx(3000)
    assert s.expected_events(20, 40) == pytest.approx(1000 + 2000)
    assert s.end == 30.0
    assert RateSchedule.constant(7, 2).expected_events(0, 3) == pytest.approx(7)


def test_paper_schedule_follows_the_twin_scenario() -> None:
    rates = paper_rates()
    xs = reference.ground_truth(len(rates))
    assert len(rates) == 80
    assert rates[0] == 162.0 and max(rates) == pytest.approx(166.0)
    assert min(rates) == 162.0
    for x, rate in zip(xs, rates, strict=True):
        assert rate == pytest.approx(162.0 + min(max(float(x), 0.0), 4.0))  # the tables' 1 Hz per state
    s = paper_schedule(10.0)
    assert s.rate_at(0) == 162.0
    assert s.rate_at(100.0) == pytest.approx(rates[10])
    assert parse_schedule("paper:10").steps == s.steps
    assert parse_schedule("paper", step_seconds=10.0).steps == s.steps


# ---------------------------------------------------------------------------------------- arrivals


def test_regular_arrivals_are_evenly_spaced_and_follow_rate_changes() -> None:
    proc = ArrivalProcess(parse_schedule("0:10,1:20"), poisson=False)
    times = proc.arrivals(0.0, 2.001)
    assert len(times) == 10 + 20
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(0.1) for g in gaps[:9])
    assert all(g == pytest.approx(0.05) for g in gaps[10:])


def test_zero_rate_means_no_arrivals_until_the_rate_rises() -> None:
    proc = ArrivalProcess(parse_schedule("0:0,5:10"), poisson=False)
    assert proc.next_after(0.0) == pytest.approx(5.1)
    assert ArrivalProcess(RateSchedule.constant(0.0), poisson=True).next_after(3.0) == math.inf


def test_poisson_counts_match_the_integrated_rate() -> None:
    schedule = parse_schedule("0:50,20:150,40:0,50:100")
    proc = ArrivalProcess(schedule, poisson=True, rng=random.Random(7))
    times = proc.arrivals(0.0, 70.0)
    expected = schedule.expected_events(0, 70)  # 1000 + 3000 + 0 + 2000
    assert expected == pytest.approx(6000)
    assert abs(len(times) - expected) < 5 * math.sqrt(expected)  # a Poisson count: sd = sqrt(mean)
    in_gap = [t for t in times if 40 <= t < 50]
    assert in_gap == []
    per_segment = [sum(1 for t in times if a <= t < b) for a, b in [(0, 20), (20, 40), (50, 70)]]
    for count, mean in zip(per_segment, [1000, 3000, 2000], strict=True):
        assert abs(count - mean) < 5 * math.sqrt(mean)


def test_poisson_gaps_are_exponential() -> None:
    proc = ArrivalProcess(RateSchedule.constant(100.0), poisson=True, rng=random.Random(3))
    times = proc.arrivals(0.0, 100.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    assert mean == pytest.approx(0.01, rel=0.05)
    assert math.sqrt(var) / mean == pytest.approx(1.0, rel=0.05)  # exponential: cv = 1
    assert sum(1 for g in gaps if g > 0.01) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)


def test_arrivals_are_reproducible_with_a_seed() -> None:
    a = ArrivalProcess(RateSchedule.constant(10.0), rng=random.Random(1)).arrivals(0, 10)
    b = ArrivalProcess(RateSchedule.constant(10.0), rng=random.Random(1)).arrivals(0, 10)
    assert a == b


# ---------------------------------------------------------------------------------------- cost model


def test_paper_cost_reproduces_the_papers_service_rates_exactly() -> None:
    assert PAPER_COST.own == pytest.approx(0.048)
    assert PAPER_COST.contention == pytest.approx(0.003)
    assert PAPER_COST.mean_seconds(16) == pytest.approx(0.096) and PAPER_COST.mean_seconds(
        32
    ) == pytest.approx(0.144)
    assert PAPER_COST.capacity(16) == pytest.approx(PAPER_MU_16, rel=1e-12)
    assert PAPER_COST.capacity(32) == pytest.approx(PAPER_MU_32, rel=1e-12)
    assert Fraction(PAPER_COST.capacity(32) / PAPER_COST.capacity(16)).limit_denominator(100) == Fraction(
        4, 3
    )
    assert PAPER_COST.random  # exponential service times by default: the twin's M/M/c queue


def test_capacity_grows_with_threads_but_less_than_linearly_under_contention() -> None:
    cost = ServiceCost(own=0.09, contention=0.01)
    assert [cost.capacity(n) for n in (0, 1, 5, 10, 20)] == pytest.approx(
        [0, 10, 5 / 0.14, 10 / 0.19, 20 / 0.29]
    )
    assert ServiceCost(own=0.1).capacity(7) == pytest.approx(70)  # no contention: linear


def test_from_rates_checks_the_model_can_produce_them() -> None:
    cost = ServiceCost.from_rates(80.0, 100.0, low=8, high=16)
    assert cost.capacity(8) == pytest.approx(80) and cost.capacity(16) == pytest.approx(100)
    linear = ServiceCost.from_rates(80.0, 160.0, low=8, high=16)
    assert linear.contention == pytest.approx(0.0) and linear.capacity(32) == pytest.approx(320)
    flat = ServiceCost.from_rates(80.0, 80.0, low=8, high=16)
    assert flat.own == pytest.approx(0.0) and flat.capacity(100) == pytest.approx(80)
    assert not ServiceCost.from_rates(80.0, 100.0, random=False).random
    for args in [(100.0, 90.0), (100.0, 250.0), (0.0, 10.0)]:
        with pytest.raises(UserError, match="cannot"):
            ServiceCost.from_rates(*args)
    with pytest.raises(UserError, match="low threads"):
        ServiceCost.from_rates(10.0, 10.0, low=16, high=16)
    for bad in [
        dict(own=-1.0, contention=0.1),
        dict(own=0.0),
        dict(own=math.inf),
        dict(own=0.1, contention=-0.1),
    ]:
        with pytest.raises(UserError):
            ServiceCost(**bad)  # type: ignore[arg-type]


def test_exponential_service_times_have_the_mean_and_the_spread_of_an_exponential() -> None:
    rng = random.Random(7)
    times = [PAPER_COST.sample(32, rng) for _ in range(40_000)]
    mean = sum(times) / len(times)
    sd = math.sqrt(sum((t - mean) ** 2 for t in times) / len(times))
    assert mean == pytest.approx(0.144, rel=0.02)
    assert sd / mean == pytest.approx(1.0, rel=0.03)  # exponential: coefficient of variation 1
    assert min(times) >= 0.0
    fixed = ServiceCost(own=0.048, contention=0.003, random=False)
    assert [fixed.sample(16, rng) for _ in range(10)] == pytest.approx([0.096] * 10)


# ---------------------------------------------------------------------------------------- rate meter


class FakeClock:
    """A settable clock for the meter (the meter's arithmetic is what is tested, not time)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_meter_over_a_partial_and_a_full_window() -> None:
    clock = FakeClock()
    meter = RateMeter(window=10.0, buckets=10, clock=clock)
    assert meter.rate() == 0.0
    for _ in range(200):  # 50 Hz for 4 s
        clock.t += 0.02
        meter.add()
    clock.t = 104.0
    assert meter.rate() == pytest.approx(200 / 4.0, rel=0.02)
    for _ in range(20 * 10):  # then 20 Hz for 10 s
        clock.t += 0.05
        meter.add()
    assert meter.rate() == pytest.approx(20.0, rel=0.06)
    clock.t += 100.0
    assert meter.rate() == 0.0


def test_rate_meter_batches_and_explicit_times() -> None:
    clock = FakeClock()
    meter = RateMeter(window=2.0, buckets=4, clock=clock)
    meter.add(10, now=100.25)  # bucket [100.0, 100.5): leaves the window at 102.0
    meter.add(10, now=100.5)
    meter.add(10, now=101.5)
    # the window is the last 4 buckets, from the start of the oldest (100.5) to now
    assert meter.rate(now=101.9) == pytest.approx(30 / 1.9)
    assert meter.rate(now=102.0) == pytest.approx(20 / 1.5)
    with pytest.raises(ValueError):
        RateMeter(window=0)
