"""Service rate of the stream receiver against its thread count, with the ratio to 16 threads.

    python bench/stream_rates.py [--threads 8,16,24,32,48] [--seconds 5]
                                 [--own-ms 48 --contention-ms 3] [--fixed]

For each thread count, a receiver process (``python -m jiriaf.workloads.stream.receiver``) starts
paused, a sender process fills its FIFO over TCP with about ``--seconds`` worth of events, and the
receiver is resumed. The service rate is measured while the FIFO stays non-empty, from the counts
of processed events at two instants (after 10% and at 90% of the backlog) and the time between
them, and compared with the cost model's capacity. The last column is the measured rate relative
to the 16-thread rate of the same run: the paper's receiver has mu(32) / mu(16) = 4/3
(500/3 Hz and 2000/9 Hz). Everything runs on 127.0.0.1 and is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from jiriaf.devcluster.cluster import free_port
from jiriaf.workloads.stream.service import PAPER_COST, ServiceCost


def get_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        status: dict[str, Any] = json.loads(resp.read())
        return status


def post(port: int, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/control",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).read()


def until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"error: timed out after {timeout:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(threads: int, cost: ServiceCost, seconds: float, logs: Path) -> tuple[float, int]:
    """The saturated service rate (Hz) of a receiver with ``threads`` workers, and the backlog used."""
    backlog = max(200, int(cost.capacity(threads) * seconds))
    port, http_port = free_port(), free_port()
    receiver = subprocess.Popen(
        [
            sys.executable, "-m", "jiriaf.workloads.stream.receiver",
            "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
            "--threads", str(threads),
            "--own-ms", f"{cost.own * 1000:g}", "--contention-ms", f"{cost.contention * 1000:g}",
            *([] if cost.random else ["--fixed-service-times"]),
            "--paused", "--log-level", "WARNING",
        ],
        stdout=(logs / f"receiver-{threads}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    sender: subprocess.Popen[bytes] | None = None
    try:
        until(lambda: get_status(http_port)["alive_threads"] == threads, 60, "the receiver")
        sender = subprocess.Popen(
            [
                sys.executable, "-m", "jiriaf.workloads.stream.sender",
                "--target", f"127.0.0.1:{port}", "--rate", "20000", "--regular", "--count", str(backlog),
                "--log-level", "WARNING",
            ],
            stdout=(logs / f"sender-{threads}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        until(lambda: get_status(http_port)["arrivals"] == backlog, 120, "the backlog to arrive")
        post(http_port, {"paused": False})
        low, high = int(backlog * 0.1), int(backlog * 0.9)
        first = until(
            lambda: (s := get_status(http_port))["processed"] >= low and (s, time.monotonic()), 300, "10%"
        )
        last = until(
            lambda: (s := get_status(http_port))["processed"] >= high and (s, time.monotonic()), 300, "90%"
        )
        (s0, t0), (s1, t1) = first, last
        return (s1["processed"] - s0["processed"]) / (t1 - t0), backlog
    finally:
        if sender is not None:
            stop(sender)
        stop(receiver)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--threads", default="8,16,24,32,48", help="thread counts (16 is always measured)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of backlog per measurement")
    ap.add_argument("--own-ms", type=float, default=PAPER_COST.own * 1000, help="own cost per event")
    ap.add_argument(
        "--contention-ms", type=float, default=PAPER_COST.contention * 1000, help="cost per event per thread"
    )
    ap.add_argument("--fixed", action="store_true", help="fixed service times (default: exponential)")
    args = ap.parse_args()
    try:
        counts = sorted({16, *(int(t) for t in args.threads.split(","))})
    except ValueError:
        raise SystemExit("error: --threads is a comma-separated list of integers") from None
    if not all(1 <= t <= 256 for t in counts) or not 0.5 <= args.seconds <= 60:
        raise SystemExit("error: threads must be 1-256 and seconds 0.5-60")
    if args.own_ms < 0 or args.contention_ms < 0 or args.own_ms + args.contention_ms <= 0:
        raise SystemExit("error: costs must be non-negative with a positive sum")
    cost = ServiceCost(own=args.own_ms / 1000, contention=args.contention_ms / 1000, random=not args.fixed)
    rows: list[tuple[int, float, float, int]] = []
    with TemporaryDirectory(prefix="jiriaf-bench-stream-") as tmp:
        for threads in counts:
            rate, backlog = measure(threads, cost, args.seconds, Path(tmp))
            rows.append((threads, rate, cost.capacity(threads), backlog))
            print(f"[bench] {threads} threads: {rate:.1f} Hz over a backlog of {backlog}", flush=True)
    base = next(r for r in rows if r[0] == 16)
    print()
    kind = "exponential" if cost.random else "fixed"
    print(f"per-event cost: {kind}, mean {cost.own * 1000:g} ms + {cost.contention * 1000:g} ms per thread")
    header = ("threads", "measured Hz", "model Hz", "meas/model", "ratio to 16", "model ratio")
    print("  ".join(f"{h:>11}" if i else f"{h:>7}" for i, h in enumerate(header)))
    for threads, rate, model, _ in rows:
        print(
            f"{threads:>7}  {rate:>11.1f}  {model:>11.1f}  {rate / model:>11.3f}  "
            f"{rate / base[1]:>11.3f}  {model / base[2]:>11.3f}"
        )


if __name__ == "__main__":
    main()
