"""jiriaf.jrm.metrics.Sampler on real processes tagged like the runtime tags them: every process of
a container is found (also one that left the group), processes are told apart within and across
containers, and CPU of ended children stays in the counter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TypeGuard

import psutil
import pytest

from jiriaf.jrm.metrics import ContainerRef, ContainerUsage, ProcessReading, Sampler, read_process
from jiriaf.jrm.runtime.processes import MARKER_ENV, read_stat
from support import eventually

pytestmark = pytest.mark.unit

BURN = "import time\nwhile time.process_time()<{s}: pass\n"  # burns {s} seconds of CPU


class Container:
    """A shell started in its own session with a container marker, as the runtime starts one."""

    def __init__(self, script: str) -> None:
        self.uid = uuid.uuid4().hex
        self.marker = f"{self.uid}/main"
        env = {"PATH": os.environ["PATH"], MARKER_ENV: self.marker}
        self.proc = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
        self.ref = ContainerRef(
            "ns", f"pod-{self.uid[:6]}", self.uid, "main", self.marker, time.time(), self.proc.pid
        )

    def stop(self) -> None:
        """Kill every process that carries the marker (the group and leavers), by pid."""
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARKER_ENV) == self.marker:
                    p.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        self.proc.wait(10)


@pytest.fixture()
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.stop()


def start(made: list[Container], script: str) -> Container:
    c = Container(script)
    made.append(c)
    return c


def only(usages: tuple[ContainerUsage, ...], ref: ContainerRef) -> ContainerUsage | None:
    found = [u for u in usages if u.ref == ref]
    return found[0] if found else None


def test_finds_every_process_including_a_leaver_and_tells_them_apart(containers: list[Container]) -> None:
    py = sys.executable
    a = start(containers, f"{py} -c '{BURN.format(s=60)}' & setsid sleep 60 & wait")
    b = start(containers, "sleep 60 & wait")
    sampler = Sampler()

    def settled(u: ContainerUsage | None, names: set[str]) -> TypeGuard[ContainerUsage]:
        """Every process has exec'd its program (a fresh fork still bears its parent's name)."""
        return u is not None and {p.name.rstrip("0123456789.") for p in u.processes} == names

    def both() -> tuple[ContainerUsage, ContainerUsage] | None:
        s = sampler.sample([a.ref, b.ref])
        ua, ub = only(s.containers, a.ref), only(s.containers, b.ref)
        if settled(ua, {"sh", "python", "sleep"}) and settled(ub, {"sh", "sleep"}):
            leaver = next(p for p in ua.processes if p.name == "sleep")
            if leaver.pgid != a.proc.pid:  # it left the group with setsid and is still counted
                return ua, ub
        return None

    ua, ub = eventually(both, timeout=30, what="both containers with all their processes")
    assert len(ua.processes) == 3 and len(ub.processes) == 2
    assert {p.pid for p in ua.processes}.isdisjoint({p.pid for p in ub.processes})

    # the burning process is the one with the CPU; the others have (almost) none
    def burning_process() -> ProcessReading | None:
        u = only(sampler.sample([a.ref]).containers, a.ref)
        assert u is not None  # eventually retries until the container is sampled
        return next((p for p in u.processes if p.cpu_user + p.cpu_system > 0.2), None)

    burning = eventually(
        burning_process,
        timeout=30,
        what="CPU of the burning process",
    )
    assert burning.name not in ("sh", "sleep")
    assert ua.working_set == ua.rss > 0 and 0 < ua.pss <= ua.rss and ua.threads >= 3


def test_cpu_of_an_ended_child_stays_in_the_counter(containers: list[Container]) -> None:
    py = sys.executable
    c = start(containers, f"{py} -c '{BURN.format(s=1.0)}'; sleep 60")
    sampler = Sampler()
    seen: list[float] = []

    def child_gone() -> bool:
        s = only(sampler.sample([c.ref]).containers, c.ref)
        assert s is not None
        seen.append(s.cpu_seconds)
        return len(s.processes) == 2 and any(p.name == "sleep" for p in s.processes)

    eventually(child_gone, timeout=30, interval=0.2, what="the burning child to end")
    assert seen == sorted(seen)
    assert seen[-1] >= 0.8  # the child's second of CPU moved into the shell's reaped-children time


def test_cpu_of_a_leaver_that_ended_is_retired_into_the_counter(containers: list[Container]) -> None:
    py = sys.executable
    c = start(containers, f"(setsid {py} -c '{BURN.format(s=1.5)}' &); sleep 60")
    sampler = Sampler()
    peak = 0.0

    def leaver_ran_and_ended() -> bool:
        nonlocal peak
        s = only(sampler.sample([c.ref]).containers, c.ref)
        assert s is not None
        peak = max(peak, sum(p.cpu_user + p.cpu_system for p in s.processes if p.name not in ("sh", "sleep")))
        return peak > 0.5 and not any(p.name not in ("sh", "sleep") for p in s.processes)

    eventually(leaver_ran_and_ended, timeout=30, interval=0.2, what="the leaver to burn CPU and end")
    final = only(sampler.sample([c.ref]).containers, c.ref)
    assert final is not None and final.cpu_seconds >= peak


def test_container_without_live_processes_is_not_reported() -> None:
    ref = ContainerRef("ns", "gone", "nouid", "main", "nouid/main", time.time())
    s = Sampler().sample([ref])
    assert s.containers == ()
    assert s.node.cpu_seconds > 0 and s.node.working_set > 0  # the JRM (this process) itself


def test_read_process_of_this_process() -> None:
    info = read_stat(os.getpid())
    assert info is not None
    from jiriaf.jrm.runtime.processes import boot_time

    r = read_process(info, boot_time())
    assert r is not None
    assert r.pid == os.getpid() and r.rss > 0 and 0 < r.pss <= r.rss and r.threads >= 1
    assert abs(r.started_at - psutil.Process().create_time()) < 1.0
    assert read_process(info.__class__(2**22 + 7, 1, 1, 1, "S", 0), boot_time()) is None  # no such pid
