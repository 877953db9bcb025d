"""The informer relists on 410 Gone and on broken streams, and reports deletions it missed.

The apiserver cannot be made to expire a watch or cut a stream on demand, so this test injects
those faults with a tiny HTTP server on 127.0.0.1 that speaks the list/watch protocol (a fake used
only for fault injection; the informer's normal path is exercised against the real apiserver by
the JRM integration tests).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from aiohttp import web

from jiriaf.kube.watching import Informer

pytestmark = pytest.mark.unit


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


class FaultyApi:
    """Serves /pods: lists from ``self.items``; each watch plays the next scripted behaviour."""

    def __init__(self) -> None:
        self.items = [pod("a", "1"), pod("b", "1")]
        self.list_rv = "10"
        self.watches: list[str] = ["gone", "events-then-break", "idle"]
        self.lists = 0
        self.watch_params: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "1":
            self.lists += 1
            return web.json_response({"metadata": {"resourceVersion": self.list_rv}, "items": self.items})
        self.watch_params.append(dict(request.query))
        behaviour = self.watches.pop(0) if self.watches else "idle"
        resp = web.StreamResponse()
        await resp.prepare(request)
        if behaviour == "gone":
            # the watch's version was compacted away: an ERROR event with code 410
            await resp.write(
                json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old"}}).encode() + b"\n"
            )
            return resp
        if behaviour == "events-then-break":
            await resp.write(json.dumps({"type": "MODIFIED", "object": pod("a", "11")}).encode() + b"\n")
            await resp.write(json.dumps({"type": "BOOKMARK", "object": pod("", "12")}).encode() + b"\n")
            # ... and while the stream is broken, b is deleted and c created
            self.items = [pod("a", "11"), pod("c", "13")]
            self.list_rv = "13"
            request.transport.close() if request.transport else None
            return resp
        await asyncio.sleep(5)
        return resp


async def test_relist_on_410_and_broken_stream_reports_missed_deletions() -> None:
    api = FaultyApi()
    app = web.Application()
    app.router.add_get("/pods", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    events: list[tuple[str, str, str]] = []

    async def handler(kind: str, obj: dict[str, Any]) -> None:
        events.append((kind, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    client = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    informer = Informer(client, "/pods", handler, field_selector="spec.nodeName=n1")
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(200):
            if ("ADDED", "c", "13") in events:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        await runner.cleanup()
    # first list: both pods added
    assert events[:2] == [("ADDED", "a", "1"), ("ADDED", "b", "1")]
    # the 410 made it relist (no change); the watch then delivered a MODIFIED; the broken stream made it
    # relist again, which reported the deletion of b and the creation of c that happened meanwhile
    assert ("MODIFIED", "a", "11") in events
    assert ("DELETED", "b", "1") in events
    assert ("ADDED", "c", "13") in events
    assert api.lists >= 3 and informer.stats.relists >= 2
    assert set(informer.cache) == {"ns/a", "ns/c"}
    # every watch asked for bookmarks and carried the selector and the version it had reached
    assert all(
        p["allowWatchBookmarks"] == "true" and p["fieldSelector"] == "spec.nodeName=n1"
        for p in api.watch_params
    )
    assert api.watch_params[0]["resourceVersion"] == "10"
