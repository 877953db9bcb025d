"""Containers as user-space process groups: the default runtime of the JRM.

Each run of a container is a new session led by a tiny POSIX ``sh`` shim (dash when available: it
costs well under a megabyte per container). The shim traps (it does not ignore, so the command
inherits nothing ignored) the usual termination signals, runs the real command as a foreground
child in its own process group, and when that child ends writes the child's exit status (``128+N``
for signal N, as sh reports it) to the ``exit`` file before exiting with the same status. So the
true exit code survives a JRM that was not running when the container ended; the file's mtime is
the finish time. The file is written with a single ``write`` right before the shim exits and the
JRM reads it only once the shim is gone, so it is never seen half-written: no temporary file, no
``mv`` or ``date`` process that a SIGKILL sweep could hit while the shim records the status.

Files in ``launch.container_dir``:

======================  =======================================================================
``pgid``                process group id of the run, decimal and newline (as the original JRM)
``stdout``, ``stderr``  output of the current run; the previous run's are ``*.previous``
``exit``                ``<code>`` written by the shim; or ``<code> <finished> <note>`` written
                        by the JRM when it had to infer the status (nothing recorded it)
``run.json``            what the pod controller needs after a JRM restart: the key, restart count,
                        pid, start time (and ``run.previous.json``, ``exit.previous``)
======================  =======================================================================

Exit-code rules, in order: the shim's exit status when the JRM reaps its own child; otherwise the
``exit`` file; otherwise, if the shim was seen killed by signal N, ``128+N``; otherwise (the whole
group was SIGKILLed while the JRM was away) 137 with the time the JRM noticed, and a ``message``
saying that the code was inferred.

Every process of a container carries ``JIRIAF_CONTAINER=<pod_uid>/<container>`` in its environment
(see :mod:`jiriaf.jrm.runtime.processes`), so :meth:`ProcessRuntime.stop` also ends descendants
that left the process group. When a run ends on its own, its leftover processes are SIGKILLed as
Kubernetes does when a container's main process exits.

The workload's environment is exactly ``launch.env`` plus the marker: nothing of the JRM's own
environment leaks. The caller must supply ``PATH`` (and ``HOME``) in ``launch.env``; without PATH
the command is looked up in the system default path (``confstr("CS_PATH")``) like ``execvp``.
``argv[0]`` is resolved before the launch (so a missing command is a precise
:class:`RuntimeStartError`) and the workload sees the resolved path as ``argv[0]``.

dash keeps the environment intact except for a few names it manages itself (``PWD``, ``OLDPWD``,
``IFS``, ``OPTIND``, ``PPID``) and names that are not shell identifiers (``my.var``), which it
drops. For such environments, and when ``sh`` is not dash (bash adds ``SHLVL`` and ``_``), the shim
runs the command through a few lines of Python that read the environment from a private file and
``execve`` the command: exact, at the cost of one interpreter start-up when the container starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from jiriaf.jrm.runtime.base import (
    ContainerFacts,
    ContainerKey,
    ContainerLaunch,
    Runtime,
    RuntimeStartError,
)
from jiriaf.jrm.runtime.processes import (
    MARKER_ENV,
    ProcessTable,
    Snapshot,
    container_marker,
    read_stat,
    signal_all,
    take_snapshot,
    ticks_to_epoch,
)

log = logging.getLogger(__name__)

SHIM_NAME = "jiriaf-shim"  # $0 of the shim, so `ps` shows what it is

PGID_FILE = "pgid"
EXIT_FILE = "exit"
RUN_FILE = "run.json"
ENV_FILE = ".env.json"  # only for the exact-environment helper; deleted by the helper
PREVIOUS = ".previous"

# Signals the shim survives so that it can record the status of its child; the child gets the
# default action for all of them (traps are reset in children, and nothing is ignored).
_SHIM_TRAPPED = "HUP INT QUIT PIPE ALRM TERM USR1 USR2"
# Environment names dash rewrites or drops: with any of these the exact-environment helper is used.
_SHELL_MANAGED = frozenset({"PWD", "OLDPWD", "IFS", "OPTIND", "PPID"})

# Run by the shim (with the JRM's interpreter in isolated mode) when dash alone cannot keep the
# environment exact: read it from a private file, delete the file, exec the command.
_EXACT_ENV_HELPER = (
    "import json,os,sys\n"
    "p=sys.argv[1]\n"
    "with open(p,'rb') as f: e=json.load(f)\n"
    "os.unlink(p)\n"
    "a=sys.argv[2:]\n"
    "try: os.execve(a[0],a,e)\n"
    "except OSError as x:\n"
    " sys.stderr.write('jiriaf: cannot execute %s: %s\\n'%(a[0],x.strerror))\n"
    " sys.exit(127 if x.errno==2 else 126)\n"
)


def _is_shell_name(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and name.replace("_", "a").isalnum()


def _env_needs_helper(env: dict[str, str]) -> bool:
    """True if dash would not pass ``env`` to the command unchanged."""
    return any(not (_is_shell_name(k) and k.isascii()) or k in _SHELL_MANAGED for k in env)


# --------------------------------------------------------------------------------------------------
# launch checks: find problems before spawning, with a message the user can act on


def _check_executable(path: Path, shown: str) -> str | None:
    """Why ``path`` cannot be executed, or None if it can (including its ``#!`` interpreter)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"executable {shown!r} not found"
    except OSError as e:
        return f"executable {shown!r} cannot be accessed: {e.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{shown!r} is a directory, not an executable"
    if not os.access(path, os.X_OK) or not st.st_mode & 0o111:
        return f"{shown!r} is not executable (permission denied)"
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None  # execute-only files exist; exec will tell
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].split()
        if words:
            interp = Path(os.fsdecode(words[0]))
            if not interp.is_file() or not os.access(interp, os.X_OK):
                return f"{shown!r} names a missing or non-executable interpreter {str(interp)!r}"
    return None


