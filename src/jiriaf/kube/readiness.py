"""Ask an apiserver whether it is ready."""

from __future__ import annotations

from pathlib import Path

import httpx2

from jiriaf.errors import UserError
from jiriaf.kube.raw import raw_client


def apiserver_ready(kubeconfig: Path | None) -> str:
    """GET /readyz with the kubeconfig's credentials; return the body ('ok') or raise UserError."""
    with raw_client(kubeconfig) as client:
        try:
            resp = client.get("/readyz")
        except (httpx2.HTTPError, OSError) as exc:
            raise UserError(f"apiserver {client.base_url} unreachable: {exc}") from exc
    if resp.status_code != 200:
        raise UserError(f"apiserver {client.base_url} not ready: HTTP {resp.status_code} {resp.text[:200]}")
    return resp.text.strip()
