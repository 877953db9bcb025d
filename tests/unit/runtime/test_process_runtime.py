"""ProcessRuntime with real processes: exit codes, logs, stop, adoption after a JRM crash.

Every test uses pod uids with a per-test prefix; the fixture SIGKILLs anything still carrying such a
marker at the end, so no process outlives its test. Waits are bounded polls (the bounds only guard
against hangs; nothing asserts on time).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jiriaf.jrm.runtime.base import ContainerFacts, ContainerKey, ContainerLaunch, RuntimeStartError
from jiriaf.jrm.runtime.process import ProcessRuntime, read_exit_file, resolve_command
from jiriaf.jrm.runtime.processes import (
    MARKER_ENV,
    all_container_pids,
    container_marker,
    container_pids,
    read_stat,
    signal_all,
    take_snapshot,
)
from support import not_none

pytestmark = pytest.mark.unit

PATH = "/usr/local/bin:/usr/bin:/bin"
LIMIT = 30.0  # bound of every wait: a guard against hangs, not a timing assertion
SLEEP_1000 = f"{resolve_command('sleep', {'PATH': PATH}, Path('/'))} 1000"  # argv[0] is the resolved path


async def until(predicate: Callable[[], bool], what: str, limit: float = LIMIT) -> None:
    """Poll ``predicate`` until it holds; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    info = read_stat(pid)
    return info is not None and info.state not in ("Z", "X", "x")


def commands(marker: str) -> set[str]:
    """Command lines of the container's processes (after they exec'd)."""
    found = set()
    for pid in container_pids(marker):
        try:
            found.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            pass
    return found


def has_commands(marker: str, *wanted: str) -> Callable[[], bool]:
    return lambda: set(wanted) <= commands(marker)


@dataclass
class Env:
    """What a test needs: a work directory, unique keys and runtimes that are cleaned up."""

    workdir: Path
    prefix: str
    runtimes: list[ProcessRuntime] = field(default_factory=list)

    def key(self, pod: str, container: str = "main") -> ContainerKey:
        return ContainerKey("default", pod, f"{self.prefix}-{pod}", container)

    def runtime(self, **options: Any) -> ProcessRuntime:
        rt = ProcessRuntime(self.workdir, **options)
        self.runtimes.append(rt)
        return rt

    def launch(
        self,
        key: ContainerKey,
        argv: list[str],
        env: dict[str, str] | None = None,
        restart_count: int = 0,
        working_dir: Path | None = None,
    ) -> ContainerLaunch:
        return ContainerLaunch(
            key=key,
            argv=argv,
            env=env if env is not None else {"PATH": PATH, "HOME": str(self.workdir)},
            working_dir=working_dir or self.workdir,
            container_dir=self.workdir / key.namespace / key.pod / "containers" / key.container,
            restart_count=restart_count,
        )

    def own_processes(self) -> list[int]:
        snap = take_snapshot()
        return [p.pid for p in snap.procs if p.marker and p.marker.startswith(self.prefix)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(workdir=tmp_path / "work", prefix=f"t{uuid.uuid4().hex[:12]}")
    e.workdir.mkdir()
    yield e
    for rt in e.runtimes:
        for key in rt.container_keys():
            try:
                await asyncio.wait_for(rt.stop(key, 0), LIMIT)
            except Exception:  # cleanup must go on; the marker sweep below is the safety net
                pass
        rt.close()
    deadline = time.monotonic() + LIMIT
    while True:
        snap = take_snapshot()
        left = [p for p in snap.procs if p.marker and p.marker.startswith(e.prefix)]
        if not left:
            break
        signal_all(left, signal.SIGKILL)
        assert time.monotonic() < deadline, f"could not kill {left}"
        await asyncio.sleep(0.02)
    reap(e.runtimes)


def reap(runtimes: list[ProcessRuntime]) -> None:
    """Reap shims that were children of this process (a crashed runtime left them unreaped)."""
    for rt in runtimes:
        for key in rt.container_keys():
            facts = rt.inspect(key)
            if facts is not None and facts.pid is not None:
                try:
                    os.waitpid(facts.pid, os.WNOHANG)
                except ChildProcessError:
                    pass


async def finished(rt: ProcessRuntime, key: ContainerKey) -> ContainerFacts:
    await until(lambda: not _facts(rt, key).running, f"{key.pod} to finish")
    return _facts(rt, key)


def _facts(rt: ProcessRuntime, key: ContainerKey) -> ContainerFacts:
    facts = rt.inspect(key)
    assert facts is not None
    return facts


HAVE_BASH = Path("/bin/bash").exists()
RUNTIME_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "popen-polling": {"spawner": "popen", "use_pidfd": False, "poll_interval": 0.05},
    "bash-helper": {"shell": "/bin/bash"},
}


