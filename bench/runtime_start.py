"""Start latency and memory of idle containers: ProcessRuntime vs plain subprocess, same run.

    python bench/runtime_start.py [--count 100]

Starts ``count`` idle ``sleep`` containers one after the other through ProcessRuntime and, as the
baseline, the same number of ``sleep`` processes with ``subprocess.Popen(start_new_session=True)``.
Prints start latency p50/p99 (per start call), a burst of concurrent starts, the memory of the idle
processes (RSS sum, and PSS sum which counts shared pages once) and the stop time, with the ratio
runtime/baseline. Everything it starts is stopped before it exits; it takes a few seconds.

The baseline writes no files, while each ProcessRuntime start creates its log and record files in
the work directory (a temporary directory: set TMPDIR=/dev/shm to take the disk out of the numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from jiriaf.jrm.runtime.base import ContainerKey, ContainerLaunch
from jiriaf.jrm.runtime.process import ProcessRuntime
from jiriaf.jrm.runtime.processes import all_container_pids, container_marker

PATH = "/usr/local/bin:/usr/bin:/bin"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def memory(pids: list[int]) -> tuple[float, float]:
    """(RSS sum, PSS sum) in MiB of the live processes among ``pids``."""
    rss = pss = 0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


def wait_for_exec(pids: list[int], name: str, limit: float = 20.0) -> None:
    """Wait until every pid (or one of its children) runs ``name`` so memory is measured idle."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            names = [p.name() for pid in pids for p in [psutil.Process(pid), *psutil.Process(pid).children()]]
        except psutil.NoSuchProcess:
            names = []
        if names.count(name) >= len(pids):
            return
        time.sleep(0.02)


def baseline(count: int) -> dict[str, float]:
    sleep = shutil.which("sleep") or "/bin/sleep"
    latencies: list[float] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            procs.append(
                subprocess.Popen(
                    [sleep, "1000"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            latencies.append(time.perf_counter() - t)
        pids = [p.pid for p in procs]
        wait_for_exec(pids, "sleep")
        rss, pss = memory(pids)
        burst_start = time.perf_counter()
        burst = [
            subprocess.Popen([sleep, "1000"], start_new_session=True, stdout=subprocess.DEVNULL)
            for _ in range(count)
        ]
        burst_time = time.perf_counter() - burst_start
        procs += burst
    finally:
        t = time.perf_counter()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        stop_time = time.perf_counter() - t
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "burst": burst_time,
        "rss": rss,
        "pss": pss,
        "procs": float(len(pids)),
        "stop": stop_time,
    }


async def with_runtime(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="jiriaf-bench-") as tmp:
        workdir = Path(tmp)
        rt = ProcessRuntime(workdir)

        def launch(pod: str) -> ContainerLaunch:
            key = ContainerKey("bench", pod, f"bench-{pod}", "main")
            return ContainerLaunch(
                key,
                ["sleep", "1000"],
                {"PATH": PATH, "HOME": tmp},
                workdir,
                workdir / "bench" / pod / "containers" / "main",
            )

        latencies: list[float] = []
        keys: list[ContainerKey] = []
        try:
            for i in range(count):
                item = launch(f"seq{i}")
                t = time.perf_counter()
                await rt.start(item)
                latencies.append(time.perf_counter() - t)
                keys.append(item.key)
            shims = [f.pid for k in keys if (f := rt.inspect(k)) is not None and f.pid is not None]
            await asyncio.to_thread(wait_for_exec, shims, "sleep")
            by_marker = all_container_pids()
            pids = [pid for k in keys for pid in by_marker.get(container_marker(k), [])]
            rss, pss = memory(pids)
            burst_items = [launch(f"burst{i}") for i in range(count)]
            burst_start = time.perf_counter()
            await asyncio.gather(*(rt.start(item) for item in burst_items))
            burst_time = time.perf_counter() - burst_start
            keys += [item.key for item in burst_items]
        finally:
            t = time.perf_counter()
            await asyncio.gather(*(rt.stop(k, 5) for k in keys))
            stop_time = time.perf_counter() - t
            rt.close()
        return {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "burst": burst_time,
            "rss": rss,
            "pss": pss,
            "procs": float(len(pids)),
            "stop": stop_time,
        }


ROWS = [
    ("start latency p50 (ms)", "p50", 1000.0),
    ("start latency p99 (ms)", "p99", 1000.0),
    ("burst of N concurrent starts (ms)", "burst", 1000.0),
    ("idle processes", "procs", 1.0),
    ("RSS sum (MiB)", "rss", 1.0),
    ("PSS sum (MiB)", "pss", 1.0),
    ("stop all 2N (ms)", "stop", 1000.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="containers per measurement (N)")
    args = parser.parse_args()
    base = baseline(args.count)
    ours = asyncio.run(with_runtime(args.count))
    print(f"{args.count} idle `sleep` containers; ProcessRuntime vs subprocess.Popen in the same run\n")
    header = f"{'metric':36} {'subprocess':>12} {'ProcessRuntime':>15} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for label, name, scale in ROWS:
        b, o = base[name] * scale, ours[name] * scale
        ratio = f"{o / b:.2f}" if b else "-"
        print(f"{label:36} {b:12.2f} {o:15.2f} {ratio:>7}")


if __name__ == "__main__":
    main()
