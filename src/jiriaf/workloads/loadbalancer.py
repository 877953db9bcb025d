"""An HTTP load balancer that follows a Service's EndpointSlices (no kube-proxy needed).

Run: ``python3 -m jiriaf.workloads.loadbalancer --service web --namespace demo --port 8080``

It watches the EndpointSlices of ``--service`` through the apiserver (``--kubeconfig``, else
``$KUBECONFIG``, ``~/.kube/config`` or the in-cluster account) and proxies every request to one of
the ready endpoints, round-robin or to the one with the fewest requests in flight. With
``--source pods`` it computes the endpoints from the Service's selector and pods instead, for pods
on loopback addresses, which the apiserver refuses in EndpointSlices (see :mod:`.endpoints`). Scale-ups and
scale-downs take effect as soon as the EndpointSlice controller publishes them. A request that
cannot reach its backend is retried on another one (``--retries``); with no ready backend the
answer is 503. The balancer's own routes live under ``/-/``: ``/-/backends`` (JSON),
``/-/metrics`` (Prometheus) and ``/-/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jiriaf.workloads import commandline, serving
from jiriaf.workloads.addresses import default_host, url_host
from jiriaf.workloads.balancing import POLICIES, Backend, Balancer, Policy
from jiriaf.workloads.endpoints import SOURCES, EndpointWatcher, Source, default_namespace, open_client

log = logging.getLogger("jiriaf.workloads.loadbalancer")

# headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the ones
# aiohttp recomputes for the body it sends
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Content-Encoding",
    )
)
MAX_BODY = 8 * 1024 * 1024


def forwarded_headers(headers: CIMultiDict[str] | dict[str, str], peer: str | None) -> CIMultiDict[str]:
    """The request headers to send to a backend: without hop-by-hop ones, with X-Forwarded-For."""
    out: CIMultiDict[str] = CIMultiDict()
    connection_named = {
        token.strip().lower() for value in _all(headers, "Connection") for token in value.split(",")
    }
    for name, value in headers.items():
        if name.lower() in HOP_BY_HOP or name.lower() in connection_named:
            continue
        out.add(name, value)
    if peer:
        prior = out.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return out


def _all(headers: CIMultiDict[str] | dict[str, str], name: str) -> list[str]:
    if isinstance(headers, CIMultiDict):
        return list(headers.getall(name, []))
    return [v for k, v in headers.items() if k.lower() == name.lower()]


class BalancerMetrics:
    """The balancer's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jiriaf_lb_requests",
            "Requests proxied, by backend and status code",
            ["backend", "code"],
            registry=self.registry,
        )
        self.failures = Counter(
            "jiriaf_lb_backend_failures",
            "Attempts that could not reach a backend",
            ["backend"],
            registry=self.registry,
        )
        self.backends = Gauge("jiriaf_lb_backends", "Ready backends", registry=self.registry)
        self.changes = Counter(
            "jiriaf_lb_backend_changes", "Changes of the backend set", registry=self.registry
        )
        self.duration = Histogram(
            "jiriaf_lb_request_duration_seconds", "Time to answer a proxied request", registry=self.registry
        )


