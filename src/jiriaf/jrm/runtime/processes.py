"""Which processes belong to a container, read straight from /proc.

Every process the runtime starts carries the environment marker ``JIRIAF_CONTAINER=<pod_uid>/<name>``,
and children inherit it. A process belongs to a container if

- its ``/proc/<pid>/environ`` holds the container's marker (this finds descendants that left the
  process group with ``setsid`` or a double fork), or
- it is in a process group that holds at least one marked process of the container (this finds
  group members that replaced their environment, for example with ``env -i``).

Zombies are not counted: they are dead and only wait to be reaped. The JRM's own process is never
counted, so a JRM that itself runs inside a marked environment can never signal itself.

Reading ``/proc`` costs a few microseconds per process, but a node with hundreds of pods has
thousands of processes, so :class:`ProcessTable` shares one scan between concurrent callers (the
metrics sampler and many pods being deleted at once) instead of scanning once per container.

Signals go through :func:`send_signal`, which checks that the pid still names the process that was
scanned (same start time) and uses a pidfd when the kernel has them, so a recycled pid is never hit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from jiriaf.jrm.runtime.base import ContainerKey

MARKER_ENV = "JIRIAF_CONTAINER"
_MARKER_PREFIX = MARKER_ENV.encode() + b"="
_PROC = "/proc"


def container_marker(key: ContainerKey) -> str:
    """The value of :data:`MARKER_ENV` that tags every process of ``key``'s container."""
    return f"{key.pod_uid}/{key.container}"


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One process as read from /proc. ``start_ticks`` (clock ticks after boot) tells reused pids apart."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start_ticks: int
    marker: str | None = None


def read_stat(pid: int) -> ProcInfo | None:
    """Parse ``/proc/<pid>/stat``; None if the process does not exist (any more)."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces or parentheses
    end = data.rfind(b")")
    fields = data[end + 2 :].split()
    try:
        return ProcInfo(
            pid=pid,
            state=fields[0].decode(),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            sid=int(fields[3]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def read_marker(pid: int) -> str | None:
    """The container marker in the process's environment, or None (no marker, other user, gone)."""
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    start = data.find(_MARKER_PREFIX)
    while start > 0 and data[start - 1] != 0:  # only at the start of an entry, not inside a value
        start = data.find(_MARKER_PREFIX, start + 1)
    if start < 0:
        return None
    value_start = start + len(_MARKER_PREFIX)
    end = data.find(b"\0", value_start)
    return data[value_start : end if end >= 0 else len(data)].decode(errors="replace")


