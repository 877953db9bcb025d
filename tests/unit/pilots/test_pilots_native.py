"""Batch-system commands PSI/J lacks: find a job by name, signal a job's tasks."""

from __future__ import annotations

import pytest

from jiriaf.pilots import batch_native as bn

pytestmark = pytest.mark.unit


def test_find_commands() -> None:
    assert bn.find_command("slurm", "jiriaf-pilot-p1") == [
        "squeue",
        "--me",
        "-h",
        "-t",
        "all",
        "--name=jiriaf-pilot-p1",
        "-o",
        "%i",
    ]
    assert bn.find_command("pbspro", "n") == ["qselect", "-x", "-N", "n"]
    assert bn.find_command("torque", "n") == ["qselect", "-N", "n"]
    assert bn.find_command("lsf", "n") == ["bjobs", "-a", "-J", "n", "-o", "jobid", "-noheader"]
    flux = bn.find_command("flux", "n")
    assert flux is not None and flux[:3] == ["flux", "jobs", "-a"]
    assert bn.find_command("cobalt", "n") is None


def test_signal_commands_spare_the_batch_script() -> None:
    assert bn.signal_command("slurm", "42") == ["scancel", "--signal=TERM", "42"]  # no --full
    assert bn.signal_command("pbs", "42") == ["qsig", "-s", "SIGTERM", "42"]
    assert bn.signal_command("lsf", "42", "INT") == ["bkill", "-s", "INT", "42"]
    assert bn.signal_command("flux", "f1") == ["flux", "job", "kill", "--signal=SIGTERM", "f1"]
    assert bn.signal_command("local", "1") is None


def test_parse_ids() -> None:
    assert bn.parse_ids("  12\n\n13 \n") == ["12", "13"]
    assert bn.parse_ids("") == []
