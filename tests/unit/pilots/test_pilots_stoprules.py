"""The JRM's idle rule: stop after ``timeout`` seconds without an active or arriving pod."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from jiriaf.jrm.stoprules import IDLE_REASON, IdleClock, idle_watch

pytestmark = pytest.mark.unit


def test_clock_idle_since_start_without_pods() -> None:
    clock = IdleClock(now=100.0)
    assert clock.observe(100.0, []) == 0
    assert clock.observe(130.0, []) == 30


def test_clock_active_pods_reset_it() -> None:
    clock = IdleClock(now=0.0)
    assert clock.observe(10.0, [("a", False)]) == 0  # running
    assert clock.observe(20.0, [("a", False)]) == 0
    assert clock.observe(25.0, [("a", True)]) == 5  # finished at some point after 20
    assert clock.observe(40.0, [("a", True)]) == 20


def test_clock_a_new_pod_is_activity_even_if_already_finished() -> None:
    clock = IdleClock(now=0.0)
    clock.observe(10.0, [("a", True)])
    assert clock.observe(50.0, [("a", True)]) == 40
    assert clock.observe(60.0, [("a", True), ("b", True)]) == 0  # b arrived
    assert clock.observe(70.0, [("b", True)]) == 10  # a deleted: not activity


@dataclass
class Worker:
    terminal: bool = False


@dataclass
class Pods:
    """Stands in for the pod controller: the watcher only reads ``workers`` (uid -> worker)."""

    workers: dict[str, Worker] = field(default_factory=dict)


async def test_watch_stops_an_idle_node() -> None:
    reasons: list[str] = []
    await asyncio.wait_for(idle_watch(Pods(), 0.2, reasons.append, interval=0.05), 30)
    assert reasons == [IDLE_REASON]


async def test_watch_waits_while_a_pod_is_active() -> None:
    pods = Pods({"u1": Worker(terminal=False)})
    reasons: list[str] = []
    task = asyncio.create_task(idle_watch(pods, 0.2, reasons.append, interval=0.05))
    await asyncio.sleep(0.6)  # three timeouts' worth with an active pod
    assert reasons == [] and not task.done()
    pods.workers["u1"].terminal = True
    await asyncio.wait_for(task, 30)
    assert reasons == [IDLE_REASON]


async def test_watch_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        await idle_watch(Pods(), 0, lambda _r: None)
