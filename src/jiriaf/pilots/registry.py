"""The pilot registry: one directory per pilot holding its record (JSON), job script and logs.

The record is written *before* the job is submitted (state ``intent``) and again right after
(the native job id), so a launcher that dies in between can tell, when run again, that a job may
exist and look for it by name instead of submitting a second one. A per-pilot lock file
serialises launchers working on the same pilot.

Layout: ``<root>/<pilot id>/{record.json, job.sh, job-<jobid>.log, job.exit, tasks/<node>.json|.log}``
with ``<root>`` = ``$JIRIAF_PILOT_DIR`` or ``$XDG_DATA_HOME/jiriaf/pilots``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from jiriaf.datadirs import data_directory
from jiriaf.errors import UserError

PilotState = Literal["intent", "queued", "active", "cancelling", "completed", "failed", "canceled"]
FINAL_STATES = ("completed", "failed", "canceled")


def default_root() -> Path:
    """``$JIRIAF_PILOT_DIR`` or ``$XDG_DATA_HOME/jiriaf/pilots``."""
    return data_directory("JIRIAF_PILOT_DIR", "pilots")


class PilotEvent(BaseModel):
    """A line of the pilot's history."""

    time: float
    what: str


class NodeReport(BaseModel):
    """What is known about one of the pilot's nodes."""

    ready: str | None = None  # "True", "False", "Unknown"; None when the Node does not exist
    reason: str | None = None  # the Ready condition's reason
    stop_reason: str | None = None  # why its JRM stopped, once it did


class PilotRecord(BaseModel):
    """Everything the launcher knows about one pilot."""

    id: str
    site: str
    executor: str
    job_name: str
    nodes: int
    jrms_per_node: int
    walltime: int
    margin: int
    idle_timeout: float = 0.0
    state: PilotState = "intent"
    native_id: str | None = None
    batch_state: str | None = None
    batch_message: str | None = None
    exit_code: int | None = None
    node_names: list[str] = Field(default_factory=list)
    node_reports: dict[str, NodeReport] = Field(default_factory=dict)
    stop_reason: str | None = None
    control_kubeconfig: str | None = None  # what the launcher uses for Nodes and Events
    created_at: float = Field(default_factory=time.time)
    submitted_at: float | None = None
    finished_at: float | None = None
    events: list[PilotEvent] = Field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def note(self, what: str) -> None:
        """Append ``what`` to the history."""
        self.events.append(PilotEvent(time=time.time(), what=what))


class PilotRegistry:
    """Pilot records under ``root``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).absolute()

    def directory(self, pilot_id: str) -> Path:
        return self.root / pilot_id

    def record_path(self, pilot_id: str) -> Path:
        return self.directory(pilot_id) / "record.json"

    @contextlib.contextmanager
    def locked(self, pilot_id: str, timeout: float = 120.0) -> Iterator[None]:
        """Hold the pilot's lock (other launchers working on the same pilot wait)."""
        d = self.directory(pilot_id)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise UserError(
                            f"pilot {pilot_id} is busy: another launcher holds its lock"
                        ) from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def get(self, pilot_id: str) -> PilotRecord | None:
        """The record of ``pilot_id``; None when there is none."""
        path = self.record_path(pilot_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return PilotRecord.model_validate_json(text)
        except (ValidationError, ValueError) as exc:
            raise UserError(f"pilot record {path} is damaged ({type(exc).__name__}); remove it") from exc

    def require(self, pilot_id: str) -> PilotRecord:
        record = self.get(pilot_id)
        if record is None:
            raise UserError(f"no pilot {pilot_id!r} (see 'jiriaf pilot list')")
        return record

    def save(self, record: PilotRecord) -> None:
        """Write the record atomically (readers never see half a file)."""
        d = self.directory(record.id)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".record.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record.model_dump(mode="json"), indent=2))
        tmp.replace(self.record_path(record.id))

    def all(self) -> list[PilotRecord]:
        """Every record, oldest first (damaged ones are skipped)."""
        records: list[PilotRecord] = []
        if not self.root.is_dir():
            return records
        for path in sorted(self.root.glob("*/record.json")):
            with contextlib.suppress(UserError):
                rec = self.get(path.parent.name)
                if rec is not None:
                    records.append(rec)
        return sorted(records, key=lambda r: r.created_at)
