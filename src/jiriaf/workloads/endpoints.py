"""Following a Service's ready endpoints through the apiserver (list + watch, relist on gaps).

Used where no kube-proxy or cluster DNS exists (JRM nodes): the load balancer proxies to the
backends found here and the stream sender finds its receiver here. Two sources:

* ``endpointslices`` (the default): the Service's EndpointSlices, as published by the EndpointSlice
  controller; the normal case for routable pod addresses;
* ``pods``: the Service's selector applied to its namespace's pods, by the controller's own rules
  (:func:`jiriaf.workloads.balancing.backends_from_pods`). The apiserver refuses loopback addresses
  in EndpointSlices, so pods that live on 127.0.0.0/8 (JRMs on one machine, in either address mode)
  have no EndpointSlice endpoints; this source still finds them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx2

from jiriaf.kube.raw import async_raw_client
from jiriaf.kube.watching import Informer, cancel_and_wait
from jiriaf.workloads.balancing import Backend, backends_from_pods, ready_backends

log = logging.getLogger(__name__)

OnChange = Callable[[list[Backend]], None]
Source = Literal["endpointslices", "pods"]
SOURCES: tuple[Source, ...] = ("endpointslices", "pods")
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace() -> str:
    """``$POD_NAMESPACE`` (downward API), else the in-cluster namespace file, else ``default``."""
    explicit = os.environ.get("POD_NAMESPACE", "").strip()
    if explicit:
        return explicit
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def open_client(kubeconfig: str | None) -> httpx2.AsyncClient:
    """An apiserver client from ``kubeconfig`` (or $KUBECONFIG, ~/.kube/config, in-cluster)."""
    return async_raw_client(kubeconfig, timeout=30.0)


class EndpointWatcher:
    """Keeps the ready backends of Service ``namespace/service`` and reports every change."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        namespace: str,
        service: str,
        port_name: str | None = None,
        on_change: OnChange | None = None,
        source: Source = "endpointslices",
        resync_period: float = 300.0,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown endpoint source {source!r}")
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self.on_change = on_change
        self.source: Source = source
        self.backends: list[Backend] = []
        self.changes = 0
        ns_path = f"/api/v1/namespaces/{namespace}"
        if source == "endpointslices":
            self.informers = [
                Informer(
                    client,
                    f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                    self._handle,
                    label_selector=f"kubernetes.io/service-name={service}",
                    resync_period=resync_period,
                )
            ]
        else:
            self.informers = [
                Informer(
                    client,
                    f"{ns_path}/services",
                    self._handle,
                    field_selector=f"metadata.name={service}",
                    resync_period=resync_period,
                ),
                Informer(client, f"{ns_path}/pods", self._handle, resync_period=resync_period),
            ]
        self._tasks: list[asyncio.Task[None]] = []

    def synced(self) -> bool:
        """Every collection has been listed once."""
        return all(i.synced.is_set() for i in self.informers)

    def compute(self) -> list[Backend]:
        """The backends the informers' caches describe now."""
        if self.source == "endpointslices":
            return ready_backends(self.informers[0].cache.values(), self.port_name)
        services, pods = self.informers
        service = services.cache.get(f"{self.namespace}/{self.service}")
        return backends_from_pods(service, pods.cache.values(), self.port_name)

    async def _handle(self, _kind: str, _obj: dict[str, Any]) -> None:
        fresh = self.compute()
        if fresh != self.backends:
            self.backends = fresh
            self.changes += 1
            log.info(
                "service %s/%s (%s): %d ready backend(s): %s",
                self.namespace,
                self.service,
                self.source,
                len(fresh),
                ", ".join(map(str, fresh)) or "-",
            )
            if self.on_change is not None:
                self.on_change(list(fresh))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(i.run(), name=f"endpoints-{self.service}-{n}")
            for n, i in enumerate(self.informers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
