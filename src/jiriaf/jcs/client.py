"""A small client of the central service's REST API, for the CLI (``jiriaf request``, ``site``)."""

from __future__ import annotations

import os
from typing import Any

import httpx2

from jiriaf.errors import UserError

URL_ENV = "JIRIAF_JCS_URL"
TOKEN_ENV = "JIRIAF_JCS_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8765"


class JcsClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV)
        self.timeout = timeout

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON answer of ``method path``; a :class:`UserError` with the server's reason otherwise."""
        if not self.token:
            raise UserError(f"no API token: pass --token or set {TOKEN_ENV} (see 'jiriaf jcs token create')")
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with httpx2.Client(base_url=self.url, timeout=self.timeout, trust_env=False) as client:
                resp = client.request(method, path, headers=headers, **kw)
        except httpx2.HTTPError as exc:
            raise UserError(f"cannot reach the central service at {self.url}: {exc}") from None
        if resp.status_code >= 300:
            raise UserError(f"{_reason(resp)} (HTTP {resp.status_code})", exit_code=1)
        return resp.json() if resp.content else None


def _reason(resp: httpx2.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or "no reason given"
    if isinstance(body, dict):
        if body.get("message"):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail:
            first = detail[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
            return f"{loc}: {first.get('msg')}"
    return str(body)[:300]
