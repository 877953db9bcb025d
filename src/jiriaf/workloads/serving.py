"""Serving HTTP from a workload: start an aiohttp app on an address, expose a Prometheus registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from jiriaf.errors import UserError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """A handler answering with ``registry`` in the Prometheus text format."""

    async def handle(_request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


async def healthz(_request: web.Request) -> web.Response:
    """Liveness/readiness: the process serves HTTP."""
    return web.Response(text="ok\n")


async def start(app: web.Application, host: str, port: int, what: str) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``port`` 0 picks a free one); return the runner and the port.

    A busy port or an address this machine does not have is a :class:`UserError` naming ``what``.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"{what} cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return runner, bound_port(runner, port)


def bound_port(runner: web.AppRunner, fallback: int) -> int:
    """The port a started runner listens on (its first address)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 answer naming what is wrong."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}\n") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object\n")
    return body