# ------------------------------------------------------------------------------------ exit codes


@pytest.mark.parametrize("variant", list(RUNTIME_VARIANTS))
@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 3", 3), ("kill -KILL $$", 128 + 9), ("kill -TERM $$", 128 + 15)],
)
async def test_exit_codes(env: Env, variant: str, script: str, code: int) -> None:
    if variant == "bash-helper" and not HAVE_BASH:
        pytest.skip("no bash")
    rt = env.runtime(**RUNTIME_VARIANTS[variant])
    key = env.key("exit")
    started = await rt.start(env.launch(key, ["sh", "-c", script]))
    # start() reports what is true when it returns: a fast command may already have ended
    assert started.pid is not None and started.pgid == started.pid
    assert started.started_at is not None
    pgid_file = env.workdir / "default" / "exit" / "containers" / "main" / "pgid"
    assert pgid_file.read_text() == f"{started.pid}\n"
    facts = await finished(rt, key)
    assert facts.exit_code == code
    assert facts.message is None
    assert facts.finished_at is not None and facts.finished_at >= started.started_at
    assert facts.pid == started.pid and facts.pids == []
    record = read_exit_file(pgid_file.parent / "exit")
    assert record is not None and record.code == code


@pytest.mark.parametrize("variant", ["default", "popen-polling"])
async def test_each_exit_is_passed_once_to_the_exit_listener(env: Env, variant: str) -> None:
    """The pod controller wakes a pod on these calls instead of polling: every end of a run that a
    runtime notices after start() or adopt() is reported once, with final facts, whether the run
    ended by itself, by stop() or after it was adopted (runs that ended while no runtime watched
    are in adopt()'s answer instead)."""
    seen: dict[str, list[tuple[str, int | None]]] = {"first": [], "second": []}

    def listen(rt: ProcessRuntime, name: str) -> None:
        def record(key: ContainerKey) -> None:
            facts = rt.inspect(key)
            seen[name].append((key.pod, facts.exit_code if facts and not facts.running else None))

        rt.exit_listener = record

    rt = env.runtime(**RUNTIME_VARIANTS[variant])
    listen(rt, "first")
    assert rt.notifies_exits
    done, stopped, adopted = env.key("done"), env.key("stopped"), env.key("adopted")
    await rt.start(env.launch(done, ["sh", "-c", "exit 4"]))
    await rt.start(env.launch(stopped, ["sleep", "1000"]))
    await until(lambda: len(seen["first"]) == 1, "the exit of 'done'")
    await rt.stop(stopped, 5)
    await until(lambda: len(seen["first"]) == 2, "the exit of 'stopped'")
    await rt.start(env.launch(adopted, ["sleep", "1000"]))
    rt.close()  # a JRM restart: the next runtime adopts the running container and watches it
    rt2 = env.runtime(**RUNTIME_VARIANTS[variant])
    listen(rt2, "second")
    assert [f.key for f in rt2.adopt() if f.running] == [adopted]
    os.killpg(not_none(_facts(rt2, adopted).pgid), signal.SIGTERM)
    await until(lambda: len(seen["second"]) >= 1, "the exit of the adopted container")
    await asyncio.sleep(0.2)  # nothing is reported twice
    term = 128 + signal.SIGTERM
    assert seen["first"] == [("done", 4), ("stopped", term)]
    assert seen["second"] == [("adopted", term)]


