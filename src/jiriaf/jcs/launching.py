"""What the central service needs from a pilot launcher, as a small Protocol.

The reconcile loop orders pilots by id (:class:`PilotOrder`) and reads back their state
(:class:`PilotReport`). ``submit`` must be idempotent by pilot id: the loop records a pilot in the
database before submitting it, and after a crash submits the recorded pilot again, which must
return the existing job rather than start a second one. :class:`LauncherPort` adapts
``jiriaf.pilots.launcher.PilotLauncher`` (PSI/J: local, SLURM, ... executors) to this Protocol.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class PilotPhase(enum.StrEnum):
    QUEUED = "queued"  # accepted by the batch system, not started
    ACTIVE = "active"  # the job runs
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_PHASES = frozenset({PilotPhase.COMPLETED, PilotPhase.FAILED, PilotPhase.CANCELED})


@dataclass(frozen=True)
class PilotOrder:
    pilot_id: str
    site: str
    nodes: int
    walltime_s: int
    node_type: str
    partition: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PilotReport:
    pilot_id: str
    phase: PilotPhase
    native_id: str = ""
    node_names: tuple[str, ...] = ()
    message: str = ""

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


class PilotPort(Protocol):
    async def submit(self, order: PilotOrder) -> PilotReport:
        """Start the pilot, or return the one already started under this id."""
        ...

    async def status(self, pilot_id: str) -> PilotReport | None:
        """The pilot's state; None when the launcher never heard of it."""
        ...

    async def cancel(self, pilot_id: str, reason: str) -> None:
        """Stop the pilot (its JRMs drain and leave); a no-op when it already ended."""
        ...


_PHASES = {
    "intent": PilotPhase.QUEUED,
    "queued": PilotPhase.QUEUED,
    "active": PilotPhase.ACTIVE,
    "cancelling": PilotPhase.ACTIVE,
    "completed": PilotPhase.COMPLETED,
    "failed": PilotPhase.FAILED,
    "canceled": PilotPhase.CANCELED,
}


def report_from_record(record: Any) -> PilotReport:
    """A :class:`PilotReport` from a ``jiriaf.pilots.registry.PilotRecord``."""
    phase = _PHASES.get(str(record.state), PilotPhase.FAILED)
    message = record.stop_reason or record.batch_message or ""
    return PilotReport(
        pilot_id=record.id,
        phase=phase,
        native_id=record.native_id or "",
        node_names=tuple(record.node_names or ()),
        message=str(message),
    )


class LauncherPort:
    """:class:`PilotPort` over ``jiriaf.pilots.launcher.PilotLauncher``. Its calls block (PSI/J,
    the batch system, the apiserver), so they run in worker threads; a cancel (which waits for the
    JRMs to drain) runs in the background and the pilot reports ``active`` until it has ended."""

    def __init__(self, launcher: Any, drain_timeout: float = 120.0) -> None:
        import psij  # noqa: F401  (imported here, in the main thread: its local executor wants that)

        self.launcher = launcher
        self.drain_timeout = drain_timeout
        self._cancelling: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def from_sites_file(
        cls, sites_file: Path | None, *, kubeconfig: Path | None = None, registry: Path | None = None
    ) -> LauncherPort:
        from jiriaf.pilots.launcher import PilotLauncher
        from jiriaf.pilots.registry import PilotRegistry
        from jiriaf.pilots.sites import load_sites

        return cls(
            PilotLauncher(load_sites(sites_file), registry=PilotRegistry(registry), kubeconfig=kubeconfig)
        )

    async def submit(self, order: PilotOrder) -> PilotReport:
        from jiriaf.pilots.launcher import PilotRequest

        request = PilotRequest(
            site=order.site,
            nodes=order.nodes,
            walltime=order.walltime_s,
            pilot_id=order.pilot_id,
            nodetype=order.node_type,
            labels=dict(order.labels),
            batch={"partition": order.partition} if order.partition else {},
        )
        record = await asyncio.to_thread(self.launcher.submit, request)
        return report_from_record(record)

    async def status(self, pilot_id: str) -> PilotReport | None:
        if self.launcher.registry.get(pilot_id) is None:
            return None
        record = await asyncio.to_thread(self.launcher.status, pilot_id)
        return report_from_record(record)

    async def cancel(self, pilot_id: str, reason: str) -> None:
        if pilot_id in self._cancelling or self.launcher.registry.get(pilot_id) is None:
            return
        task = asyncio.create_task(self._cancel(pilot_id, reason), name=f"cancel-{pilot_id}")
        self._cancelling[pilot_id] = task

    async def _cancel(self, pilot_id: str, reason: str) -> None:
        try:
            await asyncio.to_thread(self.launcher.cancel, pilot_id, self.drain_timeout)
        except Exception as exc:
            log.warning("cancelling pilot %s (%s) failed: %s", pilot_id, reason, exc)
        finally:
            self._cancelling.pop(pilot_id, None)

    async def close(self, timeout: float = 30.0) -> None:
        """Wait (bounded) for cancels in progress."""
        tasks = list(self._cancelling.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
