"""A status refresh that waited for the pilot's lock must not undo what the lock holder finished.

Fault injection (labelled): the registry below finishes a cancel at the moment ``status()`` asks
for the lock, which is the interleaving that a real cancel running in another process produces when
it ends while a status refresh waits. A real batch system cannot be made to hit that instant on
demand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jiriaf.pilots.launcher import PilotLauncher
from jiriaf.pilots.registry import PilotRecord, PilotRegistry

pytestmark = pytest.mark.unit


class CancelFinishesWhileWaiting(PilotRegistry):
    """Marks the pilot canceled just before the lock is granted (the other launcher's cancel)."""

    @contextmanager
    def locked(self, pilot_id: str, timeout: float = 120.0) -> Iterator[None]:
        rec = self.require(pilot_id)
        if not rec.final:
            rec.state = "canceled"
            rec.stop_reason = "Cancelled"
            self.save(rec)
        with super().locked(pilot_id, timeout):
            yield


def test_status_keeps_a_cancel_that_ended_while_it_waited(tmp_path: Path) -> None:
    registry = CancelFinishesWhileWaiting(tmp_path)
    registry.save(
        PilotRecord(
            id="p1",
            site="here",
            executor="local",
            job_name="jiriaf-pilot-p1",
            nodes=1,
            jrms_per_node=1,
            walltime=60,
            margin=10,
            state="active",
            native_id="999999",  # no such local job: a refresh would call the job completed
        )
    )
    launcher = PilotLauncher([], registry=registry)
    record = launcher.status("p1")
    assert record.state == "canceled" and record.stop_reason == "Cancelled"
    assert registry.require("p1").state == "canceled"
