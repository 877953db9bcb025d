"""The stream sender: emits events to the receiver over TCP at a rate that can change at runtime.

Run: ``python3 -m jiriaf.workloads.stream.sender --target 127.0.0.1:7000 --rate 150``

Arrivals are Poisson by default (``--regular`` for evenly spaced events) at ``--rate`` Hz, or follow
``--schedule "0:100,60:166,120:100"`` (seconds from the start: Hz) or ``--schedule paper`` (the JIRIAF
paper's section 6 scenario; see :mod:`.arrivals`). The receiver is ``--target HOST:PORT``, or is
found through the apiserver with ``--service NAME`` (the first ready endpoint of that Service, for
JRM nodes where no cluster DNS or kube-proxy exists; ``--source pods`` for loopback pod addresses).
Events emitted while no connection is up are dropped and counted; the sender reconnects with
backoff. The schedule's clock starts at the first connection, so no event is lost to a receiver
that starts later than the sender. ``--count`` and ``--duration`` bound a run.

HTTP (``--http-port``): ``GET /metrics`` (``jiriaf_stream_sent_total``,
``jiriaf_stream_sender_dropped_total``, ``jiriaf_stream_sender_rate_hz``, ...), ``GET /status``,
``POST /control`` with ``{"rate": 166}`` or ``{"schedule": "0:100,30:166"}`` (times from now), and
``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from jiriaf.errors import UserError
from jiriaf.workloads import commandline, serving
from jiriaf.workloads.addresses import default_host, parse_host_port, url_host
from jiriaf.workloads.balancing import Backend
from jiriaf.workloads.endpoints import SOURCES, EndpointWatcher, Source, default_namespace, open_client
from jiriaf.workloads.stream.arrivals import ArrivalProcess, RateSchedule, parse_schedule
from jiriaf.workloads.stream.protocol import MAX_PAYLOAD, encode_event

log = logging.getLogger("jiriaf.workloads.stream.sender")

FLUSH_EVERY = 64


class SenderMetrics:
    """The sender's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sent = Counter("jiriaf_stream_sent", "Events written to the receiver", registry=r)
        self.dropped = Counter(
            "jiriaf_stream_sender_dropped", "Events emitted while no receiver was connected", registry=r
        )
        self.rate = Gauge("jiriaf_stream_sender_rate_hz", "The rate the schedule asks for now", registry=r)
        self.connected = Gauge(
            "jiriaf_stream_sender_connected", "1 while connected to a receiver", registry=r
        )
        self.connects = Counter("jiriaf_stream_sender_connects", "Connections made to a receiver", registry=r)


