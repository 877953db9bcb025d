"""Resource usage of the JRM's containers, sampled per process with psutil.

A container is every live process that carries its marker or shares a process group with one
(:mod:`jiriaf.jrm.runtime.processes`), so processes that left the group (``setsid``, double fork)
still count. One /proc scan per sample finds the processes of every container; each process is
then read with psutil (CPU times, RSS, PSS, threads, open files, I/O bytes, context switches).

Counters must not go down when processes end. :class:`ContainerAccount` keeps them monotone:

- The CPU time and I/O of a child that its parent reaped move into the parent's counters
  (``cpu_times().children_*``; Linux adds reaped children's I/O to ``/proc/<pid>/io``), so a
  process that vanished while its parent (or, through other vanished processes, an ancestor) in
  the container is still alive is *covered* and nothing is added.
- A process that vanished otherwise (a leaver reaped by init, the last processes of a group) is
  *retired*: its last reading is added to the container's retired totals.
- Each counter is never reported below its previous value, which hides the short gap while a
  finished child waits, as a zombie, to be reaped.

What is still lost: work done between a process's last sample and its exit when no container
process reaps it, children reaped by a parent that ignores SIGCHLD, and context switches of reaped
children. Where the container has a cgroup v2 of its own (delegated; every process of the cgroup
belongs to the container), CPU comes from the cgroup's ``cpu.stat`` and the working set from
``memory.current`` minus ``inactive_file``, which are exact.

A container's working set (what ``kubectl top`` and HPAs see) is the sum of its processes' RSS, as
SLURM's default job accounting counts it, or its cgroup's figure when it has one. RSS counts pages
shared between processes once per process, so the sum of PSS (shared pages divided among their
users) is reported beside it for workloads of forked workers. The node's figures are
those of the JRM process plus its containers (not of the whole host, which a JRM often shares or
advertises only in part), with the CPU of ended container runs kept in the node counter.

metrics-server drops a pod if any container reports zero CPU, so a container's CPU counter starts
at :data:`MIN_CPU_SECONDS`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from jiriaf.jrm.runtime import processes
from jiriaf.jrm.runtime.processes import ProcInfo

MIN_CPU_SECONDS = 1e-6  # reported for a container that has not yet used one clock tick of CPU


# ---------------------------------------------------------------------------------------- readings


@dataclass(frozen=True, slots=True)
class ProcessReading:
    """One process, read once. CPU in seconds, memory in bytes (``pss`` falls back to RSS)."""

    pid: int
    ppid: int
    pgid: int
    start_ticks: int
    name: str
    started_at: float
    cpu_user: float
    cpu_system: float
    children_user: float = 0.0
    children_system: float = 0.0
    rss: int = 0
    pss: int = 0
    threads: int = 1
    open_fds: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    ctx_voluntary: int = 0
    ctx_involuntary: int = 0

    @property
    def identity(self) -> tuple[int, int]:
        """(pid, start time in ticks): a recycled pid is another process."""
        return (self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class CgroupReading:
    """Figures of a container's own cgroup v2 (``path`` relative to the cgroup2 mount)."""

    path: str
    cpu_user: float
    cpu_system: float
    memory_current: int
    inactive_file: int

    @property
    def working_set(self) -> int:
        """As the kubelet defines it: usage minus inactive file pages, never negative."""
        return max(0, self.memory_current - self.inactive_file)


def read_process(info: ProcInfo, boot_time: float) -> ProcessReading | None:
    """Read one process with psutil; None if it is gone. Fields it may not read (another user's
    I/O counters or smaps) fall back to zero, or to RSS for the working set."""
    try:
        proc = psutil.Process(info.pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            mem = proc.memory_info()
            threads = proc.num_threads()
            ctx = proc.num_ctx_switches()
            name = proc.name()
            pss = mem.rss
            with contextlib.suppress(psutil.AccessDenied, OSError):
                full = proc.memory_full_info()
                pss = int(getattr(full, "pss", mem.rss))
            fds = 0
            with contextlib.suppress(psutil.AccessDenied, OSError):
                fds = proc.num_fds()
            read_bytes = write_bytes = 0
            with contextlib.suppress(psutil.AccessDenied, OSError, AttributeError):
                io = proc.io_counters()
                read_bytes, write_bytes = io.read_bytes, io.write_bytes
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ProcessLookupError):
        return None
    return ProcessReading(
        pid=info.pid,
        ppid=info.ppid,
        pgid=info.pgid,
        start_ticks=info.start_ticks,
        name=name,
        started_at=boot_time + info.start_ticks / processes.CLOCK_TICKS,
        cpu_user=cpu.user,
        cpu_system=cpu.system,
        children_user=cpu.children_user,
        children_system=cpu.children_system,
        rss=mem.rss,
        pss=pss,
        threads=threads,
        open_fds=fds,
        read_bytes=read_bytes,
        write_bytes=write_bytes,
        ctx_voluntary=ctx.voluntary,
        ctx_involuntary=ctx.involuntary,
    )


