"""The runtime interface: how a container becomes processes, seen from the pod controller.

In the spirit of virtual-kubelet's provider interface, the Kubernetes side never knows how
processes are run. It hands a :class:`ContainerLaunch` to :meth:`Runtime.start`, stops with
:meth:`Runtime.stop`, and learns facts with :meth:`Runtime.inspect`. After a restart of the JRM,
:meth:`Runtime.adopt` rebuilds the facts of every container from what is on disk and in /proc.
A runtime that notices exits itself (``notifies_exits``) calls :attr:`Runtime.exit_listener` with the
container's key, so the controller reacts to an exit at once instead of polling for it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ContainerKey:
    """Identifies one run of one container of one pod (the pod's uid tells apart recreated pods)."""

    namespace: str
    pod: str
    pod_uid: str
    container: str


@dataclass(frozen=True)
class ContainerLaunch:
    """Everything needed to start a container as a process group. Paths are already resolved."""

    key: ContainerKey
    argv: list[str]
    env: dict[str, str]
    working_dir: Path
    container_dir: Path  # <workdir>/<namespace>/<pod>/containers/<container>/
    restart_count: int = 0


@dataclass(frozen=True)
class ContainerFacts:
    """What the runtime knows about the latest run of a container. Times are epoch seconds."""

    key: ContainerKey
    running: bool
    pid: int | None = None
    pgid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None  # None while running; 128+N when killed by signal N
    signal: int | None = None
    restart_count: int = 0
    # exit codes of earlier runs are kept by the pod controller; the runtime keeps the last run's
    previous: ContainerFacts | None = None
    pids: list[int] = field(default_factory=list)  # every live process of the container
    # a note from the runtime when a fact was inferred rather than observed (for example the exit
    # code of a run whose processes were all SIGKILLed before anything recorded its status)
    message: str | None = None


class Runtime(abc.ABC):
    """Start, stop, inspect and adopt containers run as process groups (or anything else)."""

    # True when the runtime calls ``exit_listener`` (in the event loop) each time a run it started
    # or adopted ends; inspect() then already gives the final facts
    notifies_exits: bool = False
    exit_listener: Callable[[ContainerKey], None] | None = None

    @abc.abstractmethod
    async def start(self, launch: ContainerLaunch) -> ContainerFacts:
        """Start the container; return its facts right after start. Raises RuntimeStartError."""

    @abc.abstractmethod
    async def stop(self, key: ContainerKey, grace_seconds: float) -> ContainerFacts | None:
        """SIGTERM the container's processes, SIGKILL after the grace period; return final facts."""

    @abc.abstractmethod
    def inspect(self, key: ContainerKey) -> ContainerFacts | None:
        """Current facts of the container's latest run, or None if it never ran here."""

    @abc.abstractmethod
    def adopt(self) -> list[ContainerFacts]:
        """After a JRM restart: rediscover every container under the work directory."""

    @abc.abstractmethod
    def log_paths(self, key: ContainerKey, previous: bool = False) -> tuple[Path, Path] | None:
        """The stdout and stderr files of the latest (or previous) run."""

    def forget(self, key: ContainerKey) -> None:  # noqa: B027 - optional hook, no-op by default
        """Drop what the runtime remembers of a container (after it was stopped and its pod is gone)."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Stop watching containers without stopping them (JRM shutdown); adopt() finds them again."""


class RuntimeStartError(Exception):
    """The container could not be started (for example the executable does not exist)."""
