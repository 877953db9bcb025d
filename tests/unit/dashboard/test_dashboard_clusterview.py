"""jiriaf.dashboard.clusterview: one shared snapshot per ``ttl``, and failures reported, not raised.

Reading a real cluster is covered by the browser system test; here the service has no Kubernetes,
or its apiserver address has nothing listening (a real refused connection on 127.0.0.1)."""

from __future__ import annotations

import httpx2
import pytest

from jiriaf.dashboard.clusterview import NO_KUBERNETES, ClusterView
from jiriaf.devcluster.cluster import free_port

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_without_kubernetes_the_snapshot_says_so() -> None:
    snap = await ClusterView(None).snapshot()
    assert snap.error == NO_KUBERNETES
    assert snap.nodes == [] and snap.pods == [] and snap.deployments == {}


async def test_a_snapshot_is_shared_for_ttl_seconds_then_read_again() -> None:
    clock = Clock()
    view = ClusterView(None, ttl=1.0, clock=clock)
    first = await view.snapshot()
    clock.now += 0.5
    assert await view.snapshot() is first
    clock.now += 0.6
    second = await view.snapshot()
    assert second is not first and second.taken_at == clock.now


async def test_an_unreachable_apiserver_is_reported_not_raised() -> None:
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}", timeout=5.0) as client:
        snap = await ClusterView(client).snapshot()
    assert snap.error is not None and snap.error.startswith("cannot reach the apiserver")
    assert snap.nodes == []