class LoadBalancer:
    """Proxies requests to the balancer's current backends."""

    def __init__(self, balancer: Balancer, retries: int, timeout: float) -> None:
        self.balancer = balancer
        self.retries = retries
        self.timeout = timeout
        self.metrics = BalancerMetrics()
        self._codes: dict[Backend, set[str]] = {}
        self.session: aiohttp.ClientSession | None = None

    def set_backends(self, backends: list[Backend]) -> None:
        before = set(self.balancer.backends)
        if self.balancer.update(backends):
            self.metrics.changes.inc()
            for gone in before - set(backends):  # drop the series of departed backends
                for code in self._codes.pop(gone, set()):
                    self.metrics.requests.remove(str(gone), code)
        self.metrics.backends.set(len(self.balancer.backends))

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(5.0, self.timeout)),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        started = time.monotonic()
        body = await request.read()
        headers = forwarded_headers(CIMultiDict(request.headers), request.remote)
        tried: list[Backend] = []
        for _attempt in range(self.retries + 1):
            backend = self.balancer.acquire(exclude=tried)
            if backend is None:
                break
            tried.append(backend)
            try:
                async with self.session.request(
                    request.method,
                    backend.url + request.rel_url.raw_path_qs,
                    headers=headers,
                    data=body if body else None,
                    allow_redirects=False,
                ) as upstream:
                    payload = await upstream.read()
                    answer = web.Response(status=upstream.status, body=payload)
                    for name, value in upstream.headers.items():
                        if name.lower() not in HOP_BY_HOP:
                            answer.headers.add(name, value)
                    self.metrics.requests.labels(str(backend), str(upstream.status)).inc()
                    self._codes.setdefault(backend, set()).add(str(upstream.status))
                    self.metrics.duration.observe(time.monotonic() - started)
                    return answer
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                self.metrics.failures.labels(str(backend)).inc()
                log.warning("backend %s failed: %s", backend, type(exc).__name__)
            finally:
                self.balancer.release(backend)
        if not tried:
            return web.Response(status=503, text="no ready backends\n")
        return web.Response(status=502, text=f"no backend answered ({len(tried)} tried)\n")

    async def backends_view(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "policy": self.balancer.policy,
                "backends": [
                    {
                        "address": b.address,
                        "port": b.port,
                        "in_flight": self.balancer.in_flight.get(b, 0),
                        "picked": self.balancer.picked.get(b, 0),
                    }
                    for b in self.balancer.backends
                ],
            }
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/-/healthz", serving.healthz)
        app.router.add_get("/-/backends", self.backends_view)
        app.router.add_get("/-/metrics", serving.metrics_handler(self.metrics.registry))
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        return app


async def serve(
    host: str,
    port: int,
    service: str,
    namespace: str,
    port_name: str | None,
    kubeconfig: str | None,
    policy: Policy,
    retries: int,
    timeout: float,
    source: Source = "endpointslices",
) -> None:
    """Watch the Service's endpoints and proxy until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    commandline.install_stop_signals(stop)
    lb = LoadBalancer(Balancer(policy), retries, timeout)
    client = open_client(kubeconfig)
    watcher = EndpointWatcher(client, namespace, service, port_name, on_change=lb.set_backends, source=source)
    await lb.open()
    runner, bound = await serving.start(lb.app(), host, port, "loadbalancer")
    watcher.start()
    print(
        f"loadbalancer: http://{url_host(host)}:{bound} -> service {namespace}/{service} "
        f"({source}, {policy})",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await watcher.stop()
        await runner.cleanup()
        await lb.close()
        await client.aclose()


def parser() -> commandline.ArgumentParser:
    ap = commandline.ArgumentParser(
        prog="python3 -m jiriaf.workloads.loadbalancer",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    ap.add_argument("--service", required=True, help="Service whose EndpointSlices are followed")
    ap.add_argument("--namespace", default=None, help="namespace (default: $POD_NAMESPACE or in-cluster)")
    ap.add_argument("--port-name", default=None, help="Service port name (default: its only port)")
    ap.add_argument(
        "--source",
        choices=SOURCES,
        default="endpointslices",
        help="where endpoints come from: the EndpointSlices, or the Service's pods (loopback pod IPs)",
    )
    ap.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    ap.add_argument("--host", default=default_host(), help="address to bind (default: $POD_IP or 127.0.0.1)")
    ap.add_argument("--port", type=commandline.number_type(int, 0, 65535), default=8080, help="port")
    ap.add_argument("--policy", choices=POLICIES, default="round-robin", help="how a backend is chosen")
    ap.add_argument(
        "--retries", type=commandline.number_type(int, 0, 10), default=2, help="other backends to try"
    )
    ap.add_argument(
        "--timeout",
        type=commandline.number_type(float, 0, 3600, low_open=True),
        default=30.0,
        help="seconds a proxied request may take",
    )
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    commandline.configure_logging(args.log_level)
    asyncio.run(
        serve(
            args.host,
            int(args.port),
            args.service,
            args.namespace or default_namespace(),
            args.port_name,
            args.kubeconfig,
            args.policy,
            int(args.retries),
            float(args.timeout),
            args.source,
        )
    )


if __name__ == "__main__":
    commandline.run(main)
