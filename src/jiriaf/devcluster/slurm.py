"""A real single-host SLURM cluster (munged, slurmctld, slurmd from Debian) on 127.0.0.1.

:class:`LocalSlurm` writes its own ``slurm.conf`` and munge key into a directory, starts the three
daemons in the foreground as processes it owns (recorded by pid and start time in ``state.json``,
like :class:`~jiriaf.devcluster.cluster.LocalCluster`), waits until ``sinfo`` reports the node
idle, and stops exactly those processes. Clients find the cluster through ``SLURM_CONF``
(:meth:`LocalSlurm.env`); nothing under ``/etc`` is touched.

Accounting: there is no slurmdbd. Finished jobs are recorded by ``jobcomp/filetxt``, which
``sacct --completion`` reads (:meth:`LocalSlurm.final_state`), and kept visible to ``squeue`` and
``scontrol`` for ``MinJobAge`` seconds.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jiriaf.datadirs import data_directory
from jiriaf.devcluster.cluster import ClusterState, ProcessRecord, free_port
from jiriaf.errors import UserError

ProgressFn = Callable[[str], None]

DAEMONS = ("munged", "slurmctld", "slurmd")
DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODE_NAME = "localhost"
PARTITION = "debug"
READY_TIMEOUT = 60.0


def default_directory() -> Path:
    """``$JIRIAF_SLURM_DIR`` or ``$XDG_DATA_HOME/jiriaf/slurm``."""
    return data_directory("JIRIAF_SLURM_DIR", "slurm")


def find_daemon(name: str) -> str | None:
    """Path of a daemon binary (they live in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def missing_programs() -> list[str]:
    """Daemons and client commands this machine lacks."""
    wanted = [*DAEMONS, "sbatch", "squeue", "sinfo", "scancel", "scontrol", "srun", "sacct"]
    return [name for name in wanted if find_daemon(name) is None]


@dataclass(frozen=True)
class SlurmConfig:
    """What goes into ``slurm.conf`` (pure data; :func:`render_slurm_conf` turns it into text)."""

    directory: Path
    user: str
    ctld_port: int
    slurmd_port: int
    cpus: int = 8
    min_job_age: int = 3600
    kill_wait: int = 30

    @property
    def munge_socket(self) -> Path:
        return self.directory / "munge" / "munge.socket.2"


def render_slurm_conf(cfg: SlurmConfig) -> str:
    """The ``slurm.conf`` of a one-node cluster on 127.0.0.1 with everything under ``cfg.directory``.

    ``proctrack/linuxproc`` and ``task/none`` need no cgroups (containers, CI); ``config_overrides``
    lets the node offer ``cfg.cpus`` slots whatever the host has, so several JRM tasks fit.
    """
    d = cfg.directory
    lines = {
        "ClusterName": "jiriaf",
        "SlurmctldHost": f"{NODE_NAME}(127.0.0.1)",
        "SlurmctldPort": str(cfg.ctld_port),
        "SlurmdPort": str(cfg.slurmd_port),
        "SlurmUser": cfg.user,
        "SlurmdUser": cfg.user,
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={cfg.munge_socket}",
        "StateSaveLocation": str(d / "state"),
        "SlurmdSpoolDir": str(d / "spool"),
        "SlurmctldPidFile": str(d / "run" / "slurmctld.pid"),
        "SlurmdPidFile": str(d / "run" / "slurmd.pid"),
        "SlurmctldLogFile": str(d / "logs" / "slurmctld.log"),
        "SlurmdLogFile": str(d / "logs" / "slurmd.log"),
        "PlugStackConfig": str(d / "plugstack.conf"),
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "MpiDefault": "none",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "SlurmdParameters": "config_overrides",
        "ReturnToService": "2",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": str(d / "jobcomp.txt"),
        "MinJobAge": str(cfg.min_job_age),
        "KillWait": str(cfg.kill_wait),
        "MailProg": "/bin/true",
        "SlurmdTimeout": "300",
        "InactiveLimit": "0",
    }
    text = "".join(f"{k}={v}\n" for k, v in lines.items())
    text += (
        f"NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={cfg.cpus} RealMemory=1024 State=UNKNOWN\n"
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    )
    return text


# the daemons' record has the same shape as the control plane's: ports and processes by pid
SlurmState = ClusterState


class LocalSlurm:
    """A one-node SLURM cluster rooted at ``directory``."""

    def __init__(
        self, directory: Path | None = None, *, cpus: int = 8, progress: ProgressFn | None = None
    ) -> None:
        self.directory = (directory or default_directory()).absolute()
        self.cpus = cpus
        self.progress: ProgressFn = progress or (lambda _m: None)
        self.state_path = self.directory / "state.json"
        self.log_dir = self.directory / "logs"
        self.conf_path = self.directory / "slurm.conf"
        self.jobcomp_path = self.directory / "jobcomp.txt"

    # ------------------------------------------------------------------ environment for clients
    def env(self) -> dict[str, str]:
        """Variables that point SLURM clients (sbatch, squeue, srun, PSI/J) at this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def client_env(self) -> dict[str, str]:
        """``os.environ`` plus :meth:`env`: for running client commands."""
        return {**os.environ, **self.env()}

    def state(self) -> SlurmState:
        return SlurmState.load(self.state_path)

    def is_running(self) -> bool:
        state = self.state()
        return all(state.processes.get(d) is not None and state.processes[d].alive() for d in DAEMONS)

    # ------------------------------------------------------------------ up
    def up(self) -> dict[str, str]:
        """Start munged, slurmctld and slurmd (unless running) and wait for an idle node.

        Returns :meth:`env`. On failure, the daemons started by this call are stopped and the error
        names the daemon and its log.
        """
        missing = missing_programs()
        if missing:
            raise UserError(
                f"SLURM is not installed (missing {', '.join(missing)}); install the Debian packages "
                f"{' '.join(DEBIAN_PACKAGES)}"
            )
        if self.is_running():
            self.progress("SLURM already running")
            return self.env()
        state = self.state()
        if any(rec.alive() for rec in state.processes.values()):
            self.down()
            state = self.state()
        self._prepare(state)
        started: list[str] = []
        try:
            self._start_munged(state)
            started.append("munged")
            for daemon in ("slurmctld", "slurmd"):
                self._start(state, daemon)
                started.append(daemon)
            self._wait_idle(state)
        except BaseException:
            self._stop(state, started)
            state.save(self.state_path)
            raise
        self.progress(f"SLURM ready; SLURM_CONF={self.conf_path}")
        return self.env()

    def _prepare(self, state: SlurmState) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("state", "spool", "run", "logs"):
            (d / sub).mkdir(exist_ok=True)
        munge = d / "munge"
        munge.mkdir(exist_ok=True, mode=0o700)
        munge.chmod(0o700)
        key = munge / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(1024))
        for name in ("slurmctld", "slurmd"):
            port = state.ports.get(name)
            if port is None:
                port = free_port()
                while port in state.ports.values():
                    port = free_port()
                state.ports[name] = port
        cfg = SlurmConfig(
            directory=d,
            user=getpass.getuser(),
            ctld_port=state.ports["slurmctld"],
            slurmd_port=state.ports["slurmd"],
            cpus=self.cpus,
        )
        self.conf_path.write_text(render_slurm_conf(cfg))
        (d / "plugstack.conf").write_text("")
        state.save(self.state_path)

    def _spawn(self, daemon: str, argv: list[str]) -> ProcessRecord:
        log = self.log_dir / f"{daemon}.out"
        return ProcessRecord.spawn(daemon, argv, log, self.directory, self.client_env())

    def _start_munged(self, state: SlurmState) -> None:
        munge = self.directory / "munge"
        binary = find_daemon("munged")
        assert binary is not None
        argv = [
            binary,
            "--foreground",
            f"--key-file={munge / 'munge.key'}",
            f"--socket={munge / 'munge.socket.2'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ]
        if os.geteuid() == 0:
            argv.append("--force")  # munged refuses root unless forced; the key and socket are ours
        self.progress("starting munged")
        state.processes["munged"] = self._spawn("munged", argv)
        state.save(self.state_path)
        self._wait(state, "munged", lambda: (munge / "munge.socket.2").exists(), "its socket")

    def _start(self, state: SlurmState, daemon: str) -> None:
        binary = find_daemon(daemon)
        assert binary is not None
        argv = [binary, "-D", "-f", str(self.conf_path)]
        if daemon == "slurmd":
            argv += ["-N", NODE_NAME]
        self.progress(f"starting {daemon}")
        state.processes[daemon] = self._spawn(daemon, argv)
        state.save(self.state_path)
        if daemon == "slurmctld":
            self._wait(
                state, daemon, lambda: self._run(["scontrol", "ping"]).returncode == 0, "scontrol ping"
            )

    def _wait_idle(self, state: SlurmState) -> None:
        def idle() -> bool:
            out = self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.strip()
            return out.startswith("idle") or out.startswith("mixed")

        self._wait(state, "slurmd", idle, "an idle node in sinfo")

    def _wait(self, state: SlurmState, daemon: str, check: Callable[[], bool], what: str) -> None:
        rec = state.processes[daemon]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not rec.alive():
                raise UserError(f"{daemon} exited during start-up; logs in {self.log_dir}")
            if check():
                return
            time.sleep(0.3)
        raise UserError(f"{daemon} did not reach {what} within {READY_TIMEOUT:.0f}s; logs in {self.log_dir}")

    def _run(self, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, env=self.client_env(), timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(argv, 1, "", str(exc))

    # ------------------------------------------------------------------ queries
    def final_state(self, job_id: str) -> str | None:
        """The job's final state as ``sacct --completion`` reports it from the jobcomp file, or None."""
        out = self._run(
            ["sacct", "--completion", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State"]
        ).stdout
        for line in out.splitlines():
            jid, _, st = line.partition("|")
            if jid.strip() == str(job_id) and st.strip():
                return st.strip().split()[0]
        return None

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (empty when the job is unknown)."""
        out = self._run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        return fields

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        """Stop every daemon this cluster started (by pid), slurmd first; return their names."""
        state = self.state()
        stopped = self._stop(state, list(state.processes))
        if self.state_path.exists():
            state.save(self.state_path)
        return stopped

    def _stop(self, state: SlurmState, daemons: list[str], grace: float = 10.0) -> list[str]:
        order = [d for d in reversed(DAEMONS) if d in daemons]
        live = [state.processes[d] for d in order if d in state.processes and state.processes[d].alive()]
        for rec in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and rec.alive():
                _reap(rec)
                time.sleep(0.1)
            if rec.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)
            _reap(rec)
        for d in order:
            state.processes.pop(d, None)
        return [r.component for r in live]


def _reap(rec: ProcessRecord) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(rec.pid, os.WNOHANG)
