"""Raw HTTP to the apiserver with a kubeconfig's credentials, for paths lightkube has no model for
(``/readyz``, ``/apis/metrics.k8s.io``, ``.../proxy``)."""

from __future__ import annotations

from pathlib import Path

import httpx2
from lightkube.config import client_adapter

from jiriaf.kube.config import load_single_config


def raw_client(kubeconfig: str | Path | None = None, timeout: float = 10.0) -> httpx2.Client:
    """A synchronous httpx2 client whose base URL, TLS and auth come from the kubeconfig."""
    config = load_single_config(kubeconfig)
    return client_adapter.Client(config, client_adapter.ConnectionParams(timeout=httpx2.Timeout(timeout)))


def async_raw_client(kubeconfig: str | Path | None = None, timeout: float = 10.0) -> httpx2.AsyncClient:
    """The asyncio twin of :func:`raw_client`."""
    config = load_single_config(kubeconfig)
    return client_adapter.AsyncClient(
        config, client_adapter.ConnectionParams(timeout=httpx2.Timeout(timeout))
    )
