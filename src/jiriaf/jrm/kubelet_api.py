"""Wire the kubelet HTTP API to the pod controller: logs from the runtime's files, pods from the
workers, authentication against the apiserver, the serving certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2

from jiriaf.errors import UserError
from jiriaf.jrm.auth import Authenticator
from jiriaf.jrm.exporter import Monitoring
from jiriaf.jrm.pods import PodController
from jiriaf.jrm.server import KubeletServer
from jiriaf.jrm.settings import JRMSettings
from jiriaf.jrm.tls import ensure_serving_cert, kubeconfig_client_ca, server_ssl_context


class ControllerLogs:
    """The LogSource of the kubelet API: names are mapped through the controller's own records."""

    def __init__(self, pods: PodController) -> None:
        self.pods = pods

    def _worker_key(self, namespace: str, pod: str, container: str) -> Any:
        for worker in self.pods.workers.values():
            if worker.namespace == namespace and worker.name == pod and container in worker.containers:
                return worker, worker.key(container)
        return None

    def log_files(self, namespace: str, pod: str, container: str, previous: bool) -> list[Path] | None:
        found = self._worker_key(namespace, pod, container)
        if found is None:
            return None
        paths = self.pods.runtime.log_paths(found[1], previous=previous)
        return [] if paths is None else list(paths)  # []: no such run (400), as the kubelet answers

    def is_running(self, namespace: str, pod: str, container: str) -> bool:
        found = self._worker_key(namespace, pod, container)
        if found is None:
            return False
        facts = self.pods.runtime.inspect(found[1])
        return bool(facts and facts.running)


def _pods(pods: PodController) -> list[dict[str, Any]]:
    out = []
    for worker in pods.workers.values():
        status = worker.reported or worker.pod.get("status") or {}
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": worker.pod.get("metadata", {}),
                "spec": worker.pod.get("spec", {}),
                "status": status,
            }
        )
    return out


async def start_kubelet_api(
    settings: JRMSettings,
    client: httpx2.AsyncClient,
    pods: PodController,
    monitoring: Monitoring | None = None,
) -> KubeletServer:
    """Start the HTTPS kubelet API on ``settings.kubelet_port`` with authentication; with
    ``monitoring``, also ``/metrics``, ``/metrics/resource`` and ``/stats/summary``."""
    if settings.tls_cert_file and settings.tls_private_key_file:
        cert, key = settings.tls_cert_file, settings.tls_private_key_file
    else:
        cert, key = ensure_serving_cert(settings.pod_root / ".tls", settings.node_name, [settings.node_ip])
    client_ca: bytes | Path | None = settings.client_ca_file or kubeconfig_client_ca(settings.kubeconfig)
    server = KubeletServer(
        node_name=settings.node_name,
        log_source=ControllerLogs(pods),
        pods_source=lambda: _pods(pods),
        authenticator=Authenticator(api=client, allow_anonymous=settings.allow_anonymous),
        host=settings.kubelet_bind or settings.node_ip,
        port=settings.kubelet_port,
        ssl_context=server_ssl_context(cert, key, client_ca),
    )
    if monitoring is not None:
        monitoring.add_routes(server)
    try:
        await server.start()
    except OSError as exc:
        raise UserError(
            f"the kubelet API cannot listen on {server.host}:{server.port} ({exc.strerror or exc}); "
            "choose a free KUBELET_PORT (--kubelet-port)"
        ) from exc
    return server
