"""The receiver's service: a FIFO served by N worker threads, and the per-event cost model.

**Cost model.** A worker spends on each event ``own`` seconds of its own work plus ``contention``
seconds for every worker thread the pool runs (the workers share the node's memory bandwidth,
caches and network link, so each one is slower when there are more of them). The mean service time
per event is ``s(N) = own + contention * N`` and N busy workers complete

    mu(N) = N / (own + contention * N)   events per second.

The paper's receiver (Tables 8 and 9; see ``docs/twin.md``) has mu(16) = 500/3 Hz and
mu(32) = 2000/9 Hz (ratio 4/3); :meth:`ServiceCost.from_rates` gives the costs that reproduce both:
s(16) = 96 ms and s(32) = 144 ms, so contention = 3 ms and own = 48 ms.

**Service times** are exponential with that mean by default, which makes the receiver the M/M/c
queue that the digital twin's queueing model assumes (c threads, each serving at mu(c) / c): the
queue then carries the load information the twin reads, at 32 threads as well as at 16.
``random=False`` gives fixed service times (every event exactly the mean).

The work is a sleep: ERSAP services wait on data, and a sleep is what lets the rates hold on a
2-core machine whatever the GIL does; a busy-CPU cost could not scale with threads in one process.
"""

from __future__ import annotations

import logging
import math
import queue
import random as random_module
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
    """Per-event cost: ``own`` seconds plus ``contention`` seconds per worker thread in the pool.

    ``random``: exponential service times with that mean (the default), else fixed ones.
    """

    own: float
    contention: float = 0.0
    random: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.own) and math.isfinite(self.contention)):
            raise UserError("per-event costs must be finite numbers")
        if self.own < 0 or self.contention < 0:
            raise UserError("per-event costs must not be negative")
        if self.own + self.contention <= 0:
            raise UserError("the per-event cost must be positive")

    def mean_seconds(self, threads: int) -> float:
        """Mean service time of one event when the pool runs ``threads`` workers."""
        return self.own + self.contention * max(threads, 1)

    def capacity(self, threads: int) -> float:
        """Events per second that ``threads`` busy workers complete."""
        if threads < 1:
            return 0.0
        return threads / self.mean_seconds(threads)

    def sample(self, threads: int, rng: random_module.Random) -> float:
        """One event's service time (seconds) in a pool of ``threads`` workers."""
        mean = self.mean_seconds(threads)
        return rng.expovariate(1.0 / mean) if self.random else mean

    @classmethod
    def from_rates(
        cls, rate_low: float, rate_high: float, low: int = 16, high: int = 32, random: bool = True
    ) -> ServiceCost:
        """The costs under which ``low`` workers complete ``rate_low`` and ``high`` complete ``rate_high``.

        Needs ``low < high`` and ``rate_low <= rate_high <= rate_low * high / low``: more workers
        never serve fewer events, and at best they scale linearly (no contention).
        """
        if not 1 <= low < high:
            raise UserError("need 1 <= low threads < high threads")
        if not 0 < rate_low <= rate_high <= rate_low * high / low:
            raise UserError(
                f"rates {rate_low:g} Hz ({low} threads) and {rate_high:g} Hz ({high} threads) cannot "
                f"come from this cost model (need {rate_low:g} <= {rate_high:g} <= {rate_low * high / low:g})"
            )
        s_low, s_high = low / rate_low, high / rate_high
        contention = max(0.0, (s_high - s_low) / (high - low))
        return cls(own=max(0.0, s_low - contention * low), contention=contention, random=random)


#: the paper's receiver: 500/3 Hz with 16 threads, 2000/9 Hz with 32 (48 ms + 3 ms per thread)
PAPER_COST = ServiceCost.from_rates(PAPER_MU_16, PAPER_MU_32)


Done = Callable[[T, float, float, float], None]


class WorkerPool(Generic[T]):
    """Worker threads taking items from ``fifo`` in order and spending the cost on each.

    ``on_done(item, ready, started, finished)`` is called (in the worker thread) after each item,
    with times from ``clock``: ``ready`` is when the worker became free to take it (it finished its
    previous item, started, or was resumed), so an item queued before ``ready`` waited
    ``ready - queued`` for a server, and one queued after it did not wait for a server at all (the
    time between is the thread hand-off, not queueing).

    The thread count changes at runtime with :meth:`set_threads`: new workers start at once; surplus
    workers leave after the item they are serving. ``seed`` makes the service times reproducible
    (one generator, shared by the workers).
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
        seed: int | None = None,
    ) -> None:
        self.fifo = fifo
        self.cost = cost
        self.rng = random_module.Random(seed)
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
        ready = self.clock()
        while not self._leave(wid):
            if not self._running.is_set():
                if not self._running.wait(self.poll):
                    continue
                ready = self.clock()  # a paused worker was not free to serve
            try:
                item = self.fifo.get(timeout=self.poll)
            except queue.Empty:
                continue
            with self._lock:
                self.busy += 1
            started = self.clock()
            try:
                self._sleep_until(started + self.cost.sample(self._target, self.rng))
            finally:
                finished = self.clock()
                with self._lock:
                    self.busy -= 1
                    self.processed += 1
                    self.service_seconds += finished - started
                self.fifo.task_done()
            if self.on_done is not None:
                try:
                    self.on_done(item, ready, started, finished)
                except Exception:  # bookkeeping must not kill a worker
                    log.exception("on_done failed")
            ready = finished
