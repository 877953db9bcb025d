"""Load-test results: percentiles, counts, summary, and the load plan's bounds (pure logic)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from jiriaf.errors import UserError
from jiriaf.workloads.loadgen import MAX_REQUESTS, LoadPlan
from jiriaf.workloads.loadstats import LoadResult, format_summary, percentile

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("q", [0, 1, 10, 25, 50, 90, 99, 99.9, 100])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_percentile_matches_numpy_linear(q: float, n: int) -> None:
    values = sorted(float(v) for v in np.random.default_rng(n).exponential(1.0, n))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_result_counts_errors_and_rate() -> None:
    r = LoadResult(duration=2.0)
    for latency, code in [(0.01, 200), (0.02, 200), (0.03, 503), (0.04, 404)]:
        r.record(latency, code)
    r.fail("timeout")
    r.fail("connect")
    assert r.requests == 6
    assert r.errors == 4  # 503, 404 and two failures
    assert r.rate == 3.0
    s = r.summary()
    assert s["answered"] == 4
    assert s["p50_s"] == pytest.approx(0.025)
    assert s["max_s"] == 0.04
    assert s["status_codes"] == {"200": 2, "404": 1, "503": 1}
    assert s["failures"] == {"connect": 1, "timeout": 1}
    text = format_summary(r)
    assert "Requests:     6 (4 answered, 4 errors)" in text
    assert "Requests/s:   3.00" in text
    assert "p99" in text and "[503]  1 responses" in text and "timeout: 1" in text


def test_empty_result_formats() -> None:
    r = LoadResult(duration=0.0)
    assert r.rate == 0.0
    text = format_summary(r)
    assert "(none)" in text and "p50          -" in text


def test_plan_bounds_and_pacing() -> None:
    plan = LoadPlan("http://127.0.0.1/", 4, duration=None, requests=None, rate=None, timeout=5)
    assert plan.deadline == 10.0 and plan.limit == MAX_REQUESTS
    counted = LoadPlan("http://127.0.0.1/", 4, duration=None, requests=50, rate=20.0, timeout=5)
    assert counted.limit == 50
    assert counted.start_offset(0) == 0.0 and counted.start_offset(40) == 2.0
    assert counted.deadline == 3600.0  # a count alone is still bounded in time
    assert LoadPlan("http://127.0.0.1/", 1, duration=2.5, requests=None, rate=None, timeout=1).deadline == 2.5
    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 1001}, "concurrency"),
        ({"duration": 0.0}, "duration"),
        ({"duration": 3601.0}, "duration"),
        ({"requests": 0}, "requests"),
        ({"requests": MAX_REQUESTS + 1}, "requests"),
        ({"rate": 0.0}, "rate"),
        ({"timeout": 0.0}, "timeout"),
    ]
    for kwargs, message in cases:
        base: dict[str, Any] = {
            "concurrency": 1,
            "duration": 1.0,
            "requests": None,
            "rate": None,
            "timeout": 1.0,
        }
        base.update(kwargs)
        with pytest.raises(UserError, match=message):
            LoadPlan("http://127.0.0.1/", **base)
