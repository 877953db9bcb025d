"""A bounded HTTP load generator in the spirit of ``hey``: concurrency, duration or count, rate limit.

Run: ``python3 -m jiriaf.workloads.loadgen http://127.0.0.1:8080/ --concurrency 8 --duration 30 --rate 50``

``--concurrency`` workers send requests back to back; ``--rate`` caps the total requests per second
(request *i* starts no earlier than *i / rate* seconds after the start). The run ends after
``--duration`` seconds or ``--requests`` requests, whichever comes first (10 s when neither is
given); requests in flight then get up to ``--timeout`` to finish. The summary gives p50/p90/p99/max
latency, requests/s and errors (``--json`` prints it as one JSON object). The generator is bounded by
design: at most 1000 workers, one hour and one million requests, and it refuses targets that are not
loopback addresses unless ``--allow-remote`` is given.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from jiriaf.errors import UserError
from jiriaf.workloads import commandline
from jiriaf.workloads.addresses import require_local_target
from jiriaf.workloads.loadstats import LoadResult, format_summary

MAX_CONCURRENCY = 1000
MAX_DURATION = 3600.0
MAX_REQUESTS = 1_000_000
DEFAULT_DURATION = 10.0


@dataclass(frozen=True)
class LoadPlan:
    """What to send: where, how many at once, for how long, how fast."""

    url: str
    concurrency: int
    duration: float | None
    requests: int | None
    rate: float | None
    timeout: float
    method: str = "GET"

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UserError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise UserError(f"duration must be more than 0 and at most {MAX_DURATION:g} s")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise UserError(f"requests must be between 1 and {MAX_REQUESTS}")
        if self.rate is not None and not 0 < self.rate <= 1_000_000:
            raise UserError("rate must be more than 0 and at most 1000000 requests/s")
        if not 0 < self.timeout <= 600:
            raise UserError("timeout must be more than 0 and at most 600 s")

    @property
    def limit(self) -> int:
        """Most requests the plan sends."""
        return min(self.requests or MAX_REQUESTS, MAX_REQUESTS)

    @property
    def deadline(self) -> float:
        """Seconds after the start when no new request starts."""
        if self.duration is not None:
            return self.duration
        return MAX_DURATION if self.requests is not None else DEFAULT_DURATION

    def start_offset(self, index: int) -> float:
        """Earliest start of request ``index`` (0-based), in seconds after the start."""
        return index / self.rate if self.rate else 0.0


async def run_load(plan: LoadPlan, stop: asyncio.Event | None = None) -> LoadResult:
    """Send the plan's requests and return what was measured; ``stop`` ends the run early."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    t0 = loop.time()
    next_index = 0
    result = LoadResult(duration=0.0)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    connector = aiohttp.TCPConnector(limit=plan.concurrency, force_close=False)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while True:
            index = next_index
            if index >= plan.limit:
                return
            start_at = plan.start_offset(index)
            if start_at >= plan.deadline or loop.time() - t0 >= plan.deadline or stop.is_set():
                return
            next_index = index + 1
            delay = t0 + start_at - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            if loop.time() - t0 >= plan.deadline:
                return
            sent = loop.time()
            try:
                async with session.request(plan.method, plan.url) as resp:
                    await resp.read()
                    result.record(loop.time() - sent, resp.status)
            except TimeoutError:
                result.fail("timeout")
            except aiohttp.ClientConnectorError:
                result.fail("connect")
            except aiohttp.ClientError as exc:
                result.fail(type(exc).__name__)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(plan.concurrency)))
    result.duration = loop.time() - t0
    return result


def parser() -> commandline.ArgumentParser:
    ap = commandline.ArgumentParser(
        prog="python3 -m jiriaf.workloads.loadgen", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("url", help="target URL (a loopback address unless --allow-remote)")
    ap.add_argument(
        "-c",
        "--concurrency",
        type=commandline.number_type(int, 1, MAX_CONCURRENCY),
        default=4,
        help="workers sending at once (default 4)",
    )
    ap.add_argument(
        "-z",
        "--duration",
        type=commandline.number_type(float, 0, MAX_DURATION, low_open=True),
        default=None,
        help=f"seconds to run (default {DEFAULT_DURATION:g} unless --requests is given)",
    )
    ap.add_argument(
        "-n",
        "--requests",
        type=commandline.number_type(int, 1, MAX_REQUESTS),
        default=None,
        help="requests to send",
    )
    ap.add_argument(
        "-q",
        "--rate",
        type=commandline.number_type(float, 0, 1_000_000, low_open=True),
        default=None,
        help="total requests per second (default: as fast as the workers go)",
    )
    ap.add_argument(
        "-t",
        "--timeout",
        type=commandline.number_type(float, 0, 600, low_open=True),
        default=10.0,
        help="seconds per request (default 10)",
    )
    ap.add_argument("-m", "--method", default="GET", choices=["GET", "HEAD", "POST"], help="HTTP method")
    ap.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return ap


def _json_safe(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    require_local_target(args.url, args.allow_remote)
    plan = LoadPlan(
        url=args.url,
        concurrency=int(args.concurrency),
        duration=args.duration,
        requests=int(args.requests) if args.requests is not None else None,
        rate=args.rate,
        timeout=float(args.timeout),
        method=args.method,
    )
    started = time.time()

    async def until_done_or_signalled() -> LoadResult:
        stop = asyncio.Event()
        commandline.install_stop_signals(stop)  # SIGTERM (pod deleted) still prints the summary
        return await run_load(plan, stop)

    result = asyncio.run(until_done_or_signalled())
    if args.json:
        summary = {k: _json_safe(v) for k, v in result.summary().items()}
        print(json.dumps({"url": args.url, "started": started, **summary}), flush=True)
    else:
        print(format_summary(result), flush=True)


if __name__ == "__main__":
    commandline.run(main)
