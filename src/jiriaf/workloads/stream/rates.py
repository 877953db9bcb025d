"""Sliding-window event rates (arrivals, completions), safe to update from several threads."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class RateMeter:
    """Counts events in buckets and reports the rate over the last ``window`` seconds.

    Until a full window has passed since the meter started, the rate is over the time elapsed so far.
    """

    def __init__(
        self, window: float = 10.0, buckets: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if window <= 0 or buckets < 1:
            raise ValueError("window must be positive and buckets at least 1")
        self.window = window
        self.width = window / buckets
        self.clock = clock
        self.started = clock()
        self._buckets: deque[tuple[int, int]] = deque()  # (bucket index, count)
        self._lock = threading.Lock()

    def add(self, n: int = 1, now: float | None = None) -> None:
        t = self.clock() if now is None else now
        index = int((t - self.started) // self.width)
        with self._lock:
            if self._buckets and self._buckets[-1][0] == index:
                last_index, count = self._buckets[-1]
                self._buckets[-1] = (last_index, count + n)
            else:
                self._buckets.append((index, n))
            self._trim(index)

    def _oldest(self, index: int) -> int:
        return max(0, index - round(self.window / self.width) + 1)

    def _trim(self, index: int) -> None:
        oldest = self._oldest(index)
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events per second over the last window (or since the start, if shorter)."""
        t = self.clock() if now is None else now
        index = int((t - self.started) // self.width)
        with self._lock:
            self._trim(index)
            total = sum(count for _, count in self._buckets)
        # the counted buckets span from the start of the oldest one to now (the last one is partial)
        covered = t - (self.started + self._oldest(index) * self.width)
        return total / covered if covered > 0 else 0.0
