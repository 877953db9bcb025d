"""jiriaf.jrm.metrics: monotone container and node counters from per-process readings (pure logic),
and the cgroup v2 helpers against a directory tree laid out like /proc and /sys/fs/cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from jiriaf.jrm.metrics import (
    MIN_CPU_SECONDS,
    CgroupReading,
    ContainerAccount,
    ContainerRef,
    ContainerUsage,
    Counters,
    NodeAccount,
    ProcessReading,
    cgroup2_mount,
    covered,
    exclusive_cgroup,
    process_cgroup,
    read_cgroup,
)

pytestmark = pytest.mark.unit

REF = ContainerRef("ns", "pod", "uid-1", "main", "uid-1/main", started_at=1000.0, pgid=10)


def proc(
    pid: int,
    ppid: int = 1,
    *,
    user: float = 0.0,
    system: float = 0.0,
    cuser: float = 0.0,
    csys: float = 0.0,
    ticks: int | None = None,
    rss: int = 1000,
    ws: int = 500,
    read: int = 0,
    write: int = 0,
    vol: int = 0,
) -> ProcessReading:
    return ProcessReading(
        pid=pid,
        ppid=ppid,
        pgid=10,
        start_ticks=pid if ticks is None else ticks,
        name=f"p{pid}",
        started_at=1000.0,
        cpu_user=user,
        cpu_system=system,
        children_user=cuser,
        children_system=csys,
        rss=rss,
        pss=ws,
        threads=1,
        open_fds=3,
        read_bytes=read,
        write_bytes=write,
        ctx_voluntary=vol,
    )


def total(usage: ContainerUsage) -> float:
    return usage.counters.cpu_user + usage.counters.cpu_system


# ------------------------------------------------------------------------------------- container


def test_counters_sum_processes_with_reaped_children_and_gauges_sum_too() -> None:
    acc = ContainerAccount(REF)
    u = acc.update([proc(10, user=1.0, system=0.5, cuser=2.0, csys=0.25), proc(11, 10, user=3.0)], now=10.0)
    assert u.counters.cpu_user == pytest.approx(6.0)
    assert u.counters.cpu_system == pytest.approx(0.75)
    assert u.rss == u.working_set == 2000 and u.pss == 1000 and u.threads == 2 and u.open_fds == 6
    assert [p.pid for p in u.processes] == [10, 11]
    assert u.cpu_rate is None  # no previous sample


def test_rate_is_cpu_growth_over_time_between_samples() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0)], now=10.0)
    u = acc.update([proc(10, user=3.0)], now=14.0)
    assert u.cpu_rate == pytest.approx(0.5)


def test_child_reaped_by_a_live_parent_is_not_counted_twice() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0), proc(11, 10, user=2.0, read=100)], now=1.0)
    # the child ended; the parent waited for it: its time and I/O now sit in the parent's counters
    u = acc.update([proc(10, user=1.0, cuser=2.5, read=100)], now=2.0)
    assert total(u) == pytest.approx(3.5)
    assert u.counters.read_bytes == 100


def test_orphan_that_vanished_is_retired_so_the_counter_keeps_its_time() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0), proc(20, 1, user=4.0, write=50, vol=7)], now=1.0)  # a leaver (ppid 1)
    u = acc.update([proc(10, user=1.5)], now=2.0)
    assert total(u) == pytest.approx(5.5)
    assert u.counters.write_bytes == 50 and u.counters.ctx_voluntary == 7
    u = acc.update([proc(10, user=2.0)], now=3.0)
    assert total(u) == pytest.approx(6.0)  # retired once, not again


def test_process_whose_parent_vanished_too_but_grandparent_lives_is_covered() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0), proc(11, 10, user=1.0), proc(12, 11, user=1.0)], now=1.0)
    u = acc.update([proc(10, user=1.0, cuser=3.0)], now=2.0)  # 11 reaped 12, then 10 reaped 11
    assert total(u) == pytest.approx(4.0)


def test_chain_of_vanished_processes_reaped_outside_is_retired_whole() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0), proc(20, 1, user=2.0), proc(21, 20, user=3.0)], now=1.0)
    u = acc.update([proc(10, user=1.0)], now=2.0)
    assert total(u) == pytest.approx(6.0)


def test_short_drop_while_a_child_waits_as_zombie_is_hidden_then_growth_resumes() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0), proc(11, 10, user=5.0)], now=1.0)
    gap = acc.update([proc(10, user=1.0)], now=2.0)  # child exited, not yet reaped (zombies are not read)
    assert total(gap) == pytest.approx(6.0)
    back = acc.update([proc(10, user=1.2, cuser=5.1)], now=3.0)
    assert total(back) == pytest.approx(6.3)


def test_counters_never_decrease() -> None:
    acc = ContainerAccount(REF)
    seen: list[float] = []
    for user, cuser in [(1.0, 0.0), (0.5, 0.0), (0.7, 0.0), (2.0, 1.0)]:
        seen.append(total(acc.update([proc(10, user=user, cuser=cuser)], now=len(seen) + 1.0)))
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(3.0)


def test_recycled_pid_is_another_process() -> None:
    acc = ContainerAccount(REF)
    acc.update([proc(10, user=1.0), proc(30, 1, user=2.0, ticks=100)], now=1.0)
    u = acc.update([proc(10, user=1.0), proc(30, 1, user=0.1, ticks=200)], now=2.0)
    assert total(u) == pytest.approx(3.1)  # the old 30 retired with its 2.0, the new one adds 0.1


def test_container_that_used_no_cpu_reports_a_tiny_non_zero_counter() -> None:
    u = ContainerAccount(REF).update([proc(10)], now=1.0)
    assert total(u) == 0.0
    assert u.cpu_seconds == MIN_CPU_SECONDS > 0


def test_cgroup_figures_replace_process_sums_for_cpu_and_working_set() -> None:
    acc = ContainerAccount(REF)
    cg = CgroupReading("/jobs/c1", cpu_user=7.0, cpu_system=1.0, memory_current=10_000, inactive_file=4_000)
    u = acc.update([proc(10, user=1.0, ws=500)], now=1.0, cgroup=cg)
    assert total(u) == pytest.approx(8.0)
    assert u.working_set == 6_000
    assert u.rss == 1000 and u.pss == 500  # RSS and PSS stay the process sums
    assert u.cgroup == "/jobs/c1"


def test_cgroup_working_set_is_never_negative() -> None:
    assert CgroupReading("/x", 0, 0, memory_current=10, inactive_file=50).working_set == 0


def test_covered_stops_on_a_parent_loop() -> None:
    a = proc(40, 41)
    b = proc(41, 40)
    assert covered(a, {40: a, 41: b}, alive={10}) is False


def test_counters_helpers() -> None:
    c = Counters(1.0, 2.0, 3, 4, 5, 6)
    assert c.plus(Counters(1.0, 1.0, 1, 1, 1, 1)) == Counters(2.0, 3.0, 4, 5, 6, 7)
    assert Counters(0.5, 3.0, 0, 9, 0, 0).at_least(c) == Counters(1.0, 3.0, 3, 9, 5, 6)


# ------------------------------------------------------------------------------------------ node


def usage(run_start: float, cpu: float) -> ContainerUsage:
    ref = ContainerRef("ns", "pod", "uid-1", "main", "m", started_at=run_start)
    return ContainerUsage(
        ref=ref,
        timestamp=0.0,
        counters=Counters(cpu_user=cpu),
        rss=1,
        pss=1,
        working_set=1,
        threads=1,
        open_fds=0,
        processes=(),
    )


def test_node_counter_keeps_the_cpu_of_ended_runs_and_never_decreases() -> None:
    node = NodeAccount()
    cpu, rate = node.update(1.0, [usage(1.0, 5.0)], now=10.0)
    assert cpu == pytest.approx(6.0) and rate is None
    cpu, rate = node.update(1.5, [usage(1.0, 7.0)], now=12.0)
    assert cpu == pytest.approx(8.5) and rate == pytest.approx(1.25)
    cpu, _ = node.update(1.5, [usage(2.0, 0.5)], now=14.0)  # the run restarted: a new run, old retired
    assert cpu == pytest.approx(1.5 + 7.0 + 0.5)
    cpu, _ = node.update(1.6, [], now=16.0)  # the pod is gone
    assert cpu == pytest.approx(1.6 + 7.0 + 0.5)


# --------------------------------------------------------------------------------------- cgroups


def make_tree(tmp_path: Path, cgroups: dict[int, str]) -> tuple[Path, Path]:
    proc_root = tmp_path / "proc"
    mount = tmp_path / "cgroup"
    for pid, path in cgroups.items():
        (proc_root / str(pid)).mkdir(parents=True)
        (proc_root / str(pid) / "cgroup").write_text(f"12:cpu:/legacy\n0::{path}\n")
    return proc_root, mount


def test_exclusive_cgroup_when_the_cgroup_holds_exactly_the_container(tmp_path: Path) -> None:
    proc_root, mount = make_tree(tmp_path, {10: "/user/jrm/c1", 11: "/user/jrm/c1", 99: "/user/jrm"})
    (mount / "user/jrm/c1").mkdir(parents=True)
    (mount / "user/jrm/c1/cgroup.procs").write_text("10\n11\n")
    assert exclusive_cgroup([10, 11], mount, "/user/jrm", proc_root) == "/user/jrm/c1"
    assert process_cgroup(99, proc_root) == "/user/jrm"


@pytest.mark.parametrize(
    ("cgroups", "procs", "own"),
    [
        ({10: "/", 11: "/"}, "10\n11\n", None),  # the root cgroup is never a container's
        ({10: "/user/jrm", 11: "/user/jrm"}, "10\n11\n", "/user/jrm"),  # the JRM's own cgroup
        ({10: "/a", 11: "/b"}, "10\n", None),  # split over two cgroups
        ({10: "/a", 11: "/a"}, "10\n11\n12\n", None),  # someone else is in it too
    ],
)
def test_no_exclusive_cgroup(tmp_path: Path, cgroups: dict[int, str], procs: str, own: str | None) -> None:
    proc_root, mount = make_tree(tmp_path, cgroups)
    for path in set(cgroups.values()):
        (mount / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (mount / path.lstrip("/") / "cgroup.procs").write_text(procs)
    assert exclusive_cgroup(sorted(cgroups), mount, own, proc_root) is None


def test_exclusive_cgroup_of_nothing_or_unreadable(tmp_path: Path) -> None:
    proc_root, mount = make_tree(tmp_path, {10: "/a"})
    assert exclusive_cgroup([], mount, None, proc_root) is None
    assert exclusive_cgroup([10], mount, None, proc_root) is None  # no cgroup.procs
    assert exclusive_cgroup([12], mount, None, proc_root) is None  # no such process


def test_read_cgroup(tmp_path: Path) -> None:
    base = tmp_path / "jobs/c1"
    base.mkdir(parents=True)
    (base / "cpu.stat").write_text("usage_usec 3500000\nuser_usec 2500000\nsystem_usec 1000000\n")
    (base / "memory.current").write_text("1048576\n")
    (base / "memory.stat").write_text("anon 100\ninactive_file 48576\nactive_file 7\n")
    got = read_cgroup(tmp_path, "/jobs/c1")
    assert got == CgroupReading("/jobs/c1", 2.5, 1.0, 1048576, 48576)
    assert got.working_set == 1_000_000
    assert read_cgroup(tmp_path, "/missing") is None
    (base / "cpu.stat").write_text("usage_usec 1\n")  # no controller split: unusable
    assert read_cgroup(tmp_path, "/jobs/c1") is None


def test_cgroup2_mount_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:20 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n"
        "30 22 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "35 22 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(info) == Path("/sys/fs/cgroup/unified")
    info.write_text("22 1 0:20 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    assert cgroup2_mount(info) is None
    assert cgroup2_mount(tmp_path / "absent") is None
