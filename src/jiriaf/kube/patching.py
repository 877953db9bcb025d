"""Writes to the apiserver through the raw client: patches, creates and deletes with clear errors."""

from __future__ import annotations

import json
from typing import Any

import httpx2

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the apiserver, with its status code and message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason


def check(resp: httpx2.Response) -> dict[str, Any]:
    """The JSON body of a successful response; raise ApiError otherwise."""
    if resp.status_code >= 300:
        try:
            body = resp.json()
            raise ApiError(resp.status_code, body.get("message", resp.text), body.get("reason", ""))
        except ValueError:
            raise ApiError(resp.status_code, resp.text[:300]) from None
    return resp.json() if resp.content else {}


async def get(client: httpx2.AsyncClient, path: str) -> dict[str, Any] | None:
    """GET an object; None when it does not exist."""
    resp = await client.get(path)
    if resp.status_code == 404:
        return None
    return check(resp)


async def create(client: httpx2.AsyncClient, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    """POST ``obj`` to the collection at ``path``."""
    return check(await client.post(path, json=obj))


async def patch(
    client: httpx2.AsyncClient, path: str, body: dict[str, Any] | list[Any], content_type: str = MERGE
) -> dict[str, Any]:
    """PATCH ``path`` with ``body`` of the given patch content type."""
    resp = await client.patch(path, content=json.dumps(body).encode(), headers={"Content-Type": content_type})
    return check(resp)


async def delete(client: httpx2.AsyncClient, path: str, body: dict[str, Any] | None = None) -> bool:
    """DELETE ``path`` (with DeleteOptions ``body``); False when it was already gone."""
    resp = await client.request(
        "DELETE", path, content=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"}
    )
    if resp.status_code == 404:
        return False
    check(resp)
    return True


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}" + (f"/{sub}" if sub else "")
