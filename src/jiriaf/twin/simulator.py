"""Discrete-event simulation of the streaming system: Poisson sender -> FIFO -> N-thread receiver.

Events arrive with exponential inter-arrival times (rate ``lam``), wait in a FIFO and are served by the
receiver's worker threads. The receiver's total processing rate for ``N`` threads is ``service_rate(N)``
(by default the paper's rates: 500/3 Hz for 16 threads, 4/3 of that for 32). Two service models:

* ``threads`` (default): N workers, each serving one event at a time with exponential service of rate
  ``service_rate(N) / N`` - an M/M/N queue;
* ``pooled``: the receiver serves one event at a time at rate ``service_rate(N)`` - the M/M/1 queue that
  the paper's formula describes.

The simulation keeps its state between calls to :meth:`QueueSimulator.run_for`, so the arrival rate
and the thread count can be changed between measurement intervals, as a load change or a control
action would do. Each interval reports the time-average FIFO length (the "observed Lq").
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jiriaf.twin.queueing import receiver_rate


@dataclass(frozen=True)
class IntervalStats:
    """Measurements over one interval of simulated time."""

    start: float
    end: float
    lam: float
    threads: int
    mean_queue: float  # time-average number waiting in the FIFO
    final_queue: int  # FIFO length at the end of the interval
    arrivals: int
    completions: int
    mean_wait: float  # mean FIFO waiting time of the events that started service in the interval

    @property
    def duration(self) -> float:
        return self.end - self.start


class QueueSimulator:
    """Event-driven sender/FIFO/receiver simulation with a changeable rate and thread count."""

    def __init__(
        self,
        lam: float,
        threads: int,
        *,
        mode: str = "threads",
        service_rate: Callable[[int], float] = receiver_rate,
        seed: int | None = 0,
    ) -> None:
        if mode not in ("threads", "pooled"):
            raise ValueError("mode must be 'threads' or 'pooled'")
        if lam < 0:
            raise ValueError("arrival rate must be >= 0")
        self.mode = mode
        self._service_rate = service_rate
        self._rng = np.random.default_rng(seed)
        self.now = 0.0
        self._lam = float(lam)
        self._threads = 0
        self._fifo: deque[float] = deque()  # arrival times of waiting events
        self._busy: list[tuple[float, int]] = []  # heap of (completion time, worker id)
        self._next_id = 0
        self._next_arrival = math.inf
        self.set_threads(threads)
        self._schedule_arrival()

    # ------------------------------------------------------------------ controls
    @property
    def lam(self) -> float:
        return self._lam

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def queue_length(self) -> int:
        return len(self._fifo)

    def set_rate(self, lam: float) -> None:
        """Change the sender's rate from now on (memoryless, so the next arrival is redrawn)."""
        if lam < 0:
            raise ValueError("arrival rate must be >= 0")
        self._lam = float(lam)
        self._schedule_arrival()

    def set_threads(self, threads: int) -> None:
        """Change the receiver's thread count; running events finish, queued ones start on new threads."""
        if threads < 1:
            raise ValueError("need at least one thread")
        self._threads = int(threads)
        self._start_waiting()

    # ------------------------------------------------------------------ internals
    def _per_server_rate(self) -> float:
        total = self._service_rate(self._threads)
        return total / self._threads if self.mode == "threads" else total

    def _servers(self) -> int:
        return self._threads if self.mode == "threads" else 1

    def _schedule_arrival(self) -> None:
        self._next_arrival = self.now + self._rng.exponential(1.0 / self._lam) if self._lam > 0 else math.inf

    def _start_waiting(self) -> list[float]:
        started: list[float] = []
        while self._fifo and len(self._busy) < self._servers():
            arrived = self._fifo.popleft()
            started.append(self.now - arrived)
            service = self._rng.exponential(1.0 / self._per_server_rate())
            heapq.heappush(self._busy, (self.now + service, self._next_id))
            self._next_id += 1
        return started

    # ------------------------------------------------------------------ running
    def run_for(self, duration: float) -> IntervalStats:
        """Advance the simulation by ``duration`` seconds and report the interval's statistics."""
        if duration <= 0:
            raise ValueError("duration must be > 0")
        start = self.now
        end = start + duration
        area = 0.0
        arrivals = completions = 0
        waits: list[float] = []
        while True:
            next_done = self._busy[0][0] if self._busy else math.inf
            t_next = min(self._next_arrival, next_done)
            if t_next > end:
                area += len(self._fifo) * (end - self.now)
                self.now = end
                break
            area += len(self._fifo) * (t_next - self.now)
            self.now = t_next
            if self._next_arrival <= next_done:
                arrivals += 1
                self._fifo.append(self.now)
                self._schedule_arrival()
            else:
                heapq.heappop(self._busy)
                completions += 1
            waits.extend(self._start_waiting())
        return IntervalStats(
            start=start,
            end=end,
            lam=self._lam,
            threads=self._threads,
            mean_queue=area / duration,
            final_queue=len(self._fifo),
            arrivals=arrivals,
            completions=completions,
            mean_wait=float(np.mean(waits)) if waits else 0.0,
        )
