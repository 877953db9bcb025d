"""The two things pilots need from a batch system that PSI/J does not offer: finding a job by its
name (so a re-run launcher re-attaches instead of submitting twice) and sending a job's tasks a
signal (so JRMs drain before the job is cancelled).

SLURM and the local executor are exercised by the system tests; the PBS, LSF and Flux commands
follow those systems' manuals and are untested here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

from jiriaf.errors import UserError

COMMAND_TIMEOUT = 30.0


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT:.0f}s") from None


def find_command(executor: str, name: str) -> list[str] | None:
    """The command listing the ids of the user's jobs called ``name`` (finished ones included)."""
    if executor == "slurm":
        return ["squeue", "--me", "-h", "-t", "all", f"--name={name}", "-o", "%i"]
    if executor in ("pbs", "pbspro"):
        return ["qselect", "-x", "-N", name]
    if executor in ("pbs_classic", "torque"):
        return ["qselect", "-N", name]
    if executor == "lsf":
        return ["bjobs", "-a", "-J", name, "-o", "jobid", "-noheader"]
    if executor == "flux":
        return ["flux", "jobs", "-a", f"--name={name}", "-no", "{id}"]
    return None


def signal_command(executor: str, native_id: str, sig: str = "TERM") -> list[str] | None:
    """The command that sends ``sig`` to the job's tasks (not to the batch script itself)."""
    if executor == "slurm":
        # without --full the batch step is spared: only the JRM tasks (srun steps) get the signal
        return ["scancel", f"--signal={sig}", native_id]
    if executor in ("pbs", "pbspro", "pbs_classic", "torque"):
        return ["qsig", "-s", f"SIG{sig}", native_id]
    if executor == "lsf":
        return ["bkill", "-s", sig, native_id]
    if executor == "flux":
        return ["flux", "job", "kill", f"--signal=SIG{sig}", native_id]
    return None


def parse_ids(output: str) -> list[str]:
    """Job ids, one per non-empty line (whitespace around them ignored)."""
    return [line.strip() for line in output.splitlines() if line.strip()]


def find_jobs(executor: str, name: str, script: Path) -> list[str]:
    """Native ids of the user's jobs called ``name`` (for 'local': processes running ``script``)."""
    if executor == "local":
        return [str(pid) for pid in _local_job_pids(script)]
    argv = find_command(executor, name)
    if argv is None:
        raise UserError(f"cannot look jobs up by name on executor {executor}")
    res = _run(argv)
    if res.returncode != 0:
        raise UserError(f"{' '.join(argv[:2])} failed: {(res.stderr or res.stdout).strip()[:300]}")
    return parse_ids(res.stdout)


def signal_job(executor: str, native_id: str, script: Path, sig: str = "TERM") -> bool:
    """Send ``sig`` to the job's tasks; False when the job is gone."""
    if executor == "local":
        sent = False
        for proc in _local_script_processes(script):
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                os.kill(proc.pid, getattr(signal, f"SIG{sig}"))
                sent = True
        return sent
    argv = signal_command(executor, native_id, sig)
    if argv is None:
        raise UserError(f"cannot signal jobs on executor {executor}")
    return _run(argv).returncode == 0


def _local_script_processes(script: Path) -> list[psutil.Process]:
    """Processes running the job script (``bash <script>``) of a local pilot."""
    target = str(script)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and target in cmdline[1:3]:
                found.append(proc)
        except (psutil.Error, TypeError):
            continue
    return found


def _local_job_pids(script: Path) -> list[int]:
    """The PSI/J native ids (launcher pids) of local jobs running ``script``."""
    pids = []
    for proc in _local_script_processes(script):
        try:
            parent = proc.parent()
            launcher = parent is not None and any("_launch.sh" in a for a in parent.cmdline())
            pids.append(parent.pid if launcher and parent is not None else proc.pid)
        except psutil.Error:
            pids.append(proc.pid)
    return sorted(set(pids))