class Sender:
    """Emits events on the arrival process's schedule to whichever receiver it is connected to."""

    def __init__(
        self,
        schedule: RateSchedule,
        poisson: bool,
        payload_bytes: int,
        count: int | None,
        duration: float | None,
        seed: int | None = None,
    ) -> None:
        self.arrivals = ArrivalProcess(schedule, poisson, random.Random(seed))
        self.payload_bytes = payload_bytes
        self.count = count
        self.duration = duration
        self.metrics = SenderMetrics()
        self.emitted = 0
        self.sent = 0
        self.dropped = 0
        self.t0 = time.monotonic()
        self.target: tuple[str, int] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.changed = asyncio.Event()
        self.target_changed = asyncio.Event()
        self.finished = asyncio.Event()
        self.connected_once = asyncio.Event()

    def now(self) -> float:
        """Seconds since the sender started (the schedule's clock)."""
        return time.monotonic() - self.t0

    def set_schedule(self, schedule: RateSchedule) -> None:
        """Follow ``schedule`` (in the sender's clock) from now on."""
        self.arrivals.schedule = schedule
        self.metrics.rate.set(schedule.rate_at(self.now()))
        self.changed.set()

    def set_target(self, target: tuple[str, int] | None) -> None:
        if target != self.target:
            self.target = target
            self.target_changed.set()

    # ------------------------------------------------------------------ emitting
    async def emit_loop(self) -> None:
        """Emit events until the count or duration is reached (forever without them).

        The schedule's clock starts when the first connection to a receiver is made (a run with a
        duration ends after that long if no receiver is ever reached).
        """
        try:
            await asyncio.wait_for(self.connected_once.wait(), self.duration)
        except TimeoutError:
            log.warning("no receiver reached in %g s", self.duration)
            self.finished.set()
            return
        self.t0 = time.monotonic()
        last = 0.0
        unflushed = 0
        while not self._done():
            self.changed.clear()
            due = self.arrivals.next_after(last)
            if self.duration is not None and due > self.duration:
                due = self.duration
            delay = due - self.now()
            if delay > 0:
                if unflushed:
                    await self._flush()
                    unflushed = 0
                try:
                    await asyncio.wait_for(self.changed.wait(), delay)
                    last = self.now()  # the schedule changed: draw again from now (memoryless)
                    continue
                except TimeoutError:
                    pass
            if self.duration is not None and due >= self.duration:
                break
            last = due
            self.metrics.rate.set(self.arrivals.schedule.rate_at(due))
            self._emit()
            unflushed += 1
            if unflushed >= FLUSH_EVERY:
                await self._flush()
                unflushed = 0
        await self._flush()
        self.finished.set()

    def _done(self) -> bool:
        if self.count is not None and self.emitted >= self.count:
            return True
        return self.duration is not None and self.now() >= self.duration

    def _emit(self) -> None:
        seq = self.emitted
        self.emitted += 1
        writer = self.writer
        if writer is None or writer.is_closing():
            self.dropped += 1
            self.metrics.dropped.inc()
            return
        writer.write(encode_event(seq, time.time(), self.payload_bytes))
        self.sent += 1
        self.metrics.sent.inc()

    async def _flush(self) -> None:
        writer = self.writer
        if writer is None:
            return
        try:
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.warning("connection to the receiver lost: %s", exc)
            self._disconnect()

    def _disconnect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None
        self.metrics.connected.set(0)

    # ------------------------------------------------------------------ connecting
    async def connect_loop(self) -> None:
        """Keep a connection to the current target, reconnecting with backoff."""
        backoff = 0.2
        while not self.finished.is_set():
            target = self.target
            if target is None:
                self.target_changed.clear()
                await self._wait_any(self.target_changed, 1.0)
                continue
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), 5.0)
            except (TimeoutError, OSError) as exc:
                log.info("receiver %s:%d not reachable (%s); retrying in %.1fs", *target, exc, backoff)
                self.target_changed.clear()
                await self._wait_any(self.target_changed, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            self.writer = writer
            self.metrics.connected.set(1)
            self.metrics.connects.inc()
            self.connected_once.set()
            log.info("connected to receiver %s:%d", *target)
            self.target_changed.clear()
            closed = asyncio.ensure_future(reader.read())  # the receiver never writes: EOF means closed
            changed = asyncio.ensure_future(self.target_changed.wait())
            finished = asyncio.ensure_future(self.finished.wait())
            await asyncio.wait({closed, changed, finished}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (closed, changed, finished):
                fut.cancel()
            if self.finished.is_set():
                break
            log.info("receiver %s:%d %s", *target, "changed" if changed.done() else "closed the connection")
            self._disconnect()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _wait_any(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def close(self) -> None:
        writer = self.writer
        self._disconnect()
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    # ------------------------------------------------------------------ HTTP side
    def status(self) -> dict[str, Any]:
        now = self.now()
        return {
            "rate_hz": self.arrivals.schedule.rate_at(now),
            "schedule": [list(step) for step in self.arrivals.schedule.steps],
            "poisson": self.arrivals.poisson,
            "elapsed_s": now,
            "emitted": self.emitted,
            "sent": self.sent,
            "dropped": self.dropped,
            "connected": self.writer is not None,
            "target": f"{url_host(self.target[0])}:{self.target[1]}" if self.target else None,
            "finished": self.finished.is_set(),
        }

    async def status_view(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def control(self, request: web.Request) -> web.Response:
        body = await serving.read_json_object(request)
        unknown = set(body) - {"rate", "schedule"}
        if unknown or len(body) != 1:
            raise web.HTTPBadRequest(text='send exactly one of {"rate": HZ} or {"schedule": "T:HZ,..."}\n')
        now = self.now()
        try:
            if "rate" in body:
                rate = body["rate"]
                if not isinstance(rate, (int, float)) or isinstance(rate, bool):
                    raise UserError("rate must be a number")
                schedule = RateSchedule.constant(float(rate), now)
            else:
                text = body["schedule"]
                if not isinstance(text, str):
                    raise UserError("schedule must be a string")
                schedule = parse_schedule(text).shifted(now)
        except UserError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc
        self.set_schedule(schedule)
        log.info("schedule changed by the control endpoint: %s", body)
        return web.json_response(self.status())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", serving.healthz)
        app.router.add_get("/metrics", serving.metrics_handler(self.metrics.registry))
        app.router.add_get("/status", self.status_view)
        app.router.add_post("/control", self.control)
        return app


async def run(
    sender: Sender,
    target: tuple[str, int] | None,
    service: str | None,
    namespace: str,
    port_name: str | None,
    kubeconfig: str | None,
    http_host: str,
    http_port: int | None,
    source: Source = "endpointslices",
) -> None:
    """Send until done or SIGTERM/SIGINT."""
    stop = asyncio.Event()
    commandline.install_stop_signals(stop)
    watcher: EndpointWatcher | None = None
    client = None
    if service is not None:
        client = open_client(kubeconfig)

        def follow(backends: list[Backend]) -> None:
            sender.set_target((backends[0].address, backends[0].port) if backends else None)

        watcher = EndpointWatcher(client, namespace, service, port_name, on_change=follow, source=source)
        watcher.start()
    else:
        sender.set_target(target)
    runner = None
    if http_port is not None:
        runner, bound = await serving.start(sender.app(), http_host, http_port, "sender HTTP")
        print(f"sender: HTTP on {url_host(http_host)}:{bound}", flush=True)
    sender.set_schedule(sender.arrivals.schedule)
    where = (
        f"service {namespace}/{service}"
        if service
        else f"{url_host(target[0])}:{target[1]}"
        if target
        else "-"
    )
    print(f"sender: sending to {where}", flush=True)
    tasks = [asyncio.create_task(sender.emit_loop()), asyncio.create_task(sender.connect_loop())]
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({tasks[0], stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*tasks, stopped):
            task.cancel()
        await asyncio.gather(*tasks, stopped, return_exceptions=True)
        sender.finished.set()
        await sender.close()
        if watcher is not None:
            await watcher.stop()
        if client is not None:
            await client.aclose()
        if runner is not None:
            await runner.cleanup()
    print(f"sender: emitted {sender.emitted}, sent {sender.sent}, dropped {sender.dropped}", flush=True)


def parser() -> commandline.ArgumentParser:
    ap = commandline.ArgumentParser(
        prog="python3 -m jiriaf.workloads.stream.sender",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="receiver HOST:PORT")
    where.add_argument("--service", help="find the receiver through this Service's EndpointSlices")
    ap.add_argument("--namespace", default=None, help="namespace of --service (default: $POD_NAMESPACE)")
    ap.add_argument("--port-name", default=None, help="Service port name (default: its only port)")
    ap.add_argument(
        "--source",
        choices=SOURCES,
        default="endpointslices",
        help="with --service: EndpointSlices, or the Service's pods (for loopback pod addresses)",
    )
    ap.add_argument("--kubeconfig", default=None, help="kubeconfig for --service (default: $KUBECONFIG)")
    rate = ap.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate", type=commandline.number_type(float, 0, 100_000), default=None, help="events per second"
    )
    rate.add_argument(
        "--schedule", default=None, help='"T1:HZ1,T2:HZ2,..." (seconds from start), or "paper[:STEP_S]"'
    )
    ap.add_argument(
        "--step-seconds",
        type=commandline.number_type(float, 0, 86400, low_open=True),
        default=30.0,
        help="seconds per step of --schedule paper (default 30)",
    )
    ap.add_argument("--regular", action="store_true", help="evenly spaced events instead of Poisson arrivals")
    ap.add_argument(
        "--payload-bytes",
        type=commandline.number_type(int, 0, MAX_PAYLOAD),
        default=0,
        help="padding per event",
    )
    ap.add_argument(
        "--count", type=commandline.number_type(int, 1, 10**9), default=None, help="events to emit"
    )
    ap.add_argument(
        "--duration",
        type=commandline.number_type(float, 0, 10**7, low_open=True),
        default=None,
        help="seconds to run",
    )
    ap.add_argument("--seed", type=int, default=None, help="random seed of the arrival process")
    ap.add_argument("--http-host", default=default_host(), help="address of the HTTP port (default: $POD_IP)")
    ap.add_argument(
        "--http-port",
        type=commandline.number_type(int, 0, 65535),
        default=None,
        help="metrics/control port (default: none)",
    )
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    commandline.configure_logging(args.log_level)
    if args.schedule is not None:
        schedule = parse_schedule(args.schedule, args.step_seconds)
    else:
        schedule = RateSchedule.constant(args.rate if args.rate is not None else 100.0)
    target = parse_host_port(args.target) if args.target else None
    sender = Sender(
        schedule,
        poisson=not args.regular,
        payload_bytes=int(args.payload_bytes),
        count=int(args.count) if args.count is not None else None,
        duration=args.duration,
        seed=args.seed,
    )
    asyncio.run(
        run(
            sender,
            target,
            args.service,
            args.namespace or default_namespace(),
            args.port_name,
            args.kubeconfig,
            args.http_host,
            int(args.http_port) if args.http_port is not None else None,
            args.source,
        )
    )


if __name__ == "__main__":
    commandline.run(main)
