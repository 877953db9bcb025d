"""An HTTP server that burns a fixed amount of CPU per request: the target of the HPA experiment.

Run: ``python3 -m jiriaf.workloads.httpserver --port 8080 --work-ms 20``

``GET /`` burns ``--work-ms`` milliseconds of CPU time (measured with the thread's CPU clock, so the
amount is the same on a busy machine) and answers ``<name> <cpu-ms>``, where ``name`` is the pod
(``$HOSTNAME``). ``GET /?ms=N`` burns N ms instead (at most ``--max-work-ms``). Requests burn one at
a time in one worker thread, like a single-threaded application server: one replica uses at most
one core, so replicas are what adds capacity, while the event loop stays free to answer probes.
``GET /metrics`` is Prometheus, ``GET /healthz`` a readiness check.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jiriaf.workloads import commandline, serving
from jiriaf.workloads.addresses import default_host, url_host


def burn_cpu(seconds: float) -> float:
    """Spin until this thread has used ``seconds`` of CPU time; return the CPU time used."""
    start = time.thread_time()
    target = start + max(0.0, seconds)
    x = 0
    now = start
    while now < target:
        for i in range(500):  # a little arithmetic between clock reads
            x = (x * 31 + i) % 1_000_003
        now = time.thread_time()
    return now - start


@dataclass(frozen=True)
class ServerConfig:
    """What one server does per request."""

    name: str
    work_ms: float
    max_work_ms: float


class BurnMetrics:
    """The server's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jiriaf_http_requests", "Requests answered, by status code", ["code"], registry=self.registry
        )
        self.cpu = Counter("jiriaf_http_cpu_seconds", "CPU time burnt for requests", registry=self.registry)
        self.duration = Histogram(
            "jiriaf_http_request_duration_seconds",
            "Time from receiving a request to answering it",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.in_flight = Gauge("jiriaf_http_in_flight", "Requests being served", registry=self.registry)


def build_app(config: ServerConfig, metrics: BurnMetrics) -> web.Application:
    """The aiohttp application of one server."""
    # one burner thread: requests queue for it like on a one-thread server; the loop keeps answering
    burner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="burn")

    async def shutdown(_app: web.Application) -> None:
        burner.shutdown(wait=False, cancel_futures=True)

    async def work(request: web.Request) -> web.Response:
        started = time.monotonic()
        wanted = config.work_ms
        if "ms" in request.query:
            try:
                wanted = float(request.query["ms"])
            except ValueError:
                metrics.requests.labels("400").inc()
                return web.Response(status=400, text="ms must be a number\n")
            if not 0 <= wanted <= config.max_work_ms:
                metrics.requests.labels("400").inc()
                return web.Response(status=400, text=f"ms must be between 0 and {config.max_work_ms:g}\n")
        metrics.in_flight.inc()
        try:
            used = await asyncio.get_running_loop().run_in_executor(burner, burn_cpu, wanted / 1000.0)
        finally:
            metrics.in_flight.dec()
        metrics.cpu.inc(used)
        metrics.requests.labels("200").inc()
        metrics.duration.observe(time.monotonic() - started)
        return web.Response(text=f"{config.name} {used * 1000.0:.1f}\n")

    app = web.Application()
    app.on_cleanup.append(shutdown)
    app.router.add_get("/", work)
    app.router.add_get("/healthz", serving.healthz)
    app.router.add_get("/metrics", serving.metrics_handler(metrics.registry))
    return app


async def serve(host: str, port: int, config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    commandline.install_stop_signals(stop)
    runner, bound = await serving.start(build_app(config, BurnMetrics()), host, port, "httpserver")
    print(
        f"httpserver {config.name}: listening on http://{url_host(host)}:{bound} "
        f"({config.work_ms:g} ms CPU per request)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def parser() -> commandline.ArgumentParser:
    ap = commandline.ArgumentParser(
        prog="python3 -m jiriaf.workloads.httpserver",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    ap.add_argument("--host", default=default_host(), help="address to bind (default: $POD_IP or 127.0.0.1)")
    ap.add_argument(
        "--port",
        type=commandline.number_type(int, 0, 65535),
        default=int(os.environ.get("PORT", "8080") or 8080),
        help="port (default: $PORT or 8080; 0 picks a free port and prints it)",
    )
    ap.add_argument(
        "--work-ms",
        type=commandline.number_type(float, 0, 60_000),
        default=float(os.environ.get("WORK_MS", "20") or 20),
        help="CPU milliseconds burnt per request (default: $WORK_MS or 20)",
    )
    ap.add_argument(
        "--max-work-ms",
        type=commandline.number_type(float, 0, 60_000),
        default=1000.0,
        help="largest ?ms= a request may ask for (default 1000)",
    )
    ap.add_argument("--name", default=os.environ.get("HOSTNAME", "") or "httpserver", help="name in answers")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    config = ServerConfig(name=args.name, work_ms=args.work_ms, max_work_ms=args.max_work_ms)
    asyncio.run(serve(args.host, int(args.port), config))


if __name__ == "__main__":
    commandline.run(main)
