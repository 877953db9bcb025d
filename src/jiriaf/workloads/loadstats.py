"""Results of a load test: latency percentiles, throughput and errors. Pure logic, no I/O."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending ``sorted_values``, interpolating linearly between
    the two nearest ranks (numpy's default method); NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    position = (n - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, n - 1)
    weight = position - lower
    return float(sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * weight)


@dataclass
class LoadResult:
    """What a load run measured. ``latencies`` are seconds of the answered requests."""

    duration: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def record(self, latency: float, status: int) -> None:
        self.latencies.append(latency)
        self.statuses[status] += 1

    def fail(self, kind: str) -> None:
        self.failures[kind] += 1

    @property
    def requests(self) -> int:
        """Requests sent: answered ones and failed ones."""
        return len(self.latencies) + sum(self.failures.values())

    @property
    def errors(self) -> int:
        """Transport failures (refused, reset, timeout) and answers with status >= 400."""
        return sum(self.failures.values()) + sum(n for code, n in self.statuses.items() if code >= 400)

    @property
    def rate(self) -> float:
        """Requests per second over the run."""
        return self.requests / self.duration if self.duration > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        out: dict[str, Any] = {
            "requests": self.requests,
            "answered": len(ordered),
            "errors": self.errors,
            "duration_s": self.duration,
            "requests_per_s": self.rate,
        }
        for q in PERCENTILES:
            out[f"p{q:g}_s"] = percentile(ordered, q)
        out["max_s"] = ordered[-1] if ordered else math.nan
        out["mean_s"] = sum(ordered) / len(ordered) if ordered else math.nan
        out["status_codes"] = {str(k): v for k, v in sorted(self.statuses.items())}
        out["failures"] = dict(sorted(self.failures.items()))
        return out


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000.0:.2f} ms"


def format_summary(result: LoadResult) -> str:
    """A short human summary in the spirit of ``hey``."""
    s = result.summary()
    lines = [
        "Summary:",
        f"  Total:        {s['duration_s']:.3f} s",
        f"  Requests:     {s['requests']} ({s['answered']} answered, {s['errors']} errors)",
        f"  Requests/s:   {s['requests_per_s']:.2f}",
        "",
        "Latency:",
    ]
    for q in PERCENTILES:
        lines.append(f"  p{q:<4g}        {_ms(s[f'p{q:g}_s'])}")
    lines.append(f"  max          {_ms(s['max_s'])}")
    lines.append(f"  mean         {_ms(s['mean_s'])}")
    lines.append("")
    lines.append("Status codes:")
    if s["status_codes"]:
        lines.extend(f"  [{code}]  {n} responses" for code, n in s["status_codes"].items())
    else:
        lines.append("  (none)")
    if s["failures"]:
        lines.append("")
        lines.append("Failures:")
        lines.extend(f"  {kind}: {n}" for kind, n in s["failures"].items())
    return "\n".join(lines)
