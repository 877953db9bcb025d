"""The receiver's worker pool with real threads: the 16 vs 32 thread service-rate ratio, runtime
thread changes, FIFO order, pause and stop.

The ratio is measured from counts, never from the clock: two saturated pools (16 and 32 threads, the
paper's per-event cost with fixed service times, so the count has no sampling noise) run side by
side on the same machine, and the numbers of events each has completed are compared at one instant.
The cost model gives 4/3 exactly (mu16 = 500/3 Hz, mu32 = 2000/9 Hz); the band allows for start-up
and for scheduling noise on a busy machine. Exponential service times are checked the same way with
a wider band for their sampling noise.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from jiriaf.workloads.stream.protocol import Event
from jiriaf.workloads.stream.receiver import Receiver
from jiriaf.workloads.stream.service import PAPER_COST, ServiceCost, WorkerPool
from support import eventually

pytestmark = pytest.mark.unit


def filled(n: int) -> queue.Queue[int]:
    q: queue.Queue[int] = queue.Queue()
    for i in range(n):
        q.put(i)
    return q


def served_by_16_and_32(cost: ServiceCost, events: int) -> tuple[int, int]:
    """Events completed by saturated 16- and 32-thread pools when the 32-thread one reaches ``events``."""
    backlog = 3 * events  # neither pool can empty its FIFO first
    pools = {n: WorkerPool(filled(backlog), cost, n, seed=n) for n in (16, 32)}
    try:
        for pool in pools.values():
            pool.start()
        eventually(
            lambda: pools[32].processed >= events, timeout=120, what=f"{events} events with 32 threads"
        )
        done16, done32 = pools[16].processed, pools[32].processed
    finally:
        for pool in pools.values():
            pool.stop()
    assert done32 < backlog and done16 < backlog  # both stayed saturated
    return done16, done32


def test_32_threads_serve_four_thirds_of_16_threads() -> None:
    fixed = ServiceCost(own=PAPER_COST.own, contention=PAPER_COST.contention, random=False)
    done16, done32 = served_by_16_and_32(fixed, 700)
    ratio = done32 / done16
    expected = fixed.capacity(32) / fixed.capacity(16)
    assert expected == pytest.approx(4 / 3)
    assert 1.20 <= ratio <= 1.47, f"32/16 thread ratio {ratio:.3f} ({done32}/{done16}), model {expected:.3f}"


def test_exponential_service_times_keep_the_ratio() -> None:
    # ~1500 and ~1125 completions: the ratio's sampling noise is about 4%; the band is 3.5 of that
    done16, done32 = served_by_16_and_32(PAPER_COST, 1500)
    ratio = done32 / done16
    assert 1.15 <= ratio <= 1.53, f"32/16 thread ratio {ratio:.3f} ({done32}/{done16}), model 1.333"


def test_thread_count_changes_at_runtime() -> None:
    q = filled(100_000)
    pool = WorkerPool(q, ServiceCost(own=0.02, random=False), 2)
    try:
        pool.start()
        eventually(lambda: pool.alive == 2 and pool.busy == 2, timeout=30, what="2 busy workers")
        pool.set_threads(6)
        assert pool.threads == 6
        eventually(lambda: pool.alive == 6 and pool.busy == 6, timeout=30, what="6 busy workers")
        before = pool.processed
        pool.set_threads(1)
        eventually(lambda: pool.alive == 1, timeout=30, what="surplus workers to leave")
        eventually(lambda: pool.processed > before + 3, timeout=30, what="the last worker to go on")
        pool.set_threads(0)
        eventually(lambda: pool.alive == 0, timeout=30, what="every worker to leave")
        pool.set_threads(3)
        eventually(lambda: pool.alive == 3, timeout=30, what="3 workers again")
    finally:
        pool.stop()
    assert pool.alive == 0


def test_shrink_then_grow_before_workers_leave_keeps_one_worker_per_slot() -> None:
    pool = WorkerPool(filled(100_000), ServiceCost(own=0.2, random=False), 4)
    try:
        pool.start()
        eventually(lambda: pool.busy == 4, timeout=30, what="4 busy workers")
        pool.set_threads(1)
        pool.set_threads(4)  # the three surplus workers are still serving: they stay
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("worker-"))
        assert names == ["worker-0", "worker-1", "worker-2", "worker-3"]
        assert pool.alive == 4
    finally:
        pool.stop()


def test_one_worker_serves_in_fifo_order_and_reports_each_item() -> None:
    done: list[tuple[int, float, float]] = []
    ready: list[float] = []

    def on_done(i: int, r: float, s: float, f: float) -> None:
        done.append((i, s, f))
        ready.append(r)

    pool = WorkerPool(
        filled(20),
        ServiceCost(own=0.001, contention=0.001, random=False),
        1,
        on_done=on_done,
    )
    try:
        pool.start()
        eventually(lambda: len(done) == 20, timeout=30, what="20 items")
    finally:
        pool.stop()
    assert [i for i, _, _ in done] == list(range(20))
    assert all(f - s >= 0.002 for _, s, f in done)  # each item got at least its cost
    assert pool.processed == 20 and pool.service_seconds >= 20 * 0.002
    # a busy worker is ready for the next item the moment it finished the previous one
    assert all(ready[k] == done[k - 1][2] for k in range(1, 20))
    assert all(r <= s for r, (_, s, _) in zip(ready, done, strict=True))


def wait_sum(receiver: Receiver) -> float:
    value = receiver.metrics.registry.get_sample_value("jiriaf_stream_queue_wait_seconds_sum")
    assert value is not None
    return value


def test_an_event_that_finds_a_free_worker_has_not_queued() -> None:
    receiver = Receiver(ServiceCost(own=0.002, random=False), threads=4, max_queue=100)
    receiver.pool.start()
    try:
        for seq in range(10):  # one at a time: every event finds idle workers
            assert receiver.accept(Event(seq, time.time(), 0))

            def processed(n: int = seq + 1) -> bool:
                return receiver.pool.processed == n

            eventually(processed, timeout=30, what=f"event {seq}")
    finally:
        receiver.pool.stop()
    # only the thread hand-off lay between queueing and service: no wait for a server is counted
    assert wait_sum(receiver) == 0.0


def test_events_held_by_a_pause_count_as_waiting() -> None:
    receiver = Receiver(ServiceCost(own=0.002, random=False), threads=4, max_queue=100)
    receiver.pool.pause()
    receiver.pool.start()
    try:
        queued = time.monotonic()
        for seq in range(3):
            assert receiver.accept(Event(seq, time.time(), 0))
        eventually(lambda: time.monotonic() - queued > 0.3, timeout=30, what="a pause of 0.3 s")
        receiver.pool.resume()
        eventually(lambda: receiver.pool.processed == 3, timeout=30, what="3 events after resume")
    finally:
        receiver.pool.stop()
    assert wait_sum(receiver) >= 3 * 0.3


def test_pause_keeps_items_queued_until_resumed() -> None:
    q: queue.Queue[int] = queue.Queue()
    pool = WorkerPool(q, ServiceCost(own=0.001), 4, poll=0.02)
    try:
        pool.pause()
        pool.start()
        for i in range(10):
            q.put(i)
        time.sleep(0.3)  # many poll periods: a paused pool takes nothing however long it waits
        assert pool.processed == 0 and q.qsize() == 10 and pool.paused
        pool.resume()
        eventually(lambda: pool.processed == 10, timeout=30, what="10 items after resume")
    finally:
        pool.stop()


def test_a_failing_callback_does_not_kill_the_worker() -> None:
    def explode(_item: int, _r: float, _s: float, _f: float) -> None:
        raise RuntimeError("boom")

    pool = WorkerPool(filled(5), ServiceCost(own=0.001), 1, on_done=explode)
    try:
        pool.start()
        eventually(lambda: pool.processed == 5, timeout=30, what="5 items despite the callback")
        assert pool.alive == 1
    finally:
        pool.stop()


def test_thread_count_bounds() -> None:
    from jiriaf.errors import UserError

    with pytest.raises(UserError, match="threads"):
        WorkerPool(filled(0), PAPER_COST, -1)
    pool = WorkerPool(filled(0), PAPER_COST, 1)
    with pytest.raises(UserError, match="threads"):
        pool.set_threads(5000)
