"""What the dashboard reads from Kubernetes: nodes, unfinished pods and Deployments, in one snapshot.

A snapshot is shared by every dashboard client for ``ttl`` seconds, so many open browsers cost the
apiserver three list calls per ``ttl`` at most. The lists go through the central service's own
apiserver client (``Jcs.kube``). A failure, or a service without Kubernetes, is reported in the
snapshot (``error``), never raised: the rest of the dashboard keeps working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from jiriaf.kube.patching import ApiError, check

NODES = "/api/v1/nodes"
UNFINISHED_PODS = "/api/v1/pods?fieldSelector=status.phase!%3DSucceeded,status.phase!%3DFailed"
DEPLOYMENTS = "/apis/apps/v1/deployments"
NO_KUBERNETES = "the central service has no Kubernetes connection (--kubeconfig)"


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    taken_at: float = 0.0


def _items(doc: dict[str, Any]) -> list[dict[str, Any]]:
    items = doc.get("items")
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class ClusterView:
    """Cached snapshots of the cluster behind ``client`` (None: a service without Kubernetes)."""

    def __init__(
        self,
        client: httpx2.AsyncClient | None,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self._snapshot: ClusterSnapshot | None = None

    async def snapshot(self) -> ClusterSnapshot:
        cached = self._snapshot
        if cached is not None and self.clock() - cached.taken_at < self.ttl:
            return cached
        fresh = await self._read()
        self._snapshot = fresh
        return fresh

    async def _read(self) -> ClusterSnapshot:
        now = self.clock()
        if self.client is None:
            return ClusterSnapshot(error=NO_KUBERNETES, taken_at=now)
        try:
            nodes, pods, deployments = await asyncio.gather(
                self._list(NODES), self._list(UNFINISHED_PODS), self._list(DEPLOYMENTS)
            )
        except ApiError as exc:
            return ClusterSnapshot(error=f"the apiserver refused a list: {exc}", taken_at=now)
        except (httpx2.HTTPError, OSError, ValueError) as exc:
            return ClusterSnapshot(
                error=f"cannot reach the apiserver: {exc or type(exc).__name__}", taken_at=now
            )
        return ClusterSnapshot(
            nodes=nodes, pods=pods, deployments={_key(d): d for d in deployments}, taken_at=now
        )

    async def _list(self, path: str) -> list[dict[str, Any]]:
        assert self.client is not None
        return _items(check(await self.client.get(path)))
