"""The JCS REST API over a real HTTP server, on SQLite and PostgreSQL: authentication, ownership,
field-level validation, cancellation, the event trail, sites, and the OpenAPI schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio

import jcs_fixtures
from jcs_fixtures import JcsServer
from jiriaf.errors import UserError
from jiriaf.jcs import auth
from jiriaf.jcs.api import create_app
from jiriaf.jcs.db import Database
from jiriaf.jcs.facilities import SiteConfig
from jiriaf.jcs.service import Jcs
from jiriaf.jcs.settings import JcsSettings
from jiriaf.twin.live import post_jcs_action

pytestmark = pytest.mark.integration

db = jcs_fixtures.db
postgres = jcs_fixtures.postgres

JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "hello"},
    "spec": {
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "x", "command": ["true"]}],
            }
        }
    },
}


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "hello", "nodes": 1, "walltime": "10m", "workflow": {"manifests": [JOB]}}
    body.update(changes)
    return body


class Api:
    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        self.tokens = tokens

    async def call(self, method: str, path: str, who: str | None = None, **kw: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        async with httpx2.AsyncClient(base_url=self.url, timeout=30, trust_env=False) as c:
            return await c.request(method, path, headers=headers, **kw)


@pytest_asyncio.fixture()
async def api(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    async with db.session() as s:
        tokens = {
            "alice": await auth.create_token(s, "alice"),
            "bob": await auth.create_token(s, "bob"),
            "root": await auth.create_token(s, "root", admin=True),
        }
    jcs = Jcs(
        JcsSettings(),
        db=db,
        facilities=[SiteConfig(name="here", kind="local", max_nodes=1)],
        run_loops=False,
    )
    async with JcsServer(create_app(jcs, manage_lifecycle=False)) as server:
        await jcs.start()
        yield Api(server.url, tokens)


async def test_tokens_are_required(api: Api) -> None:
    r = await api.call("GET", "/api/v1/requests")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    api.tokens["mallory"] = "jcs_" + "x" * 43
    r = await api.call("GET", "/api/v1/requests", "mallory")
    assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked token"
    r = await api.call("GET", "/api/v1/whoami", "root")
    assert r.json() == {"user": "root", "admin": True}


async def test_users_see_and_cancel_only_their_own_requests(api: Api) -> None:
    r = await api.call("POST", "/api/v1/requests", "alice", json=spec(walltime="01:30:00", sites=["here"]))
    assert r.status_code == 201, r.text
    alice_req = r.json()
    assert (alice_req["user"], alice_req["state"], alice_req["walltime_s"]) == ("alice", "pending", 5400)
    rid = alice_req["id"]
    r = await api.call("POST", "/api/v1/requests", "bob", json=spec(name="bobs"))
    bob_id = r.json()["id"]

    assert (await api.call("GET", f"/api/v1/requests/{rid}", "bob")).status_code == 403
    assert (await api.call("POST", f"/api/v1/requests/{rid}/cancel", "bob")).status_code == 403
    assert (await api.call("GET", f"/api/v1/requests/{rid}/events", "bob")).status_code == 403
    assert (await api.call("GET", f"/api/v1/requests/{rid}/status", "bob")).status_code == 403
    assert (
        await api.call("POST", f"/api/v1/workflows/{rid}/actions", "bob", json={"action": "stop"})
    ).status_code == 403
    assert (await api.call("GET", "/api/v1/requests/99999", "bob")).status_code == 404
    assert [x["id"] for x in (await api.call("GET", "/api/v1/requests", "bob")).json()] == [bob_id]
    assert [x["id"] for x in (await api.call("GET", "/api/v1/requests?all=true", "bob")).json()] == [bob_id]
    assert {x["id"] for x in (await api.call("GET", "/api/v1/requests?all=true", "root")).json()} == {
        rid,
        bob_id,
    }
    bob_events = (await api.call("GET", "/api/v1/events", "bob")).json()
    assert {e["request_id"] for e in bob_events} == {bob_id}

    r = await api.call("POST", f"/api/v1/requests/{rid}/cancel", "alice")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert (await api.call("DELETE", f"/api/v1/requests/{rid}", "alice")).status_code == 409
    r = await api.call("POST", f"/api/v1/requests/{bob_id}/cancel", "root")  # admins act on everything
    assert r.json()["state"] == "cancelled" and r.json()["reason"] == "cancelled by root"
    events = (await api.call("GET", f"/api/v1/requests/{rid}/events", "alice")).json()
    assert [(e["actor"], e["action"]) for e in events] == [
        ("alice", "request.submitted"),
        ("alice", "request.cancelled"),
    ]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (spec(walltime="soon"), "walltime", "is not a duration"),
        (spec(walltime=10), "walltime", "between 1 min and 30 d"),
        (spec(nodes=0), "nodes", "greater than or equal to 1"),
        (spec(name="Bad_Name"), "name", "should match pattern"),
        (spec(colour="blue"), "colour", "Extra inputs are not permitted"),
        ({"name": "x", "walltime": "1h"}, "workflow", "Field required"),
        (
            spec(
                workflow={"manifests": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}]}
            ),
            "workflow",
            "kind 'Namespace' is not allowed",
        ),
        (
            spec(workflow={"manifests": [JOB], "helm": {"chart": "c"}}),
            "workflow",
            "exactly one of manifests or helm",
        ),
        (
            spec(actions=[{"name": "t", "kind": "env", "deployment": "d"}]),
            "actions.0.env.env",
            "Field required",
        ),
        (spec(actions=[{"name": "t", "kind": "http"}]), "actions.0.http", "needs a url, a service or a port"),
        (spec(deadline="tomorrow"), "deadline", "valid datetime"),
    ],
)
async def test_malformed_requests_name_the_field(
    api: Api, body: dict[str, Any], field: str, words: str
) -> None:
    r = await api.call("POST", "/api/v1/requests", "alice", json=body)
    assert r.status_code == 422, r.text
    doc = r.json()
    assert any(".".join(str(p) for p in e["loc"][1:]).startswith(field) for e in doc["detail"]), doc
    assert doc["message"].startswith(field) and words in doc["message"], doc["message"]


async def test_actions_on_a_workflow_that_does_not_run_are_refused_and_recorded(api: Api) -> None:
    rid = (await api.call("POST", "/api/v1/requests", "alice", json=spec())).json()["id"]
    # exactly the digital twin's call, through its own client function
    with pytest.raises(UserError, match=r"HTTP 409.*not running"):
        await post_jcs_action(
            api.url,
            str(rid),
            {
                "action": "set-threads",
                "threads": 32,
                "target": {"namespace": "default", "deployment": "receiver", "env": "THREADS"},
                "source": "jiriaf-twin",
                "reason": "twin step 3",
            },
            api.tokens["alice"],
        )
    with pytest.raises(UserError, match="HTTP 401"):
        await post_jcs_action(api.url, str(rid), {"action": "set-threads", "threads": 32})
    events = (await api.call("GET", f"/api/v1/requests/{rid}/events", "alice")).json()
    refused = [e for e in events if e["action"] == "workflow.set-threads.refused"]
    assert len(refused) == 1
    assert refused[0]["data"]["source"] == "jiriaf-twin" and refused[0]["data"]["params"]["threads"] == 32
    r = await api.call("POST", "/api/v1/workflows/no-such-name/actions", "alice", json={"action": "scale"})
    assert r.status_code == 404


async def test_sites_and_scrapes(api: Api) -> None:
    r = await api.call("GET", "/api/v1/sites", "alice")
    assert [x["name"] for x in r.json()] == ["here"] and r.json()[0]["state"] == "unknown"
    assert (await api.call("POST", "/api/v1/sites/here/scrape", "alice")).status_code == 403
    r = await api.call("POST", "/api/v1/sites/here/scrape", "root")
    assert r.status_code == 200 and r.json()["state"] == "ok" and r.json()["resources"][0]["nodes_free"] == 1
    assert (await api.call("POST", "/api/v1/sites/nowhere/scrape", "root")).status_code == 404
    events = (await api.call("GET", "/api/v1/events", "root")).json()
    assert any(e["action"] == "site.scraped" and e["actor"] == "root" for e in events)


async def test_pilot_actions_are_for_admins(api: Api) -> None:
    assert (await api.call("POST", "/api/v1/pilots/p1/stop", "alice")).status_code == 403
    assert (await api.call("POST", "/api/v1/pilots/p1/stop", "root")).status_code == 404
    assert (await api.call("GET", "/api/v1/pilots", "alice")).json() == []


async def test_openapi_schema_is_served(api: Api) -> None:
    doc = (await api.call("GET", "/openapi.json")).json()
    assert doc["info"]["title"] == "JIRIAF central service"
    for path in (
        "/api/v1/requests",
        "/api/v1/requests/{request_id}/cancel",
        "/api/v1/workflows/{workflow}/actions",
    ):
        assert path in doc["paths"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