def resolve_command(argv0: str, env: dict[str, str], working_dir: Path) -> str:
    """Find the file ``argv0`` names as ``execvp`` would with ``env``'s PATH; raise RuntimeStartError.

    A name with a slash is taken relative to the working directory; otherwise each PATH entry is
    tried (an empty entry means the working directory) and a file that exists but cannot be
    executed is reported only if nothing later in PATH can be.
    """
    if not argv0:
        raise RuntimeStartError("the container has no command")
    if "/" in argv0:
        path = working_dir / argv0
        problem = _check_executable(path, argv0)
        if problem:
            raise RuntimeStartError(problem)
        return argv0
    search = env.get("PATH")
    if search is None:
        search = os.confstr("CS_PATH") or "/bin:/usr/bin"
    first_problem: str | None = None
    for entry in search.split(":"):
        candidate = working_dir / (entry or ".") / argv0
        if not candidate.exists():
            continue
        problem = _check_executable(candidate, str(candidate))
        if problem is None:
            return str(candidate)
        first_problem = first_problem or problem
    if first_problem:
        raise RuntimeStartError(first_problem)
    raise RuntimeStartError(f"executable {argv0!r} not found in PATH {search!r}")


def _check_working_dir(path: Path) -> None:
    if not path.exists():
        raise RuntimeStartError(f"working directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise RuntimeStartError(f"working directory {str(path)!r} is not a directory")
    if not os.access(path, os.X_OK):
        raise RuntimeStartError(f"working directory {str(path)!r} cannot be entered (permission denied)")


def shim_script(container_dir: Path, working_dir: Path, unset_pwd: bool) -> str:
    """The POSIX sh program that leads a run; the command follows as ``"$@"``.

    No shell variable is assigned before the command runs, so nothing of the shim can leak into the
    command's environment; the command runs in the foreground, so sh defers the trapped signals
    until it ends and then records its status.
    """
    q = shlex.quote
    run = '{ unset PWD OLDPWD; "$@"; }' if unset_pwd else '"$@"'
    return (
        f"trap : {_SHIM_TRAPPED}\n"
        f"cd -- {q(str(working_dir))} && {run}\n"
        "c=$?\n"
        f"echo $c >{q(str(container_dir / EXIT_FILE))}\n"
        "exit $c\n"
    )


def _find_shell(shell: str | None) -> tuple[str, bool]:
    """The shim's shell and whether it is dash (whose environment handling we rely on)."""
    if shell is None:
        shell = shutil.which("dash") or "/bin/sh"
    real = Path(shell).resolve().name
    return shell, real == "dash"


# --------------------------------------------------------------------------------------------------
# small file helpers


def _write_atomic(path: Path, data: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ExitRecord:
    """The content of an ``exit`` file."""

    code: int
    finished_at: float
    note: str | None = None


def read_exit_file(path: Path) -> ExitRecord | None:
    """Parse ``<code>[ <finished> <note>]``; None if absent, empty or torn."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
            mtime = os.fstat(f.fileno()).st_mtime
    except OSError:
        return None
    parts = text.strip().split(maxsplit=2)
    if not parts:
        return None
    try:
        code = int(parts[0])
    except ValueError:
        return None
    finished = mtime
    if len(parts) > 1:
        with contextlib.suppress(ValueError):
            finished = float(parts[1])
    return ExitRecord(code, finished, parts[2] if len(parts) > 2 else None)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _last_line(path: Path, limit: int = 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            tail = f.read()
    except OSError:
        return ""
    lines = [line for line in tail.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _fd_above_stdio(fd: int) -> int:
    """Move ``fd`` above 2 so that dup2 onto 0..2 in the child never aliases it."""
    if fd > 2:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def _rotate(container_dir: Path) -> None:
    """Keep the last run's logs and records as ``*.previous`` and clear the way for a new run."""
    for name in ("stdout", "stderr", EXIT_FILE):
        with contextlib.suppress(FileNotFoundError):
            (container_dir / name).replace(container_dir / f"{name}{PREVIOUS}")
    with contextlib.suppress(FileNotFoundError):
        (container_dir / RUN_FILE).replace(container_dir / f"run{PREVIOUS}.json")
    for name in (PGID_FILE, ENV_FILE):
        with contextlib.suppress(FileNotFoundError):
            (container_dir / name).unlink()


# --------------------------------------------------------------------------------------------------
# the runtime


@dataclass
class _Run:
    """The runtime's record of the latest run of one container."""

    key: ContainerKey
    container_dir: Path
    restart_count: int
    pid: int | None
    started_at: float | None
    start_ticks: int | None
    own_child: bool  # spawned by this JRM process, so it can be reaped (and its pid is reserved)
    popen: subprocess.Popen[bytes] | None = None
    previous: ContainerFacts | None = None
    finished: bool = False
    exit_code: int | None = None
    finished_at: float | None = None
    signal: int | None = None
    message: str | None = None
    stopping: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    pidfd: int | None = None
    polled: bool = False
    cleanup: asyncio.Task[None] | None = None

    @property
    def marker(self) -> str:
        return container_marker(self.key)

    def facts(self) -> ContainerFacts:
        running = not self.finished and self.pid is not None
        return ContainerFacts(
            key=self.key,
            running=running,
            pid=self.pid,
            pgid=self.pid,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_code=self.exit_code,
            signal=self.signal,
            restart_count=self.restart_count,
            previous=self.previous,
            pids=[self.pid] if running and self.pid is not None else [],
            message=self.message,
        )


class ProcessRuntime(Runtime):
    """Run containers as process groups under ``workdir`` (see the module documentation).

    ``inspect()`` only reads memory: exits of processes this JRM started are noticed through pidfds
    in the event loop (or, on kernels without pidfds, by polling every ``poll_interval`` seconds);
    adopted processes are watched the same way, since a pidfd works for any process. (asyncio's
    subprocess watcher on Python 3.11 costs one thread per child: too much for 500 containers.)
    Each exit noticed is passed to ``exit_listener``.

    Parameters (keyword-only, mostly for tests and old systems):
    ``shell``: the shim's sh (default: dash if found, else /bin/sh with the exact-environment helper);
    ``spawner``: ``"posix_spawn"`` (resets every signal disposition and the signal mask of the shim)
    or ``"popen"``; default: posix_spawn when the C library supports it;
    ``use_pidfd``: default: when the kernel supports it;
    ``kill_leftovers``: SIGKILL what remains of a container when its main process ends;
    ``shim_exit_timeout``: how long ``stop()`` lets the shim record its child's status;
    ``helper_python``: interpreter of the exact-environment helper (default: the JRM's own).
    """

    notifies_exits = True

    def __init__(
        self,
        workdir: Path,
        *,
        shell: str | None = None,
        spawner: Literal["posix_spawn", "popen"] | None = None,
        use_pidfd: bool | None = None,
        poll_interval: float = 1.0,
        kill_leftovers: bool = True,
        shim_exit_timeout: float = 2.0,
        helper_python: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self._shell, self._shell_is_dash = _find_shell(shell)
        self._spawner = spawner or ("posix_spawn" if _posix_spawn_has_setsid() else "popen")
        self._use_pidfd = _pidfd_supported() if use_pidfd is None else use_pidfd
        self._poll_interval = poll_interval
        self._kill_leftovers = kill_leftovers
        self._shim_exit_timeout = shim_exit_timeout
        self._python = helper_python or sys.executable or "python3"
        self._boot_id = _boot_id()
        self._runs: dict[ContainerKey, _Run] = {}
        self._starting: dict[ContainerKey, asyncio.Future[_Run]] = {}
        self._table = ProcessTable()
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------------------------- start

    async def start(self, launch: ContainerLaunch) -> ContainerFacts:
        """Spawn the container's shim and return its facts. Raises RuntimeStartError.

        The facts are those true when start() returns: a very short command may already have ended.
        """
        key = launch.key
        self._loop = asyncio.get_running_loop()
        if key in self._starting:
            raise RuntimeStartError(f"container {_show(key)} is already being started")
        old = self._runs.get(key)
        if old is not None and not self._check(old):
            raise RuntimeStartError(f"container {_show(key)} is still running (pid {old.pid}); stop it first")
        if old is not None and old.cleanup is not None:
            # leftovers of the last run must be gone before new processes carry the same marker
            await asyncio.wait([old.cleanup])
        if key in self._starting:
            raise RuntimeStartError(f"container {_show(key)} is already being started")
        previous = replace(old.facts(), previous=None) if old is not None else None
        future = self._loop.run_in_executor(None, self._spawn, launch, previous)
        self._starting[key] = future
        future.add_done_callback(
            lambda f: self._starting.pop(key, None) if self._starting.get(key) is f else None
        )
        try:
            run = await asyncio.shield(future)
        except asyncio.CancelledError:
            # the spawn still completes in its thread: keep track of what it started
            future.add_done_callback(self._register_late)
            raise
        self._register(run)
        return run.facts()

    def _register_late(self, future: asyncio.Future[_Run]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._register(future.result())

    def _register(self, run: _Run) -> None:
        self._runs[run.key] = run
        self._watch(run)

    def _spawn(self, launch: ContainerLaunch, previous: ContainerFacts | None) -> _Run:
        """Check, rotate files, spawn the shim and persist the run (runs in a worker thread)."""
        key = launch.key
        working_dir = launch.working_dir.absolute()
        cdir = launch.container_dir.absolute()
        _check_working_dir(working_dir)
        if not launch.argv:
            raise RuntimeStartError("the container has no command")
        command = resolve_command(launch.argv[0], launch.env, working_dir)
        try:
            cdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeStartError(
                f"cannot create the container directory {str(cdir)!r}: {e.strerror}"
            ) from e
        if previous is None:
            previous = self._previous_from_disk(key, cdir)
        try:
            _rotate(cdir)
        except OSError as e:
            raise RuntimeStartError(f"cannot prepare the container directory {str(cdir)!r}: {e}") from e
        marker = container_marker(key)
        meta: dict[str, Any] = {
            "version": 1,
            "namespace": key.namespace,
            "pod": key.pod,
            "pod_uid": key.pod_uid,
            "container": key.container,
            "restart_count": launch.restart_count,
            "marker": marker,
            "boot_id": self._boot_id,
            "pid": None,  # written again once the shim runs; None means "crashed while starting"
        }
        try:
            _write_atomic(cdir / RUN_FILE, json.dumps(meta))
            return self._spawn_shim(launch, command, working_dir, cdir, meta, previous)
        except (RuntimeStartError, OSError) as e:
            with contextlib.suppress(OSError):  # nothing runs: no record that adopt() could misread
                (cdir / RUN_FILE).unlink()
            if isinstance(e, RuntimeStartError):
                raise
            raise RuntimeStartError(f"cannot start the container {_show(key)}: {e}") from e

    def _spawn_shim(
        self,
        launch: ContainerLaunch,
        command: str,
        working_dir: Path,
        cdir: Path,
        meta: dict[str, Any],
        previous: ContainerFacts | None,
    ) -> _Run:
        key = launch.key
        marker = container_marker(key)
        env = dict(launch.env)
        env[MARKER_ENV] = marker
        argv = [command, *launch.argv[1:]]
        if self._shell_is_dash and not _env_needs_helper(env):
            shim_env = env
            script = shim_script(cdir, working_dir, unset_pwd=True)
        else:
            env_file = cdir / ENV_FILE
            with contextlib.suppress(FileNotFoundError):
                env_file.unlink()
            fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(env).encode())
            finally:
                os.close(fd)
            shim_env = {MARKER_ENV: marker}
            script = shim_script(cdir, working_dir, unset_pwd=False)
            argv = [self._python, "-I", "-S", "-c", _EXACT_ENV_HELPER, str(env_file), *argv]
        shim_argv = [self._shell, "-c", script, SHIM_NAME, *argv]

        popen: subprocess.Popen[bytes] | None = None
        fds: list[int] = []
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
            fds.append(_fd_above_stdio(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)))
            fds.append(_fd_above_stdio(os.open(cdir / "stdout", flags, 0o644)))
            fds.append(_fd_above_stdio(os.open(cdir / "stderr", flags, 0o644)))
            started_at = time.time()  # before the spawn: the run cannot have started earlier
            if self._spawner == "posix_spawn":
                pid = os.posix_spawn(
                    self._shell,
                    shim_argv,
                    shim_env,
                    file_actions=[(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)],
                    setsid=True,
                    setsigmask=(),
                    setsigdef=_RESETTABLE_SIGNALS,
                )
            else:
                popen = subprocess.Popen(
                    shim_argv,
                    executable=self._shell,
                    env=shim_env,
                    stdin=fds[0],
                    stdout=fds[1],
                    stderr=fds[2],
                    close_fds=True,
                    start_new_session=True,
                    restore_signals=True,
                )
                pid = popen.pid
        except OSError as e:
            raise RuntimeStartError(f"cannot start the container {_show(key)}: {e.strerror or e}") from e
        finally:
            for fd in fds:
                os.close(fd)
        info = read_stat(pid)
        run = _Run(
            key=key,
            container_dir=cdir,
            restart_count=launch.restart_count,
            pid=pid,
            started_at=started_at,
            start_ticks=info.start_ticks if info else None,
            own_child=True,
            popen=popen,
            previous=previous,
        )
        try:
            # one small write, as the original JRM does (readers treat an empty file as "not yet")
            (cdir / PGID_FILE).write_text(f"{pid}\n")
            meta.update(pid=pid, pgid=pid, started_at=started_at, start_ticks=run.start_ticks)
            _write_atomic(cdir / RUN_FILE, json.dumps(meta))
        except OSError as e:  # the run is started: report it, adopt() will find it by its marker
            log.warning("container %s started but its records could not be written: %s", _show(key), e)
        return run

    # ------------------------------------------------------------------------------- watching

    def _watch(self, run: _Run) -> None:
        """Get notified when the run's shim ends: pidfd in the event loop, else polling."""
        if run.finished or run.pid is None:
            return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._use_pidfd:
            try:
                pidfd = os.pidfd_open(run.pid)
            except ProcessLookupError:
                self._check(run)
                return
            except OSError:
                pidfd = None
            if pidfd is not None:
                run.pidfd = pidfd
                loop.add_reader(pidfd, self._check, run)
                self._check(run)  # it may have ended before the pidfd was opened (or be a reused pid)
                return
        run.polled = True
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll_forever())

    def _unwatch(self, run: _Run) -> None:
        if run.pidfd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(run.pidfd)
            os.close(run.pidfd)
            run.pidfd = None
        run.polled = False

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            polled = [run for run in self._runs.values() if run.polled]
            if not polled:
                return
            for run in polled:
                self._check(run)

    def _check(self, run: _Run) -> bool:
        """Notice the end of the run (cheap; idempotent). True if it has ended."""
        if run.finished:
            return True
        if run.pid is None:
            return False
        if run.own_child:
            ended, returncode = self._reap(run)
        else:
            ended, returncode = self._probe(run)
        if ended:
            self._finalize(run, returncode)
        return ended

    def _reap(self, run: _Run) -> tuple[bool, int | None]:
        """Wait (without blocking) for our own child; returncode < 0 means killed by that signal."""
        assert run.pid is not None
        if run.popen is not None:
            returncode = run.popen.poll()
            return returncode is not None, returncode
        try:
            pid, status = os.waitpid(run.pid, os.WNOHANG)
        except ChildProcessError:  # somebody else reaped it: the exit file tells
            return True, None
        if pid == 0:
            return False, None
        return True, os.waitstatus_to_exitcode(status)

    def _probe(self, run: _Run) -> tuple[bool, int | None]:
        """Liveness of an adopted shim: same pid, same start time, not a zombie."""
        assert run.pid is not None
        info = read_stat(run.pid)
        if info is None or info.start_ticks != run.start_ticks:
            return True, None
        if info.state not in ("Z", "X", "x"):
            return False, None
        # a zombie of ours (the JRM was restarted in-process, as tests do): reap it
        try:
            pid, status = os.waitpid(run.pid, os.WNOHANG)
        except ChildProcessError:
            return True, None
        return True, (os.waitstatus_to_exitcode(status) if pid else None)

    def _finalize(self, run: _Run, returncode: int | None) -> None:
        """Fix the run's exit status from what is known (see the module's exit-code rules)."""
        now = time.time()
        record = read_exit_file(run.container_dir / EXIT_FILE)
        persist = record is None
        message: str | None = None
        sig: int | None = None
        if returncode is not None and returncode >= 0:
            code = returncode
            finished = record.finished_at if record else now
        elif record is not None:
            code, finished, message = record.code, record.finished_at, record.note
        elif returncode is not None:
            sig = -returncode
            code = 128 + sig
            finished = now
            message = (
                f"the shim was killed by signal {_signame(sig)} before it recorded the exit status; "
                f"exit code {code} inferred"
            )
        else:
            code = 128 + signal.SIGKILL
            finished = now
            message = (
                "no exit status was recorded: the container's processes were killed together with "
                f"its shim (SIGKILL assumed, exit code {code}); finish time is when the JRM noticed"
            )
        if code in (126, 127) and message is None:
            what = "a command was not found" if code == 127 else "a command could not be executed"
            line = _last_line(run.container_dir / "stderr")
            message = f"exit code {code}: {what} (as reported by the shell)" + (f": {line}" if line else "")
        if run.started_at is not None:
            finished = max(finished, run.started_at)
        run.exit_code, run.finished_at, run.signal, run.message = code, finished, sig, message
        run.finished = True
        self._unwatch(run)
        if persist:  # so that a later adopt() (or `previous`) tells the same story
            note = f" {message}" if message else ""
            with contextlib.suppress(OSError):
                _write_atomic(run.container_dir / EXIT_FILE, f"{code} {finished:.6f}{note}\n")
        with contextlib.suppress(OSError):
            (run.container_dir / ENV_FILE).unlink()
        run.ended.set()
        if self.exit_listener is not None and self._runs.get(run.key) is run:  # not in adopt()'s scan
            try:
                self.exit_listener(run.key)
            except Exception:  # a listener's bug must not stop exits from being recorded
                log.exception("exit listener failed for %s", run.key)
        if self._kill_leftovers and not run.stopping and self._loop is not None:
            run.cleanup = self._spawn_task(self._kill_remaining(run, after=time.monotonic()))

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------------------------- stop

    async def stop(self, key: ContainerKey, grace_seconds: float) -> ContainerFacts | None:
        """SIGTERM the group and tagged leavers, SIGKILL what remains after the grace period.

        Returns once no process of the container remains, with the run's final facts.
        """
        self._loop = asyncio.get_running_loop()
        starting = self._starting.get(key)
        if starting is not None:  # deleted while starting: let the start finish, then stop it
            await asyncio.wait([starting])
        run = self._runs.get(key)
        if run is None:
            return None
        run.stopping = True
        try:
            if run.cleanup is not None:
                await asyncio.wait([run.cleanup])
            marker = run.marker
            deadline = time.monotonic() + max(0.0, grace_seconds)
            if grace_seconds > 0:
                group_signalled = not self._check(run) and self._signal_group(run, signal.SIGTERM)
                snap = await self._table.snapshot()
                signal_all(
                    (p for p in snap.members(marker) if not (group_signalled and p.pgid == run.pid)),
                    signal.SIGTERM,
                )
                await self._wait_gone(run, marker, deadline)
            await self._kill_remaining(run, after=time.monotonic())
            return self.inspect(key)
        finally:
            run.stopping = False

    def _signal_group(self, run: _Run, sig: int) -> bool:
        """Signal the run's process group while its leader (our shim) is known to be alive."""
        if run.pid is None or run.finished:
            return False
        if not run.own_child:  # not reserved by us: make sure the pid still names our shim
            info = read_stat(run.pid)
            if info is None or info.start_ticks != run.start_ticks:
                return False
        try:
            os.killpg(run.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def _wait_ended(self, run: _Run, timeout: float) -> bool:
        """Wait up to ``timeout`` for the shim to end (checking directly, watcher or not)."""
        deadline = time.monotonic() + timeout
        while not self._check(run):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.ended.wait(), min(remaining, 0.05))
        return True

    async def _wait_gone(self, run: _Run, marker: str, deadline: float) -> None:
        """Until the deadline: wait for the shim to end, then for every tagged process to go."""
        if not await self._wait_ended(run, deadline - time.monotonic()):
            return
        while True:
            snap = await self._table.snapshot()
            if not snap.members(marker):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.1))

    async def _kill_remaining(self, run: _Run, after: float) -> None:
        """SIGKILL every process of the container until none is left.

        While the shim lives it is spared, so that it records the true status of its child (137 if
        it had to be killed); it is killed only if it does not end within ``shim_exit_timeout``.
        """
        marker = run.marker
        for attempt in range(200):
            snap: Snapshot = await self._table.snapshot(newer_than=after)
            shim_alive = not self._check(run)
            targets = [p for p in snap.members(marker) if not (shim_alive and p.pid == run.pid)]
            if targets:
                signal_all(targets, signal.SIGKILL)
            elif not shim_alive:
                return
            elif not await self._wait_ended(run, self._shim_exit_timeout):
                self._signal_group(run, signal.SIGKILL)
                await self._wait_ended(run, self._shim_exit_timeout)
            after = time.monotonic()
            await asyncio.sleep(min(0.005 * (attempt + 1), 0.1))
        log.warning("processes of container %s survived repeated SIGKILL", _show(run.key))

    # ------------------------------------------------------------------------------- inspect

    def inspect(self, key: ContainerKey) -> ContainerFacts | None:
        """Facts of the latest run from memory (``pids`` is the shim's pid while running)."""
        run = self._runs.get(key)
        return run.facts() if run is not None else None

    def log_paths(self, key: ContainerKey, previous: bool = False) -> tuple[Path, Path] | None:
        """stdout and stderr of the latest run, or of the one before with ``previous``."""
        run = self._runs.get(key)
        if run is None:
            return None
        suffix = PREVIOUS if previous else ""
        paths = (run.container_dir / f"stdout{suffix}", run.container_dir / f"stderr{suffix}")
        if previous and not paths[0].exists():
            return None
        return paths

    def container_pids(self, key: ContainerKey) -> list[int]:
        """Every live pid of the container (group members and tagged leavers); scans /proc."""
        return sorted(p.pid for p in take_snapshot().members(container_marker(key)))

    def container_keys(self) -> list[ContainerKey]:
        """The containers this runtime knows (started or adopted)."""
        return list(self._runs)

    def forget(self, key: ContainerKey) -> None:
        """Drop the record of ``key`` (stop it first: a running container is only unwatched)."""
        run = self._runs.pop(key, None)
        if run is not None:
            self._unwatch(run)

    def close(self) -> None:
        """Stop watching (JRM shutdown): containers keep running and a later adopt() finds them."""
        for run in self._runs.values():
            self._unwatch(run)
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for task in list(self._tasks):
            task.cancel()
        self._table.close()

    # --------------------------------------------------------------------------------- adopt

    def adopt(self) -> list[ContainerFacts]:
        """Rediscover every container under the work directory (call from the event loop).

        A run that is still alive is adopted as it is (same pid, not restarted) and watched; a run
        that ended while the JRM was away reports the exit code its shim recorded.
        """
        self._loop = asyncio.get_running_loop()
        found: list[ContainerFacts] = []
        snap: Snapshot | None = None
        for meta_path in sorted(self.workdir.glob(f"*/*/containers/*/{RUN_FILE}")):
            meta = _read_json(meta_path)
            key = _key_from_meta(meta)
            if meta is None or key is None:
                log.warning("ignoring unreadable run record %s", meta_path)
                continue
            if key in self._runs:
                found.append(self._runs[key].facts())
                continue
            if meta.get("pid") is None and snap is None:
                snap = take_snapshot()  # only after a crash in the middle of a start
            run = self._adopt_run(meta_path.parent, key, meta, snap)
            self._runs[key] = run
            self._watch(run)
            if run.finished and run.cleanup is None and self._kill_leftovers:
                run.cleanup = self._spawn_task(self._kill_remaining(run, after=time.monotonic()))
            found.append(run.facts())
        return found

    def _adopt_run(self, cdir: Path, key: ContainerKey, meta: dict[str, Any], snap: Snapshot | None) -> _Run:
        pid = _int_or_none(meta.get("pid"))
        start_ticks = _int_or_none(meta.get("start_ticks"))
        started_at = _float_or_none(meta.get("started_at"))
        same_boot = meta.get("boot_id") == self._boot_id
        if pid is None and snap is not None and same_boot:
            # the JRM died between spawning the shim and recording it: find the shim by its marker
            marker = container_marker(key)
            leaders = [p for p in snap.procs if p.marker == marker and p.pid == p.sid]
            if leaders:
                pid, start_ticks = leaders[0].pid, leaders[0].start_ticks
                started_at = ticks_to_epoch(start_ticks)
                with contextlib.suppress(OSError):
                    _write_atomic(cdir / PGID_FILE, f"{pid}\n")
                    meta.update(pid=pid, pgid=pid, started_at=started_at, start_ticks=start_ticks)
                    _write_atomic(cdir / RUN_FILE, json.dumps(meta))
        run = _Run(
            key=key,
            container_dir=cdir,
            restart_count=_int_or_none(meta.get("restart_count")) or 0,
            pid=pid,
            started_at=started_at,
            start_ticks=start_ticks,
            own_child=False,
            previous=self._previous_from_disk(key, cdir, current=False),
        )
        alive = False
        if pid is not None and same_boot:
            ended, _ = self._probe(run)
            alive = not ended
        if not alive:
            self._finalize_adopted(run)
        return run

    def _finalize_adopted(self, run: _Run) -> None:
        """Finalize a run found dead at adoption, without a returncode."""
        if run.pid is None and read_exit_file(run.container_dir / EXIT_FILE) is None:
            run.finished = True
            run.exit_code = 128 + signal.SIGKILL
            run.finished_at = max(time.time(), run.started_at or 0.0)
            run.message = "the JRM stopped while starting this container; its status is unknown"
            with contextlib.suppress(OSError):
                _write_atomic(
                    run.container_dir / EXIT_FILE, f"{run.exit_code} {run.finished_at:.6f} {run.message}\n"
                )
            run.ended.set()
            return
        self._finalize(run, None)

    def _previous_from_disk(
        self, key: ContainerKey, cdir: Path, current: bool = True
    ) -> ContainerFacts | None:
        """Facts of the run recorded in ``cdir`` (the current files, or the ``*.previous`` ones)."""
        suffix = "" if current else PREVIOUS
        meta = _read_json(cdir / f"run{suffix}.json")
        if meta is None:
            return None
        pid = _int_or_none(meta.get("pid"))
        if current and pid is not None and meta.get("boot_id") == self._boot_id:
            info = read_stat(pid)
            if info is not None and info.start_ticks == meta.get("start_ticks") and info.state != "Z":
                raise RuntimeStartError(
                    f"container {_show(key)} is still running (pid {pid}) from before a JRM restart; "
                    "adopt it or stop it first"
                )
        record = read_exit_file(cdir / f"{EXIT_FILE}{suffix}")
        return ContainerFacts(
            key=key,
            running=False,
            pid=pid,
            pgid=pid,
            started_at=_float_or_none(meta.get("started_at")),
            finished_at=record.finished_at if record else None,
            exit_code=record.code if record else 128 + signal.SIGKILL,
            restart_count=_int_or_none(meta.get("restart_count")) or 0,
            message=(record.note if record else "no exit status was recorded for this run"),
        )


# --------------------------------------------------------------------------------------------------


@functools.cache
def _posix_spawn_has_setsid() -> bool:
    """posix_spawn(setsid=True) needs glibc 2.26 at Python's build time."""
    try:
        pid = os.posix_spawn(
            "/bin/true" if Path("/bin/true").exists() else "/usr/bin/true", ["true"], {}, setsid=True
        )
    except (NotImplementedError, OSError, AttributeError):
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


@functools.cache
def _pidfd_supported() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return False
        raise
    os.close(fd)
    return True


_RESETTABLE_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _show(key: ContainerKey) -> str:
    return f"{key.namespace}/{key.pod}/{key.container}"


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _key_from_meta(meta: dict[str, Any] | None) -> ContainerKey | None:
    if meta is None:
        return None
    parts = [meta.get(name) for name in ("namespace", "pod", "pod_uid", "container")]
    if not all(isinstance(p, str) and p for p in parts):
        return None
    namespace, pod, pod_uid, container = (str(p) for p in parts)
    return ContainerKey(namespace, pod, pod_uid, container)


__all__ = ["ExitRecord", "ProcessRuntime", "read_exit_file", "resolve_command", "shim_script"]