# ------------------------------------------------------------------------------------------ cgroups


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``), if anywhere."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            parts = left.split()
            if len(parts) >= 5:
                return Path(parts[4])
    return None


def process_cgroup(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The cgroup v2 path of a process (the ``0::<path>`` line of ``/proc/<pid>/cgroup``)."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or None
    return None


def exclusive_cgroup(
    pids: Sequence[int], mount: Path, own_cgroup: str | None, proc_root: Path = Path("/proc")
) -> str | None:
    """The cgroup v2 that holds exactly the container's processes, or None.

    All of ``pids`` must be in one cgroup other than the root and the JRM's own, and every process
    of that cgroup (``cgroup.procs``) must be one of ``pids``; only then do its counters describe
    the container alone.
    """
    if not pids:
        return None
    first = process_cgroup(pids[0], proc_root)
    if first is None or first == "/" or first == own_cgroup:
        return None
    if any(process_cgroup(pid, proc_root) != first for pid in pids[1:]):
        return None
    try:
        members = {int(x) for x in (mount / first.lstrip("/") / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return None
    return first if members and members <= set(pids) else None


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def read_cgroup(mount: Path, path: str) -> CgroupReading | None:
    """``cpu.stat`` and ``memory.current``/``memory.stat`` of a cgroup; None when unreadable."""
    base = mount / path.lstrip("/")
    try:
        cpu = _keyed((base / "cpu.stat").read_text())
        current = int((base / "memory.current").read_text().strip())
        memstat = _keyed((base / "memory.stat").read_text())
    except (OSError, ValueError):
        return None
    if "user_usec" not in cpu or "system_usec" not in cpu:
        return None
    return CgroupReading(
        path=path,
        cpu_user=cpu["user_usec"] / 1e6,
        cpu_system=cpu["system_usec"] / 1e6,
        memory_current=current,
        inactive_file=memstat.get("inactive_file", 0),
    )


# --------------------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class ContainerRef:
    """A running container, as the pod controller knows it."""

    namespace: str
    pod: str
    pod_uid: str
    container: str
    marker: str  # the JIRIAF_CONTAINER value of its processes
    started_at: float  # start of the current run (epoch seconds)
    pgid: int | None = None

    @property
    def run(self) -> tuple[str, str, float]:
        """Identifies one run: a restarted container starts new counters, as the kubelet's do."""
        return (self.pod_uid, self.container, self.started_at)


@dataclass
class Counters:
    """Cumulative figures of a container: seconds, bytes, switches."""

    cpu_user: float = 0.0
    cpu_system: float = 0.0
    read_bytes: int = 0
    write_bytes: int = 0
    ctx_voluntary: int = 0
    ctx_involuntary: int = 0

    def add_process(self, p: ProcessReading) -> None:
        """Add a process with the children it reaped."""
        self.cpu_user += p.cpu_user + p.children_user
        self.cpu_system += p.cpu_system + p.children_system
        self.read_bytes += p.read_bytes
        self.write_bytes += p.write_bytes
        self.ctx_voluntary += p.ctx_voluntary
        self.ctx_involuntary += p.ctx_involuntary

    def plus(self, other: Counters) -> Counters:
        return Counters(
            self.cpu_user + other.cpu_user,
            self.cpu_system + other.cpu_system,
            self.read_bytes + other.read_bytes,
            self.write_bytes + other.write_bytes,
            self.ctx_voluntary + other.ctx_voluntary,
            self.ctx_involuntary + other.ctx_involuntary,
        )

    def at_least(self, floor: Counters) -> Counters:
        """Each field no lower than ``floor``'s (counters never go down)."""
        return Counters(
            max(self.cpu_user, floor.cpu_user),
            max(self.cpu_system, floor.cpu_system),
            max(self.read_bytes, floor.read_bytes),
            max(self.write_bytes, floor.write_bytes),
            max(self.ctx_voluntary, floor.ctx_voluntary),
            max(self.ctx_involuntary, floor.ctx_involuntary),
        )


@dataclass(frozen=True)
class ContainerUsage:
    """A container at one sample: monotone counters, current gauges and its processes."""

    ref: ContainerRef
    timestamp: float
    counters: Counters
    rss: int
    pss: int
    working_set: int
    threads: int
    open_fds: int
    processes: tuple[ProcessReading, ...]
    cpu_rate: float | None = None  # cores, over the time since the previous sample
    cgroup: str | None = None  # the container's own cgroup when its figures came from there

    @property
    def cpu_seconds(self) -> float:
        """Cumulative CPU, never below :data:`MIN_CPU_SECONDS`."""
        return max(MIN_CPU_SECONDS, self.counters.cpu_user + self.counters.cpu_system)


def covered(vanished: ProcessReading, gone: Mapping[int, ProcessReading], alive: set[int]) -> bool:
    """Whether a vanished process's counters live on in a live container process that reaped it.

    Walks up the last known parents through processes that vanished in the same interval: reaching
    a live member of the container means covered; reaching anything else means retired.
    """
    seen: set[int] = set()
    ppid = vanished.ppid
    while ppid not in seen:
        if ppid in alive:
            return True
        parent = gone.get(ppid)
        if parent is None:
            return False
        seen.add(ppid)
        ppid = parent.ppid
    return False


class ContainerAccount:
    """Keeps the counters of one container run monotone across processes that come and go."""

    def __init__(self, ref: ContainerRef) -> None:
        self.ref = ref
        self.seen: dict[tuple[int, int], ProcessReading] = {}
        self.retired = Counters()
        self.last = Counters()
        self.last_time: float | None = None
        self.last_cpu: float | None = None

    def update(
        self, readings: Sequence[ProcessReading], now: float, cgroup: CgroupReading | None = None
    ) -> ContainerUsage:
        current = {p.identity: p for p in readings}
        gone_list = [p for key, p in self.seen.items() if key not in current]
        if gone_list:
            alive = {p.pid for p in readings}
            gone = {p.pid: p for p in gone_list}
            for p in gone_list:
                if not covered(p, gone, alive):
                    self.retired.add_process(p)
        self.seen = current
        live = Counters()
        for p in readings:
            live.add_process(p)
        total = self.retired.plus(live)
        rss = sum(p.rss for p in readings)
        working_set = rss
        if cgroup is not None:
            total.cpu_user, total.cpu_system = cgroup.cpu_user, cgroup.cpu_system
            working_set = cgroup.working_set
        total = total.at_least(self.last)
        cpu = total.cpu_user + total.cpu_system
        rate = None
        if self.last_time is not None and self.last_cpu is not None and now > self.last_time:
            rate = max(0.0, (cpu - self.last_cpu) / (now - self.last_time))
        self.last, self.last_time, self.last_cpu = total, now, cpu
        return ContainerUsage(
            ref=self.ref,
            timestamp=now,
            counters=total,
            rss=rss,
            pss=sum(p.pss for p in readings),
            working_set=working_set,
            threads=sum(p.threads for p in readings),
            open_fds=sum(p.open_fds for p in readings),
            processes=tuple(sorted(readings, key=lambda p: p.pid)),
            cpu_rate=rate,
            cgroup=cgroup.path if cgroup is not None else None,
        )


@dataclass(frozen=True)
class NodeUsage:
    """The node: the JRM process and its containers."""

    timestamp: float
    cpu_seconds: float
    working_set: int
    rss: int
    start_time: float
    cpu_rate: float | None = None
    jrm: ProcessReading | None = None


@dataclass(frozen=True)
class Sample:
    """Everything one sampling pass found. ``duration`` is how long the pass took."""

    timestamp: float
    duration: float
    node: NodeUsage
    containers: tuple[ContainerUsage, ...]
    process_count: int = 0

    def by_pod(self) -> dict[tuple[str, str, str], list[ContainerUsage]]:
        """Containers grouped by (namespace, pod, pod uid), in sample order."""
        pods: dict[tuple[str, str, str], list[ContainerUsage]] = {}
        for c in self.containers:
            pods.setdefault((c.ref.namespace, c.ref.pod, c.ref.pod_uid), []).append(c)
        return pods


@dataclass
class NodeAccount:
    """The node's CPU counter: the JRM's own time, live container runs, and ended runs."""

    retired_cpu: float = 0.0
    last_cpu: float = 0.0
    last_time: float | None = None
    runs: dict[tuple[str, str, float], float] = field(default_factory=dict)

    def update(
        self, jrm_cpu: float, containers: Iterable[ContainerUsage], now: float
    ) -> tuple[float, float | None]:
        """Return the node's cumulative CPU seconds and its rate since the previous update."""
        current = {c.ref.run: c.cpu_seconds for c in containers}
        for run, cpu in self.runs.items():
            if run not in current:
                self.retired_cpu += cpu
        self.runs = current
        total = max(self.last_cpu, jrm_cpu + self.retired_cpu + sum(current.values()))
        rate = None
        if self.last_time is not None and now > self.last_time:
            rate = max(0.0, (total - self.last_cpu) / (now - self.last_time))
        self.last_cpu, self.last_time = total, now
        return total, rate


# ----------------------------------------------------------------------------------------- sampling


class Sampler:
    """Samples the given containers (blocking: call it from a worker thread, one call at a time)."""

    def __init__(self, *, use_cgroups: bool = True, proc_root: Path = Path("/proc")) -> None:
        self.accounts: dict[tuple[str, str, float], ContainerAccount] = {}
        self.node = NodeAccount()
        self.proc_root = proc_root
        self.own = psutil.Process(os.getpid())
        self.started_at = self.own.create_time()
        self.cgroup_mount = cgroup2_mount() if use_cgroups else None
        self.own_cgroup = process_cgroup(os.getpid(), proc_root) if self.cgroup_mount else None

    def _container_cgroup(self, pids: Sequence[int]) -> CgroupReading | None:
        if self.cgroup_mount is None:
            return None
        path = exclusive_cgroup(pids, self.cgroup_mount, self.own_cgroup, self.proc_root)
        return read_cgroup(self.cgroup_mount, path) if path else None

    def sample(self, refs: Sequence[ContainerRef]) -> Sample:
        started = time.monotonic()
        snapshot = processes.take_snapshot()
        members = snapshot.by_marker()
        boot = processes.boot_time()
        now = time.time()
        containers: list[ContainerUsage] = []
        live_runs = set()
        count = 0
        for ref in refs:
            infos = members.get(ref.marker, [])
            readings = [r for r in (read_process(i, boot) for i in infos) if r is not None]
            if not readings:
                continue  # nothing left of the run (it is ending): not reported, as the kubelet does
            count += len(readings)
            account = self.accounts.get(ref.run)
            if account is None:
                account = self.accounts[ref.run] = ContainerAccount(ref)
            live_runs.add(ref.run)
            cgroup = self._container_cgroup([r.pid for r in readings])
            containers.append(account.update(readings, now, cgroup))
        for run in [r for r in self.accounts if r not in live_runs]:
            del self.accounts[run]
        jrm = self._read_self()
        jrm_cpu = jrm.cpu_user + jrm.cpu_system if jrm else 0.0
        cpu, rate = self.node.update(jrm_cpu, containers, now)
        jrm_rss = jrm.rss if jrm else 0
        node = NodeUsage(
            timestamp=now,
            cpu_seconds=max(cpu, MIN_CPU_SECONDS),
            working_set=max(1, jrm_rss + sum(c.working_set for c in containers)),
            rss=jrm_rss + sum(c.rss for c in containers),
            start_time=self.started_at,
            cpu_rate=rate,
            jrm=jrm,
        )
        return Sample(
            timestamp=now,
            duration=time.monotonic() - started,
            node=node,
            containers=tuple(containers),
            process_count=count,
        )

    def _read_self(self) -> ProcessReading | None:
        info = processes.read_stat(os.getpid())
        if info is None:
            return None
        return read_process(info, processes.boot_time())


__all__ = [
    "MIN_CPU_SECONDS",
    "CgroupReading",
    "ContainerAccount",
    "ContainerRef",
    "ContainerUsage",
    "Counters",
    "NodeAccount",
    "NodeUsage",
    "ProcessReading",
    "Sample",
    "Sampler",
    "cgroup2_mount",
    "covered",
    "exclusive_cgroup",
    "process_cgroup",
    "read_cgroup",
    "read_process",
]