async def test_output_is_captured(env: Env) -> None:
    rt = env.runtime()
    key = env.key("out")
    await rt.start(env.launch(key, ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 0"]))
    await finished(rt, key)
    paths = rt.log_paths(key)
    assert paths is not None
    assert paths[0].read_text() == "to-stdout\n"
    assert paths[1].read_text() == "to-stderr\n"
    assert rt.log_paths(key, previous=True) is None


async def test_restart_rotates_logs_to_previous(env: Env) -> None:
    rt = env.runtime()
    key = env.key("restart")
    await rt.start(env.launch(key, ["sh", "-c", "echo one; echo err-one >&2; exit 1"]))
    first = await finished(rt, key)
    await rt.start(env.launch(key, ["sh", "-c", "echo two; exit 0"], restart_count=1))
    second = await finished(rt, key)
    assert second.restart_count == 1 and second.exit_code == 0
    assert second.previous is not None
    assert second.previous.exit_code == 1 and second.previous.pid == first.pid
    current, previous = rt.log_paths(key), rt.log_paths(key, previous=True)
    assert current is not None and previous is not None
    assert current[0].read_text() == "two\n" and current[1].read_text() == ""
    assert previous[0].read_text() == "one\n" and previous[1].read_text() == "err-one\n"
    cdir = current[0].parent
    meta = json.loads((cdir / "run.previous.json").read_text())
    assert meta["restart_count"] == 0 and meta["pid"] == first.pid


async def test_unknown_container(env: Env) -> None:
    rt = env.runtime()
    key = env.key("nothing")
    assert rt.inspect(key) is None
    assert rt.log_paths(key) is None
    assert await rt.stop(key, 1) is None


# ------------------------------------------------------------------------------------------ stop


async def test_stop_ends_the_whole_tree(env: Env) -> None:
    rt = env.runtime()
    key = env.key("tree")
    script = (
        "setsid sleep 1000 & "  # a grandchild in its own session
        "(setsid sh -c 'sleep 1001 & exit 0' &); "  # a double-forked daemon, re-parented away
        "env -i sleep 1002 & "  # a group member without the marker
        "sleep 1003"
    )
    started = await rt.start(env.launch(key, ["sh", "-c", script]))
    marker = container_marker(key)
    sleeps = [f"sleep {n}" for n in (1000, 1001, 1002, 1003)]
    await until(has_commands(marker, *sleeps), "the whole tree to start")
    snap = take_snapshot()
    members = snap.members(marker)
    leavers = [p for p in members if p.sid != started.pid]
    assert len(leavers) >= 2, members  # left the session: found only by the marker
    assert any(p.marker is None for p in members)  # found only by its process group
    assert sorted(p.pid for p in members) == rt.container_pids(key)
    assert marker in all_container_pids()

    facts = await rt.stop(key, 5)
    assert facts is not None and not facts.running
    assert facts.exit_code == 128 + signal.SIGTERM
    assert not any(alive(p.pid) for p in members)
    assert container_pids(marker) == []


async def test_sigterm_ignoring_processes_are_killed_after_grace(env: Env) -> None:
    rt = env.runtime()
    key = env.key("stubborn")
    script = "(setsid sh -c 'trap \"\" TERM; sleep 1000' &); trap '' TERM; sleep 1001"
    await rt.start(env.launch(key, ["sh", "-c", script]))
    marker = container_marker(key)
    await until(has_commands(marker, "sleep 1000", "sleep 1001"), "the processes to start")
    members = take_snapshot().members(marker)
    facts = await rt.stop(key, 0.3)
    assert facts is not None and not facts.running
    assert facts.exit_code == 128 + signal.SIGKILL
    assert facts.message is None  # the shim survived to record the status of its child
    assert not any(alive(p.pid) for p in members)
    assert container_pids(marker) == []


async def test_group_killed_with_its_shim(env: Env) -> None:
    rt = env.runtime()
    key = env.key("sigkilled")
    started = await rt.start(env.launch(key, ["sleep", "1000"]))
    assert started.pgid is not None
    os.killpg(started.pgid, signal.SIGKILL)
    facts = await finished(rt, key)
    assert facts.exit_code == 137 and facts.signal == signal.SIGKILL
    assert facts.message is not None and "inferred" in facts.message
    paths = rt.log_paths(key)
    assert paths is not None
    record = read_exit_file(paths[0].parent / "exit")
    assert record is not None and record.code == 137  # persisted for a later adopt()


async def test_leftovers_are_killed_when_the_main_process_exits(env: Env) -> None:
    rt = env.runtime()
    key = env.key("leftovers")
    await rt.start(env.launch(key, ["sh", "-c", "sleep 1000 & setsid sleep 1001 & exit 4"]))
    facts = await finished(rt, key)
    assert facts.exit_code == 4
    marker = container_marker(key)
    await until(lambda: container_pids(marker) == [], "leftovers to be killed")


async def test_start_refuses_a_running_container(env: Env) -> None:
    rt = env.runtime()
    key = env.key("twice")
    await rt.start(env.launch(key, ["sleep", "1000"]))
    marker = container_marker(key)
    await until(has_commands(marker, SLEEP_1000), "sleep to run")
    with pytest.raises(RuntimeStartError, match="still running"):
        await rt.start(env.launch(key, ["sleep", "1000"], restart_count=1))
    assert len(container_pids(marker)) == 2  # shim + sleep, no duplicate


# ---------------------------------------------------------------------------------- start errors


async def test_start_errors_are_precise(env: Env) -> None:
    rt = env.runtime()
    plain = env.workdir / "plain.txt"
    plain.write_text("not a program\n")
    badshebang = env.workdir / "bad.sh"
    badshebang.write_text("#!/nonexistent/interpreter\necho hi\n")
    badshebang.chmod(0o755)
    cases = [
        (["no-such-command-xyz"], None, "not found in PATH"),
        (["./missing.sh"], None, "not found"),
        ([str(plain)], None, "not executable"),
        ([str(env.workdir)], None, "is a directory"),
        ([str(badshebang)], None, "interpreter"),
        (["sleep", "1"], env.workdir / "no-such-dir", "working directory"),
        ([], None, "no command"),
    ]
    for i, (argv, working_dir, message) in enumerate(cases):
        key = env.key(f"bad{i}")
        with pytest.raises(RuntimeStartError, match=message):
            await rt.start(env.launch(key, argv, working_dir=working_dir))
        assert rt.inspect(key) is None


async def test_exit_127_from_the_shell_gets_a_message(env: Env) -> None:
    rt = env.runtime()
    key = env.key("notfound")
    await rt.start(env.launch(key, ["sh", "-c", "no-such-command-xyz"]))
    facts = await finished(rt, key)
    assert facts.exit_code == 127
    assert facts.message is not None and "not found" in facts.message


def test_resolve_command_follows_path_like_execvp(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\n")  # exists but is not executable: skipped
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(stat.S_IRWXU)
    env = {"PATH": f"{first}:{second}"}
    assert resolve_command("tool", env, tmp_path) == str(second / "tool")
    with pytest.raises(RuntimeStartError, match="not executable"):
        resolve_command("tool", {"PATH": str(first)}, tmp_path)
    assert resolve_command("tool", {"PATH": "b"}, tmp_path) == str(tmp_path / "b" / "tool")
    assert resolve_command("sh", {}, tmp_path).endswith("/sh")  # no PATH: the system default path


# ----------------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    "workload_env",
    [
        {"PATH": PATH, "HOME": "/home/x", "GREETING": "hello world"},
        # names dash would drop or rewrite: the exact-environment helper is used
        {"PATH": PATH, "my.var": "1", "IFS": ":", "PWD": "/nowhere", "x-y": "2"},
        {},  # nothing at all: the command is found in the default path
    ],
)
async def test_environment_is_exactly_the_launch_env(
    env: Env, monkeypatch: pytest.MonkeyPatch, workload_env: dict[str, str]
) -> None:
    monkeypatch.setenv("JIRIAF_TEST_LEAK", "secret")
    rt = env.runtime()
    key = env.key("env")
    await rt.start(env.launch(key, ["env"], env=workload_env))
    facts = await finished(rt, key)
    assert facts.exit_code == 0
    paths = rt.log_paths(key)
    assert paths is not None
    seen = dict(line.split("=", 1) for line in paths[0].read_text().splitlines())
    assert seen == {**workload_env, MARKER_ENV: container_marker(key)}
    assert not (paths[0].parent / ".env.json").exists()


# ---------------------------------------------------------------------------------------- adopt

GATED_EXIT = "while [ ! -e go ]; do sleep 0.02; done; exit 7"


async def test_adopt_after_a_crash_in_process(env: Env, tmp_path: Path) -> None:
    rt1 = env.runtime()
    running, gated = env.key("running"), env.key("gated")
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    first = await rt1.start(env.launch(running, ["sleep", "1000"], restart_count=2))
    await rt1.start(env.launch(gated, ["sh", "-c", GATED_EXIT], working_dir=gate_dir))
    marker = container_marker(running)
    await until(has_commands(marker, SLEEP_1000), "sleep to run")
    before = container_pids(marker)
    rt1.close()  # the "crash": the first runtime no longer watches anything

    rt2 = env.runtime()
    adopted = {f.key: f for f in rt2.adopt()}
    assert adopted[running].running and adopted[running].pid == first.pid
    assert adopted[running].restart_count == 2
    assert adopted[gated].running
    assert container_pids(marker) == before  # adopted, not restarted: no second process
    assert {f.key for f in rt2.adopt()} == set(adopted)  # adopting again duplicates nothing
    with pytest.raises(RuntimeStartError, match="still running"):
        await rt2.start(env.launch(running, ["sleep", "1000"]))

    (gate_dir / "go").touch()
    facts = await finished(rt2, gated)
    assert facts.exit_code == 7 and facts.message is None
    exit_file = env.workdir / "default" / "gated" / "containers" / "main" / "exit"
    assert exit_file.read_text() == "7\n"  # written by the shim itself

    stopped = await rt2.stop(running, 5)
    assert stopped is not None and stopped.exit_code == 128 + signal.SIGTERM
    assert container_pids(marker) == []


JRM_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from jiriaf.jrm.runtime.base import ContainerKey, ContainerLaunch
from jiriaf.jrm.runtime.process import ProcessRuntime

async def main():
    workdir, prefix, gate = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    rt = ProcessRuntime(workdir)
    pids = {}
    for pod, argv, wd in [
        ("running", ["sleep", "1000"], workdir),
        ("gated", ["sh", "-c", sys.argv[4]], gate),
        ("killed", ["sleep", "1000"], workdir),
    ]:
        key = ContainerKey("default", pod, f"{prefix}-{pod}", "main")
        launch = ContainerLaunch(key, argv, {"PATH": "/usr/bin:/bin"}, wd,
                                 workdir / "default" / pod / "containers" / "main")
        pids[pod] = (await rt.start(launch)).pid
    print(json.dumps(pids), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_adopt_after_the_jrm_was_killed(env: Env, tmp_path: Path) -> None:
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    jrm = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        JRM_SCRIPT,
        str(env.workdir),
        env.prefix,
        str(gate_dir),
        GATED_EXIT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert jrm.stdout is not None
        line = await asyncio.wait_for(jrm.stdout.readline(), LIMIT)
        pids = json.loads(line)
    finally:
        jrm.kill()  # kill -9: nothing gets a chance to clean up or record anything
        await jrm.wait()
    running, gated, killed = env.key("running"), env.key("gated"), env.key("killed")
    os.killpg(pids["killed"], signal.SIGKILL)  # a whole group dies while no JRM runs
    await until(lambda: not alive(pids["killed"]), "the killed shim to die")

    rt = env.runtime()
    adopted = {f.key: f for f in rt.adopt()}
    assert adopted[running].running and adopted[running].pid == pids["running"]
    assert adopted[gated].running
    assert not adopted[killed].running and adopted[killed].exit_code == 137
    message = adopted[killed].message
    assert message is not None and "SIGKILL" in message
    assert adopted[killed].finished_at is not None

    (gate_dir / "go").touch()
    facts = await finished(rt, gated)  # not our child: the status can only come from the exit file
    assert facts.exit_code == 7 and facts.message is None

    stopped = await rt.stop(running, 5)
    assert stopped is not None and stopped.exit_code == 128 + signal.SIGTERM
    assert container_pids(container_marker(running)) == []


async def test_adopt_reports_previous_runs(env: Env) -> None:
    rt1 = env.runtime()
    key = env.key("history")
    await rt1.start(env.launch(key, ["sh", "-c", "exit 5"]))
    await finished(rt1, key)
    await rt1.start(env.launch(key, ["sh", "-c", "exit 6"], restart_count=1))
    await finished(rt1, key)
    rt1.close()
    rt2 = env.runtime()
    (facts,) = [f for f in rt2.adopt() if f.key == key]
    assert facts.exit_code == 6 and facts.restart_count == 1
    assert facts.previous is not None and facts.previous.exit_code == 5
    assert rt2.log_paths(key, previous=True) is not None


# ------------------------------------------------------------------------------------------- load


async def test_fifty_containers_started_concurrently(env: Env) -> None:
    rt = env.runtime()
    keys = [env.key(f"many{i}") for i in range(50)]
    started = await asyncio.gather(
        *(rt.start(env.launch(k, ["sh", "-c", f"exit {i % 7}"])) for i, k in enumerate(keys))
    )
    assert len({f.pid for f in started}) == 50
    await until(lambda: all(not _facts(rt, k).running for k in keys), "all 50 to finish")
    assert [_facts(rt, k).exit_code for k in keys] == [i % 7 for i in range(50)]
