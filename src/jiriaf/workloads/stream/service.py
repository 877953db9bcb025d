"""The receiver's service: a FIFO served by N worker threads, and the per-event cost model.

**Cost model.** Each event costs a worker ``own`` seconds of work that workers do side by side (an
I/O-bound stage, modelled as a sleep, like ERSAP services waiting on data) followed by ``shared``
seconds in a stage that serves one event at a time for all workers (a shared resource: an output
stream, a lock, a device). With deterministic costs a pool of N busy workers completes

    mu(N) = min(N / (own + shared), 1 / shared)   events per second,

because the shared stage staggers the workers, who then never meet there again while
N * shared < own + shared. The paper's receiver (Tables 8 and 9; see ``docs/twin.md``) has
mu(16) = 500/3 Hz and mu(32) = 2000/9 Hz (ratio 4/3); :meth:`ServiceCost.from_rates` gives the costs
that reproduce both: shared = 1/mu(32) = 4.5 ms and own = 16/mu(16) - shared = 91.5 ms.

Sleep-based costs use almost no CPU, so the rates hold on a 2-core machine and do not depend on the
GIL; a busy-CPU cost could not scale with threads in one Python process.

**Shared stage.** :class:`SharedStage` hands out back-to-back time slots (a reservation under a
short lock, then a sleep until the slot ends), so the stage's throughput is exactly 1/shared however
late a sleeping thread wakes up.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from jiriaf.errors import UserError
from jiriaf.twin.queueing import PAPER_MU_16, PAPER_MU_32

log = logging.getLogger(__name__)

MAX_THREADS = 1024
T = TypeVar("T")


@dataclass(frozen=True)
class ServiceCost:
    """Per-event cost: ``own`` seconds per worker (in parallel) then ``shared`` seconds (one at a time)."""

    own: float
    shared: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.own) and math.isfinite(self.shared)) or self.own < 0 or self.shared < 0:
            raise UserError("per-event costs must be non-negative numbers")
        if self.own + self.shared <= 0:
            raise UserError("the per-event cost must be positive")

    def capacity(self, threads: int) -> float:
        """Events per second that ``threads`` busy workers complete (deterministic costs)."""
        if threads < 1:
            return 0.0
        parallel = threads / (self.own + self.shared)
        return min(parallel, 1.0 / self.shared) if self.shared > 0 else parallel

    @classmethod
    def from_rates(cls, rate_low: float, rate_high: float, low: int = 16, high: int = 32) -> ServiceCost:
        """The costs under which ``low`` workers complete ``rate_low`` and ``high`` complete ``rate_high``.

        Needs ``low < high`` and ``rate_low <= rate_high <= rate_low * high / low``: the high rate is
        the shared stage's limit and the low one is below it.
        """
        if not 1 <= low < high:
            raise UserError("need 1 <= low threads < high threads")
        if not 0 < rate_low <= rate_high <= rate_low * high / low:
            raise UserError(
                f"rates {rate_low:g} Hz ({low} threads) and {rate_high:g} Hz ({high} threads) cannot "
                f"come from this cost model (need {rate_low:g} <= {rate_high:g} <= {rate_low * high / low:g})"
            )
        shared = 1.0 / rate_high
        return cls(own=low / rate_low - shared, shared=shared)


#: the paper's receiver: 500/3 Hz with 16 threads, 2000/9 Hz with 32
PAPER_COST = ServiceCost.from_rates(PAPER_MU_16, PAPER_MU_32)


class SharedStage:
    """A stage that serves one event at a time: consecutive slots of ``seconds`` each."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._free_at = -math.inf
        self._lock = threading.Lock()

    def reserve(self, now: float) -> float:
        """Book the next slot for an event arriving at ``now``; return when the slot ends."""
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + self.seconds
            return self._free_at


Done = Callable[[T, float, float], None]


class WorkerPool(Generic[T]):
    """Worker threads taking items from ``fifo`` in order and spending the cost on each.

    ``on_done(item, started, finished)`` is called (in the worker thread) after each item, with
    times from ``clock``. The thread count changes at runtime with :meth:`set_threads`: new workers
    start at once; surplus workers leave after the item they are serving.
    """

    def __init__(
        self,
        fifo: queue.Queue[T],
        cost: ServiceCost,
        threads: int,
        on_done: Done[T] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = 0.1,
    ) -> None:
        self.fifo = fifo
        self.cost = cost
        self.stage = SharedStage(cost.shared)
        self.on_done = on_done
        self.clock = clock
        self.sleep = sleep
        self.poll = poll
        self._lock = threading.Lock()
        self._target = self._check(threads)
        self._workers: dict[int, threading.Thread] = {}
        self._stopping = False
        self._running = threading.Event()
        self._running.set()
        self.processed = 0
        self.busy = 0
        self.service_seconds = 0.0

    @staticmethod
    def _check(threads: int) -> int:
        if not 0 <= threads <= MAX_THREADS:
            raise UserError(f"threads must be between 0 and {MAX_THREADS}")
        return threads

    @property
    def threads(self) -> int:
        """The thread count asked for."""
        return self._target

    @property
    def alive(self) -> int:
        """Worker threads running now (more than asked for while surplus ones finish their item)."""
        with self._lock:
            return len(self._workers)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def start(self) -> None:
        self.set_threads(self._target)

    def set_threads(self, threads: int) -> None:
        with self._lock:
            self._target = self._check(threads)
            if self._stopping:
                return
            for wid in range(self._target):
                if wid not in self._workers:
                    thread = threading.Thread(
                        target=self._work, args=(wid,), name=f"worker-{wid}", daemon=True
                    )
                    self._workers[wid] = thread
                    thread.start()

    def pause(self) -> None:
        """Workers stop taking items (the ones being served finish)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Let every worker finish its item and leave; wait up to ``timeout`` for them."""
        with self._lock:
            self._stopping = True
            threads = list(self._workers.values())
        self._running.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _leave(self, wid: int) -> bool:
        with self._lock:
            if self._stopping or wid >= self._target:
                self._workers.pop(wid, None)
                return True
            return False

    def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self.clock()
        if delay > 0:
            self.sleep(delay)

    def _work(self, wid: int) -> None:
        while not self._leave(wid):
            if not self._running.wait(self.poll):
                continue
            try:
                item = self.fifo.get(timeout=self.poll)
            except queue.Empty:
                continue
            with self._lock:
                self.busy += 1
            started = self.clock()
            try:
                self._sleep_until(started + self.cost.own)
                if self.cost.shared > 0:
                    self._sleep_until(self.stage.reserve(self.clock()))
            finally:
                finished = self.clock()
                with self._lock:
                    self.busy -= 1
                    self.processed += 1
                    self.service_seconds += finished - started
                self.fifo.task_done()
            if self.on_done is not None:
                try:
                    self.on_done(item, started, finished)
                except Exception:  # bookkeeping must not kill a worker
                    log.exception("on_done failed")
