"""The dashboard mounted in the JCS app, on a real SQLite database: bearer-token auth, what each
user may see, how workflows, status series, pilots, twin decisions and events come out, and the
static page.

Kubernetes is not part of this tier: the service has no apiserver client, and the summary must say
so in ``kubernetes_error`` while everything else still works.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio

from jiriaf.dashboard import STATIC_DIR, mount_dashboard
from jiriaf.dashboard.clusterview import NO_KUBERNETES
from jiriaf.jcs.api import create_app
from jiriaf.jcs.db import Database
from jiriaf.jcs.service import Jcs
from jiriaf.jcs.settings import JcsSettings
from unit.dashboard.dashboard_seed import World, seed

pytestmark = pytest.mark.unit

SUMMARY = "/api/v1/dashboard/summary"
TWIN = "/api/v1/dashboard/workflows"


@pytest_asyncio.fixture()
async def world(tmp_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, World]]:
    db = Database(f"sqlite:///{tmp_path / 'jcs.sqlite'}")
    await db.upgrade()
    w = await seed(db)
    jcs = Jcs(JcsSettings(), db=db, kube=None, run_loops=False)
    app = create_app(jcs, manage_lifecycle=False)
    mount_dashboard(app, jcs.db, jcs.kube)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://jcs.test") as client:
        yield client, w
    await db.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def summary(client: httpx2.AsyncClient, token: str) -> dict[str, Any]:
    resp = await client.get(SUMMARY, headers=bearer(token))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# ----------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer jcs_not-a-real-token"},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer " + "x" * 500},
    ],
)
async def test_summary_refuses_requests_without_a_valid_token(
    world: tuple[httpx2.AsyncClient, World], headers: dict[str, str]
) -> None:
    client, _ = world
    resp = await client.get(SUMMARY, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "token" in resp.json()["detail"]


async def test_a_revoked_token_is_refused(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    resp = await client.get(SUMMARY, headers=bearer(w.revoked))
    assert resp.status_code == 401


# ----------------------------------------------------------------------------- visibility


async def test_a_user_sees_only_their_own_workflows_events_and_twin(
    world: tuple[httpx2.AsyncClient, World],
) -> None:
    client, w = world
    body = await summary(client, w.alice)
    assert (body["user"], body["admin"]) == ("alice", False)
    assert {wf["id"] for wf in body["workflows"]} == {w.alice_req, w.alice_done}
    assert all(wf["user"] == "alice" for wf in body["workflows"])
    assert {e["request_id"] for e in body["events"]} == {w.alice_req}
    assert "bob" not in str(body["workflows"]) + str(body["events"])
    # only the pilot serving alice, with her running workflow (the finished one's lease was released)
    assert {p["id"]: p["leased_to"] for p in body["pilots"]} == {"p-1": w.alice_req}


async def test_bob_does_not_see_alices_work(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    body = await summary(client, w.bob)
    assert [wf["id"] for wf in body["workflows"]] == [w.bob_req]
    assert [e["message"] for e in body["events"]] == ["bob step", "bob filed"]
    assert {p["id"]: p["leased_to"] for p in body["pilots"]} == {"p-2": w.bob_req}


async def test_an_admin_sees_everything(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    body = await summary(client, w.admin)
    assert (body["user"], body["admin"]) == ("root", True)
    assert {wf["id"] for wf in body["workflows"]} == {w.alice_req, w.alice_done, w.bob_req}
    actions = [e["action"] for e in body["events"]]
    assert "site.scraped" in actions and "token.created" in actions
    assert [e["id"] for e in body["events"]] == sorted((e["id"] for e in body["events"]), reverse=True)
    assert {p["id"]: p["leased_to"] for p in body["pilots"]} == {"p-1": w.alice_req, "p-2": w.bob_req}


# ----------------------------------------------------------------------------- content


async def test_unfinished_workflows_come_first_then_newest(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    body = await summary(client, w.admin)
    assert [wf["id"] for wf in body["workflows"]] == [w.bob_req, w.alice_req, w.alice_done]


async def test_workflow_status_series_and_latest_sample(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    body = await summary(client, w.alice)
    wf = next(x for x in body["workflows"] if x["id"] == w.alice_req)
    assert (
        wf["state"] == "running" and wf["reason"] == "running on pilot p-1" and wf["namespace"] == "alice-ns"
    )
    assert wf["status"]["phase"] == "Running" and wf["status"]["pods_running"] == 1 + 69 % 2
    series = {s["name"]: s for s in wf["series"]}
    assert set(series) == {"pods running", "queue"}
    queue = [p[1] for p in series["queue"]["points"]]
    assert queue == [float(i) for i in range(10, 70)]  # the newest 60 samples, oldest first
    times = [p[0] for p in series["queue"]["points"]]
    assert times == sorted(times)
    done = next(x for x in body["workflows"] if x["id"] == w.alice_done)
    assert done["status"] is None and done["series"] == [] and done["twin"] is None
    assert done["outcome"] == "completed"


async def test_the_twin_panel_shows_the_newest_well_formed_decision(
    world: tuple[httpx2.AsyncClient, World],
) -> None:
    client, w = world
    body = await summary(client, w.alice)
    twin = next(x for x in body["workflows"] if x["id"] == w.alice_req)["twin"]
    assert twin["likely_state"] == "high"
    assert twin["decision"]["step"] == 2  # the newer "garbage" event is skipped
    assert twin["decision"]["recommended_threads"] == 32 and twin["decision"]["applied"] is True
    assert twin["decision"]["probabilities"] == [0.2, 0.8]


async def test_sites_show_their_free_resources_to_every_user(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    for token in (w.alice, w.bob, w.admin):
        body = await summary(client, token)
        sites = {s["name"]: s for s in body["sites"]}
        assert list(sites) == ["empty", "perlmutter"]
        assert sites["empty"]["resources"] == [] and sites["empty"]["kind"] == "static"
        free = {r["partition"]: (r["nodes_free"], r["nodes_total"]) for r in sites["perlmutter"]["resources"]}
        assert free == {"debug": (4, 10), "regular": (0, 100)}
        assert sites["perlmutter"]["state"] == "ok"


async def test_only_pilots_that_still_run_are_listed(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    body = await summary(client, w.admin)
    pilots = {p["id"]: p for p in body["pilots"]}
    assert list(pilots) == ["p-1", "p-2"]
    assert pilots["p-1"]["node_names"] == ["jrm-a"] and pilots["p-1"]["expires_at"] is not None
    assert 0 < pilots["p-1"]["remaining_s"] <= 3600  # expires an hour after the seed
    assert pilots["p-2"]["expires_at"] is None and pilots["p-2"]["remaining_s"] == 3600  # queued


async def test_without_kubernetes_the_summary_says_why_and_shows_the_rest(
    world: tuple[httpx2.AsyncClient, World],
) -> None:
    client, w = world
    body = await summary(client, w.alice)
    assert body["kubernetes_error"] == NO_KUBERNETES
    assert body["nodes"] == []
    wf = next(x for x in body["workflows"] if x["id"] == w.alice_req)
    assert wf["deployments"] == []
    assert body["generated_at"].endswith("Z") or body["generated_at"].endswith("+00:00")


async def test_the_summary_agrees_with_the_jcs_api(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    for token in (w.alice, w.bob):
        who = (await client.get("/api/v1/whoami", headers=bearer(token))).json()
        listed = (await client.get("/api/v1/requests", headers=bearer(token))).json()
        pilots = (await client.get("/api/v1/pilots?live=true", headers=bearer(token))).json()
        body = await summary(client, token)
        assert body["user"] == who["user"]
        assert sorted(wf["id"] for wf in body["workflows"]) == sorted(r["id"] for r in listed)
        assert sorted(p["id"] for p in body["pilots"]) == sorted(p["id"] for p in pilots)


# ----------------------------------------------------------------------------- twin decisions


def step(n: int, recommended: int = 32) -> dict[str, Any]:
    return {
        "schema": 1,
        "step": n,
        "state_labels": ["low", "high"],
        "probabilities": [0.3, 0.7],
        "lq": 5.0,
        "threads": 16,
        "recommended_threads": recommended,
        "applied": False,
        "detail": "",
    }


async def test_a_twin_reports_a_step_of_its_users_workflow(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    resp = await client.post(f"{TWIN}/{w.alice_req}/twin", json=step(9, 16), headers=bearer(w.alice))
    assert resp.status_code == 201, resp.text
    event_id = resp.json()["event_id"]
    body = await summary(client, w.alice)
    twin = next(x for x in body["workflows"] if x["id"] == w.alice_req)["twin"]
    assert twin["decision"]["step"] == 9 and twin["decision"]["recommended_threads"] == 16
    (ev,) = [e for e in body["events"] if e["id"] == event_id]
    assert ev["action"] == "twin.decision" and ev["actor"] == "alice" and ev["request_id"] == w.alice_req
    assert ev["data"] == step(9, 16)
    assert ev["message"] == "twin step 9: most likely high, recommends 16 threads"


async def test_an_admin_may_report_for_any_workflow(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, w = world
    resp = await client.post(f"{TWIN}/{w.bob_req}/twin", json=step(1), headers=bearer(w.admin))
    assert resp.status_code == 201


@pytest.mark.parametrize(
    ("who", "workflow", "body", "status"),
    [
        ("none", "alice_req", step(1), 401),
        ("alice", "bob_req", step(1), 403),
        ("alice", "missing", step(1), 404),
        ("alice", "alice_req", {**step(1), "probabilities": [0.5, 0.6]}, 422),
        ("alice", "alice_req", {**step(1), "schema": 2}, 422),
        ("alice", "alice_req", {"hello": "world"}, 422),
    ],
)
async def test_twin_reports_that_are_refused(
    world: tuple[httpx2.AsyncClient, World], who: str, workflow: str, body: dict[str, Any], status: int
) -> None:
    client, w = world
    headers = bearer(w.alice) if who == "alice" else {}
    workflow_id = 999_999 if workflow == "missing" else getattr(w, workflow)
    before = await summary(client, w.admin)
    resp = await client.post(f"{TWIN}/{workflow_id}/twin", json=body, headers=headers)
    assert resp.status_code == status, resp.text
    after = await summary(client, w.admin)
    assert [e["id"] for e in after["events"]] == [e["id"] for e in before["events"]]  # nothing recorded


# ----------------------------------------------------------------------------- the page


async def test_the_service_root_leads_to_the_page(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, _ = world
    resp = await client.get("/")
    assert resp.status_code in (302, 307) and resp.headers["location"] == "/ui/"
    resp = await client.get("/ui")
    assert resp.status_code in (301, 307) and resp.headers["location"].endswith("/ui/")


async def test_the_page_and_its_assets_are_served(world: tuple[httpx2.AsyncClient, World]) -> None:
    client, _ = world
    page = await client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="app.js"' in page.text and 'href="app.css"' in page.text
    js = await client.get("/ui/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "dashboard/summary" in js.text
    css = await client.get("/ui/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_static_files_load_nothing_from_other_hosts() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path.name
        assert "cdn" not in text.lower(), path.name


def test_the_token_is_kept_in_session_storage_and_sent_only_as_a_header() -> None:
    js = (STATIC_DIR / "app.js").read_text()
    assert "sessionStorage" in js and "localStorage" not in js
    assert '"Bearer " + state.token' in js
    assert "console." not in js  # nothing, the token least of all, is logged
    assert not re.search(r"[?&]token=", js)
    html = (STATIC_DIR / "index.html").read_text()
    assert re.search(r'<form id="login-form" method="post"', html)  # never a GET that puts it in a URL
