"""List + watch with relist: a small informer over the raw API that never silently drops an object.

The informer lists a collection, remembers its ``resourceVersion`` and watches from there with
bookmarks. When the watch ends it resumes from the last version seen; on ``410 Gone`` (the version
is too old), a broken stream or a periodic resync it lists again and diffs against its cache, so
deletions that happened while it was not watching are reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410 or an ERROR event with code 410)."""


@dataclass
class InformerStats:
    """Counters the exporter reports."""

    lists: int = 0
    relists: int = 0
    watch_restarts: int = 0
    errors: int = 0


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Informer:
    """Keeps a cache of a collection and calls ``handler(type, obj)`` for ADDED/MODIFIED/DELETED."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        path: str,
        handler: Handler,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resync_period: float = 300.0,
        watch_timeout: int = 290,
    ) -> None:
        self.client = client
        self.path = path
        self.handler = handler
        self.params: dict[str, str] = {}
        if field_selector:
            self.params["fieldSelector"] = field_selector
        if label_selector:
            self.params["labelSelector"] = label_selector
        self.resync_period = resync_period
        self.watch_timeout = watch_timeout
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.stats = InformerStats()
        self.synced = asyncio.Event()

    async def _list(self) -> None:
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            params = {**self.params, "limit": "500"}
            if cont:
                params["continue"] = cont
            resp = await self.client.get(self.path, params=params)
            resp.raise_for_status()
            body = resp.json()
            items.extend(body.get("items") or [])
            cont = body.get("metadata", {}).get("continue", "")
            if not cont:
                self.resource_version = body.get("metadata", {}).get("resourceVersion", "")
                break
        self.stats.lists += 1
        fresh = {_key(o): o for o in items}
        for key, old in list(self.cache.items()):
            if key not in fresh:
                del self.cache[key]
                await self._emit("DELETED", old)
        for key, obj in fresh.items():
            old_obj = self.cache.get(key)
            self.cache[key] = obj
            if old_obj is None:
                await self._emit("ADDED", obj)
            elif old_obj.get("metadata", {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                await self._emit("MODIFIED", obj)
        self.synced.set()

    async def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            await self.handler(kind, obj)
        except Exception:  # a handler bug must not stop the informer
            self.stats.errors += 1
            log.exception("handler failed for %s %s", kind, _key(obj))

    async def _watch(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            timeout = max(1, min(self.watch_timeout, int(until - loop.time())))
            params = {
                **self.params,
                "watch": "1",
                "allowWatchBookmarks": "true",
                "resourceVersion": self.resource_version,
                "timeoutSeconds": str(timeout),
            }
            async with self.client.stream(
                "GET", self.path, params=params, timeout=httpx2.Timeout(10, read=timeout + 30)
            ) as resp:
                if resp.status_code == 410:
                    raise Gone()
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    await self._apply(event)
            self.stats.watch_restarts += 1

    async def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error: {obj.get('message')}")
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        key = _key(obj)
        if kind == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        await self._emit(str(kind), obj)

    async def run(self) -> None:
        """List, then watch forever; relist on 410, broken streams and every ``resync_period``."""
        loop = asyncio.get_running_loop()
        backoff = 0.5
        first = True
        while True:
            try:
                await self._list()
                if not first:
                    self.stats.relists += 1
                first = False
                backoff = 0.5
                await self._watch(until=loop.time() + self.resync_period)
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info("watch of %s expired (410): relisting", self.path)
            except (httpx2.HTTPError, OSError, ValueError, RuntimeError) as exc:
                self.stats.errors += 1
                log.warning("watch of %s failed (%s); relisting in %.1fs", self.path, exc, backoff)
                await asyncio.sleep(backoff + random.uniform(0, backoff / 2))
                backoff = min(backoff * 2, 30.0)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait for it to finish, swallowing its cancellation."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
