"""Kubernetes Events (core/v1), as the kubelet records them, so ``kubectl describe`` shows them."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import httpx2

from jiriaf.kube.patching import ApiError, create

log = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class EventRecorder:
    """Records Events about objects; failures to record are logged, never raised."""

    def __init__(self, client: httpx2.AsyncClient, component: str, host: str) -> None:
        self.client = client
        self.component = component
        self.host = host

    async def record(
        self, obj: dict[str, Any], kind: str, event_type: str, reason: str, message: str, field_path: str = ""
    ) -> None:
        """Create an Event of ``event_type`` (Normal/Warning) about ``obj`` (a Pod or Node dict)."""
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = _now()
        ref: dict[str, Any] = {
            "kind": kind,
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "apiVersion": "v1",
        }
        if meta.get("namespace"):
            ref["namespace"] = namespace
        if field_path:
            ref["fieldPath"] = field_path
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }
        try:
            await create(self.client, f"/api/v1/namespaces/{namespace}/events", event)
        except (ApiError, httpx2.HTTPError, OSError) as exc:
            log.warning("could not record event %s for %s: %s", reason, meta.get("name"), exc)
