"""The stream receiver: events arrive over TCP into a FIFO served by N worker threads.

Run: ``python3 -m jiriaf.workloads.stream.receiver --port 7000 --http-port 8080``

Events (newline-delimited JSON, see :mod:`.protocol`) from any number of senders are queued in
arrival order; ``THREADS`` worker threads (env var, or ``--threads``) take them one at a time and
spend the per-event cost of :mod:`.service` on each (default: the paper's receiver, 500/3 Hz with 16
threads and 2000/9 Hz with 32, exponential service times: an M/M/c queue). The HTTP port serves:

* ``GET /metrics`` - Prometheus: ``jiriaf_stream_queue_length``, ``jiriaf_stream_arrivals_total``,
  ``jiriaf_stream_processed_total``, ``jiriaf_stream_event_latency_seconds`` (from the sender's
  timestamp to the end of processing), ``jiriaf_stream_threads``, the measured arrival and service
  rates and the model capacity;
* ``GET /status`` - the same as JSON;
* ``POST /control`` - ``{"threads": 32}`` changes the worker count at once (no restart), and
  ``{"paused": true}`` stops taking events (they wait in the FIFO);
* ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jiriaf.errors import UserError
from jiriaf.workloads import commandline, serving
from jiriaf.workloads.addresses import default_host, url_host
from jiriaf.workloads.stream.protocol import MAX_LINE, Event, ProtocolError, decode_event
from jiriaf.workloads.stream.rates import RateMeter
from jiriaf.workloads.stream.service import MAX_THREADS, PAPER_COST, ServiceCost, WorkerPool

log = logging.getLogger("jiriaf.workloads.stream.receiver")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Queued:
    """An event in the FIFO and when it was queued (monotonic clock)."""

    event: Event
    queued: float


class ReceiverMetrics:
    """The receiver's Prometheus metrics, in their own registry."""

    def __init__(self, fifo: queue.Queue[Queued], pool: WorkerPool[Queued], window: float) -> None:
        r = self.registry = CollectorRegistry()
        self.arrival_rate = RateMeter(window)
        self.service_rate = RateMeter(window)
        queue_length = Gauge("jiriaf_stream_queue_length", "Events waiting in the FIFO", registry=r)
        queue_length.set_function(fifo.qsize)
        threads = Gauge("jiriaf_stream_threads", "Worker threads asked for", registry=r)
        threads.set_function(lambda: pool.threads)
        busy = Gauge("jiriaf_stream_busy_threads", "Worker threads serving an event", registry=r)
        busy.set_function(lambda: pool.busy)
        Gauge(
            "jiriaf_stream_arrival_rate_hz", f"Arrivals per second over the last {window:g} s", registry=r
        ).set_function(self.arrival_rate.rate)
        Gauge(
            "jiriaf_stream_service_rate_hz", f"Completions per second over the last {window:g} s", registry=r
        ).set_function(self.service_rate.rate)
        Gauge(
            "jiriaf_stream_service_capacity_hz", "Completions per second the threads can reach", registry=r
        ).set_function(lambda: pool.cost.capacity(pool.threads))
        self.arrivals = Counter("jiriaf_stream_arrivals", "Events received", registry=r)
        self.processed = Counter("jiriaf_stream_processed", "Events processed", registry=r)
        self.dropped = Counter(
            "jiriaf_stream_dropped", "Events dropped because the FIFO was full", registry=r
        )
        self.bad = Counter("jiriaf_stream_bad_lines", "Lines that were not events", registry=r)
        self.connections = Gauge("jiriaf_stream_connections", "Connected senders", registry=r)
        self.latency = Histogram(
            "jiriaf_stream_event_latency_seconds",
            "From the sender's timestamp to the end of processing",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.wait = Histogram(
            "jiriaf_stream_queue_wait_seconds",
            "Time an event waited in the FIFO for a free worker",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.service = Histogram(
            "jiriaf_stream_service_seconds",
            "Time a worker spent on an event",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )


class Receiver:
    """The FIFO, its worker pool and the counters, shared by the TCP and HTTP sides."""

    def __init__(
        self, cost: ServiceCost, threads: int, max_queue: int, window: float = 10.0, seed: int | None = None
    ) -> None:
        self.fifo: queue.Queue[Queued] = queue.Queue(maxsize=max_queue)
        self.pool: WorkerPool[Queued] = WorkerPool(self.fifo, cost, threads, on_done=self._done, seed=seed)
        self.metrics = ReceiverMetrics(self.fifo, self.pool, window)
        self.arrivals = 0
        self.dropped = 0
        self.bad_lines = 0
        self.started = time.time()

    def _done(self, item: Queued, ready: float, started: float, finished: float) -> None:
        m = self.metrics
        m.processed.inc()
        m.service_rate.add(1, finished)
        # the wait for a free worker (the queue of M/M/c); the thread hand-off after it is not queueing
        m.wait.observe(max(0.0, ready - item.queued))
        m.service.observe(finished - started)
        m.latency.observe(max(0.0, time.time() - item.event.sent))

    def accept(self, event: Event) -> bool:
        """Queue one event; False (and counted as dropped) when the FIFO is full."""
        now = time.monotonic()
        self.arrivals += 1
        self.metrics.arrivals.inc()
        self.metrics.arrival_rate.add(1, now)
        try:
            self.fifo.put_nowait(Queued(event, now))
        except queue.Full:
            self.dropped += 1
            self.metrics.dropped.inc()
            return False
        return True

    def status(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "threads": pool.threads,
            "alive_threads": pool.alive,
            "busy_threads": pool.busy,
            "paused": pool.paused,
            "queue_length": self.fifo.qsize(),
            "arrivals": self.arrivals,
            "processed": pool.processed,
            "dropped": self.dropped,
            "bad_lines": self.bad_lines,
            "arrival_rate_hz": self.metrics.arrival_rate.rate(),
            "service_rate_hz": self.metrics.service_rate.rate(),
            "capacity_hz": pool.cost.capacity(pool.threads),
            "cost": {
                "own_s": pool.cost.own,
                "contention_s": pool.cost.contention,
                "service_times": "exponential" if pool.cost.random else "fixed",
            },
            "service_seconds": pool.service_seconds,
        }

    # ------------------------------------------------------------------ TCP side
    async def handle_sender(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.metrics.connections.inc()
        log.info("sender connected from %s", peer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break  # the sender closed (a partial last line is dropped)
                except asyncio.LimitOverrunError:
                    log.warning("sender %s sent a line longer than %d bytes; closing", peer, MAX_LINE)
                    self.bad_lines += 1
                    self.metrics.bad.inc()
                    break
                try:
                    event = decode_event(line)
                except ProtocolError as exc:
                    self.bad_lines += 1
                    self.metrics.bad.inc()
                    if self.bad_lines <= 10:
                        log.warning("bad line from %s: %s", peer, exc)
                    continue
                self.accept(event)
        except (ConnectionError, OSError) as exc:
            log.info("sender %s: %s", peer, exc)
        finally:
            self.metrics.connections.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.info("sender %s disconnected", peer)

    # ------------------------------------------------------------------ HTTP side
    async def status_view(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def control(self, request: web.Request) -> web.Response:
        body = await serving.read_json_object(request)
        unknown = set(body) - {"threads", "paused"}
        if unknown:
            raise web.HTTPBadRequest(text=f"unknown field(s): {', '.join(sorted(unknown))}\n")
        if "threads" in body:
            threads = body["threads"]
            if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= MAX_THREADS:
                raise web.HTTPBadRequest(text=f"threads must be an integer between 0 and {MAX_THREADS}\n")
            before = self.pool.threads
            self.pool.set_threads(threads)
            log.info("threads %d -> %d (control endpoint)", before, threads)
        if "paused" in body:
            paused = body["paused"]
            if not isinstance(paused, bool):
                raise web.HTTPBadRequest(text="paused must be true or false\n")
            if paused:
                self.pool.pause()
            else:
                self.pool.resume()
            log.info("paused: %s (control endpoint)", paused)
        return web.json_response(self.status())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", serving.healthz)
        app.router.add_get("/metrics", serving.metrics_handler(self.metrics.registry))
        app.router.add_get("/status", self.status_view)
        app.router.add_post("/control", self.control)
        return app


async def serve(receiver: Receiver, host: str, port: int, http_host: str, http_port: int) -> None:
    """Receive and serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    commandline.install_stop_signals(stop)
    try:
        server = await asyncio.start_server(
            receiver.handle_sender, host, port, limit=MAX_LINE + 1, reuse_address=True
        )
    except OSError as exc:
        raise UserError(f"receiver cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    runner, bound_http = await serving.start(receiver.app(), http_host, http_port, "receiver HTTP")
    bound = int(server.sockets[0].getsockname()[1]) if server.sockets else port
    receiver.pool.start()
    cost, threads = receiver.pool.cost, receiver.pool.threads
    print(
        f"receiver: events on {url_host(host)}:{bound}, HTTP on {url_host(http_host)}:{bound_http}, "
        f"{threads} threads, {'exponential' if cost.random else 'fixed'} service times with mean "
        f"{cost.own * 1000:g} ms + {cost.contention * 1000:g} ms per thread "
        f"(capacity {cost.capacity(threads):.1f} Hz)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await runner.cleanup()
        await asyncio.to_thread(receiver.pool.stop, 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)


def _env_threads() -> int:
    raw = os.environ.get("THREADS", "").strip()
    if not raw:
        return 16
    if not raw.isdigit() or not 0 <= int(raw) <= MAX_THREADS:
        raise UserError(f"THREADS={raw!r} is not an integer between 0 and {MAX_THREADS}")
    return int(raw)


def parser() -> commandline.ArgumentParser:
    ap = commandline.ArgumentParser(
        prog="python3 -m jiriaf.workloads.stream.receiver",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    ap.add_argument(
        "--host", default=default_host(), help="address for events (default: $POD_IP or 127.0.0.1)"
    )
    ap.add_argument("--port", type=commandline.number_type(int, 0, 65535), default=7000, help="event port")
    ap.add_argument("--http-host", default=None, help="address of the HTTP port (default: --host)")
    ap.add_argument(
        "--http-port", type=commandline.number_type(int, 0, 65535), default=8080, help="metrics/control port"
    )
    ap.add_argument(
        "--threads",
        type=commandline.number_type(int, 0, MAX_THREADS),
        default=None,
        help="worker threads (default: $THREADS or 16)",
    )
    ap.add_argument(
        "--own-ms",
        type=commandline.number_type(float, 0, 60_000),
        default=PAPER_COST.own * 1000,
        help=f"per-event ms of a worker's own work (default {PAPER_COST.own * 1000:g})",
    )
    ap.add_argument(
        "--contention-ms",
        type=commandline.number_type(float, 0, 60_000),
        default=PAPER_COST.contention * 1000,
        help=f"per-event ms added for each worker thread (default {PAPER_COST.contention * 1000:g})",
    )
    ap.add_argument(
        "--fixed-service-times",
        action="store_true",
        help="every event takes exactly the mean (default: exponential service times, an M/M/c queue)",
    )
    ap.add_argument(
        "--seed", type=int, default=None, help="seed for the service times (default: a random one)"
    )
    ap.add_argument(
        "--max-queue",
        type=commandline.number_type(int, 1, 10_000_000),
        default=1_000_000,
        help="FIFO capacity; further events are dropped and counted (default 1000000)",
    )
    ap.add_argument(
        "--rate-window",
        type=commandline.number_type(float, 0, 3600, low_open=True),
        default=10.0,
        help="seconds over which the arrival and service rates are measured (default 10)",
    )
    ap.add_argument("--paused", action="store_true", help="start with the workers paused")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    commandline.configure_logging(args.log_level)
    threads = int(args.threads) if args.threads is not None else _env_threads()
    cost = ServiceCost(
        own=args.own_ms / 1000.0, contention=args.contention_ms / 1000.0, random=not args.fixed_service_times
    )
    receiver = Receiver(cost, threads, int(args.max_queue), float(args.rate_window), seed=args.seed)
    if args.paused:
        receiver.pool.pause()
    asyncio.run(serve(receiver, args.host, int(args.port), args.http_host or args.host, int(args.http_port)))


if __name__ == "__main__":
    commandline.run(main)