def boot_time() -> float:
    """Epoch seconds at which the kernel booted (``btime`` in /proc/stat)."""
    with open(f"{_PROC}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def ticks_to_epoch(start_ticks: int) -> float:
    """Convert a process start time in clock ticks after boot to epoch seconds."""
    return boot_time() + start_ticks / CLOCK_TICKS


def scan() -> list[ProcInfo]:
    """Every live (non-zombie) process except this one, with its container marker if it has one."""
    own = os.getpid()
    found: list[ProcInfo] = []
    for name in os.listdir(_PROC):  # noqa: PTH208 - plain names are faster than Path objects here
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == own:
            continue
        info = read_stat(pid)
        if info is None or info.state in ("Z", "X", "x"):
            continue
        found.append(replace(info, marker=read_marker(pid)))
    return found


@dataclass(frozen=True)
class Snapshot:
    """The processes seen by one scan of /proc; ``taken_at`` is ``time.monotonic()`` when it began."""

    taken_at: float
    procs: tuple[ProcInfo, ...]

    def members(self, marker: str) -> list[ProcInfo]:
        """Processes of the container tagged ``marker``: marked ones and members of their groups."""
        marked = [p for p in self.procs if p.marker == marker]
        groups = {p.pgid for p in marked}
        return marked + [p for p in self.procs if p.marker is None and p.pgid in groups]

    def by_marker(self) -> dict[str, list[ProcInfo]]:
        """Processes of every container on the node, keyed by marker (one pass)."""
        result: dict[str, list[ProcInfo]] = {}
        group_marker: dict[int, str] = {}
        for p in self.procs:
            if p.marker is not None:
                result.setdefault(p.marker, []).append(p)
                group_marker.setdefault(p.pgid, p.marker)
        for p in self.procs:
            if p.marker is None and p.pgid in group_marker:
                result[group_marker[p.pgid]].append(p)
        return result


def take_snapshot() -> Snapshot:
    """Scan /proc now (blocking)."""
    started = time.monotonic()
    return Snapshot(started, tuple(scan()))


def container_pids(marker: str) -> list[int]:
    """Every live pid of the container tagged ``marker`` (group members and tagged leavers), sorted."""
    return sorted(p.pid for p in take_snapshot().members(marker))


def all_container_pids() -> dict[str, list[int]]:
    """Every live pid of every container on the node, keyed by marker, from a single scan."""
    return {m: sorted(p.pid for p in ps) for m, ps in take_snapshot().by_marker().items()}


def send_signal(proc: ProcInfo, sig: int) -> bool:
    """Signal ``proc`` if its pid still names the same process; True if the signal was sent."""
    pidfd: int | None = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            return False
        except OSError:  # kernel without pidfds: fall back to a checked kill()
            pidfd = None
    try:
        # with a pidfd open, the check below and the signal refer to the same process
        current = read_stat(proc.pid)
        if current is None or current.start_ticks != proc.start_ticks:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(proc.pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def signal_all(procs: Iterable[ProcInfo], sig: int) -> int:
    """Signal each process (identity-checked); return how many were signalled."""
    return sum(send_signal(p, sig) for p in procs)


class ProcessTable:
    """Shared, coalesced /proc snapshots for asyncio code.

    ``await table.snapshot(newer_than=t)`` returns a snapshot whose scan began at or after ``t``
    (``time.monotonic()``). At most one scan runs at a time, plus one queued scan that every caller
    arriving during the running one shares, so hundreds of concurrent callers (many pods deleted at
    once) cost two scans, not hundreds. Scans run in a worker thread so the event loop stays
    responsive on nodes with many processes.
    """

    def __init__(self) -> None:
        self._last: Snapshot | None = None
        self._running: tuple[float, asyncio.Task[Snapshot]] | None = None
        self._queued: asyncio.Task[Snapshot] | None = None

    async def snapshot(self, newer_than: float | None = None) -> Snapshot:
        """A snapshot whose scan started at or after ``newer_than`` (default: now)."""
        if newer_than is None:
            newer_than = time.monotonic()
        last = self._last
        if last is not None and last.taken_at >= newer_than:
            return last
        running = self._running
        if self._queued is not None:  # it starts after the running scan ends, so after now
            task = self._queued
        elif running is None:
            started = time.monotonic()
            task = asyncio.create_task(self._scan(started))
            self._running = (started, task)
        elif running[0] >= newer_than:
            task = running[1]
        else:  # the running scan is too old for this caller: share the next one
            task = self._queued = asyncio.create_task(self._scan_after(running[1]))
        # shield: a caller that is cancelled must not cancel the scan other callers wait for
        return await asyncio.shield(task)

    async def _scan_after(self, previous: asyncio.Task[Snapshot]) -> Snapshot:
        await asyncio.wait([previous])
        started = time.monotonic()
        current = asyncio.current_task()
        assert current is not None
        self._running, self._queued = (started, current), None
        return await self._scan(started)

    async def _scan(self, started: float) -> Snapshot:
        try:
            procs = await asyncio.to_thread(scan)
        finally:
            if self._running is not None and self._running[0] == started:
                self._running = None
        snap = Snapshot(started, tuple(procs))
        if self._last is None or self._last.taken_at < started:
            self._last = snap
        return snap

    def close(self) -> None:
        """Cancel the scans in flight (used when the runtime shuts down)."""
        for task in (self._queued, self._running[1] if self._running else None):
            if task is not None:
                task.cancel()
        self._running = self._queued = None


__all__ = [
    "MARKER_ENV",
    "ProcInfo",
    "ProcessTable",
    "Snapshot",
    "all_container_pids",
    "boot_time",
    "container_marker",
    "container_pids",
    "read_marker",
    "read_stat",
    "scan",
    "send_signal",
    "signal_all",
    "take_snapshot",
    "ticks_to_epoch",
]
