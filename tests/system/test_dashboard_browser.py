"""The dashboard in a real browser (Debian's chromium driven by Playwright) against the real JCS
app served by uvicorn, the real control plane and a real JRM.

How the workflow gets onto the JRM: the request is filed through the JCS API as a user would; the
JRM is started by the test (``jrm_factory``) in the role of the pilot's JRM, so the test records
that placement itself (a running pilot with the JRM's node, a lease, the request ``leased``: what
the matcher and the launcher would have written). From there the JCS's own reconcile code takes
over: ``Reconciler.start_workflows`` renders and applies the Deployment pinned to the JRM's node,
and ``Reconciler.monitor`` records the status samples the charts show. The digital twin's panel is
fed by the live twin run on the queue simulator, which reports each step to the JCS over HTTP.

The browser then signs in with the user's token, sees the node and the workflow, scales the
Deployment to 2 replicas with the page's control, and the test checks the change in the cluster
through the apiserver and on the page, and that the page logged no console errors. The screenshot
is saved to ``artifacts/dashboard.png`` (and ``docs/dashboard.png`` for the README when missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment

import jcs_fixtures
from jiriaf.dashboard import mount_dashboard
from jiriaf.dashboard.twinstate import decision_data
from jiriaf.jcs import auth, trail
from jiriaf.jcs.api import create_app
from jiriaf.jcs.db import Database
from jiriaf.jcs.facilities import SiteConfig
from jiriaf.jcs.models import Lease, Pilot, PilotState, Request, RequestState, utcnow
from jiriaf.jcs.reconcile import PILOT_LABEL, Reconciler
from jiriaf.jcs.service import Jcs
from jiriaf.jcs.settings import JcsSettings
from jiriaf.kube.raw import async_raw_client
from jiriaf.twin import live
from jiriaf.twin.digital_twin import DigitalTwin
from jiriaf.twin.policy import ThresholdPolicy
from support import eventually

pytestmark = pytest.mark.system

postgres = jcs_fixtures.postgres  # the session's PostgreSQL server, for the backend test below

REPO = Path(__file__).resolve().parents[2]
SUMMARY = "/api/v1/dashboard/summary"
WAIT_MS = 90_000
CLOCK = re.compile(r"^\d{2}:\d{2}:\d{2}$")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    return path


# a little CPU every second, so the CPU chart has something to show
LIGHT_WORK = "while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 1; done"


def workflow_spec(namespace: str) -> dict[str, Any]:
    """A request whose workflow is one Deployment of a container that works lightly forever."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "web", "image": "busybox", "command": ["sh", "-c", LIGHT_WORK]}],
                },
            },
        },
    }
    return {
        "name": "web",
        "namespace": namespace,
        "nodes": 1,
        "walltime": "1h",
        "workflow": {"manifests": [deployment]},
    }


async def place_on_jrm(db: Database, request_id: int, pilot_id: str, node: str) -> None:
    """Record what the matcher and launcher would have: a running pilot (the JRM) and its lease."""
    now = utcnow()
    async with db.session() as s:
        req = await s.get(Request, request_id)
        assert req is not None and req.state == RequestState.PENDING.value
        s.add(
            Pilot(
                id=pilot_id,
                site="local",
                partition="local",
                node_type="cpu",
                nodes=1,
                cpus_per_node=req.cpus_per_node,
                memory_mb_per_node=req.memory_mb_per_node,
                walltime_s=3600,
                state=PilotState.RUNNING.value,
                native_id="jrm-started-by-the-test",
                node_names=[node],
                submitted_at=now,
                started_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
        await s.flush()
        s.add(Lease(request_id=request_id, pilot_id=pilot_id))
        req.state = RequestState.LEASED.value
        req.reason = f"leased pilot {pilot_id}"
        trail.record(s, "jcs", "request.leased", "request", request_id, req.reason, request_id=request_id)
        await s.commit()


async def report_twin_steps(api: httpx2.AsyncClient, token: str, request_id: int) -> live.LiveStep:
    """Run the live twin on the queue simulator (the load rises) and report each step's decision
    to the JCS, as a twin running in its own process does."""
    model = live.queueing_model()
    source = live.SimulatorSource([100.0] * 3 + [166.0] * 5, seconds_per_step=30.0, threads=16, seed=2)
    twin = DigitalTwin(model, ThresholdPolicy(model))
    steps = await live.run_live(twin, source, steps=8, actuator=live.SimulatorActuator(source))
    for item in steps:
        resp = await api.post(
            f"/api/v1/dashboard/workflows/{request_id}/twin",
            json=decision_data(item, model.state_labels),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 201, resp.text
    return steps[-1]


async def sample_periodically(reconciler: Reconciler) -> None:
    while True:
        with contextlib.suppress(Exception):
            await reconciler.monitor()
        await asyncio.sleep(1.0)


def replicas_in_cluster(client: Client, namespace: str) -> int:
    dep = client.get(Deployment, "web", namespace=namespace)
    assert dep.spec is not None
    return int(dep.spec.replicas or 0)


async def test_dashboard_signs_in_shows_the_cluster_and_scales_a_workflow(
    kubeconfig: Path,
    client: Client,
    ns: str,
    jrm_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    pilot_id = f"pilot-{ns}"
    jrm = jrm_factory(
        JIRIAF_WALLTIME="3600",
        JIRIAF_LABELS=json.dumps({PILOT_LABEL: pilot_id}),
    ).start()
    await asyncio.to_thread(jrm.wait_ready, client)

    kube = async_raw_client(kubeconfig, timeout=30.0)
    settings = JcsSettings(
        db=f"sqlite:///{tmp_path / 'jcs.sqlite'}", kubeconfig=kubeconfig, monitor_interval=1.0
    )
    db = Database(settings.db)
    local_site = SiteConfig(name="local", kind="local", max_nodes=2, partition="local", max_walltime="12h")
    jcs = Jcs(settings, db=db, kube=kube, facilities=[local_site], run_loops=False)
    app = create_app(jcs)
    if not any(getattr(route, "path", None) == SUMMARY for route in app.routes):
        mount_dashboard(app, jcs.db, jcs.kube)  # until create_app mounts the dashboard itself

    sampler: asyncio.Task[None] | None = None
    console: list[str] = []
    try:
        async with jcs_fixtures.JcsServer(app) as server:
            await jcs.facilities.scrape_site("local")
            async with db.session() as s:
                token = await auth.create_token(s, "alice", label="browser test")

            # file the request through the API, place it on the JRM, let the JCS apply it
            async with httpx2.AsyncClient(base_url=server.url, trust_env=False) as api:
                filed = await api.post(
                    "/api/v1/requests", json=workflow_spec(ns), headers={"Authorization": f"Bearer {token}"}
                )
                assert filed.status_code == 201, filed.text
                request_id = filed.json()["id"]
                await place_on_jrm(db, request_id, pilot_id, jrm.node_name)
                # no launcher: the test's JRM is the pilot, and applying and sampling never launch anything
                reconciler = Reconciler(db, None, kube, settings)  # type: ignore[arg-type]
                await reconciler.start_workflows()
                async with db.session() as s:
                    req = await s.get(Request, request_id)
                    assert req is not None and req.state == RequestState.RUNNING.value, req and req.reason
                    assert req.applied_objects == [{"kind": "Deployment", "namespace": ns, "name": "web"}]
                sampler = asyncio.create_task(sample_periodically(reconciler))
                last_twin_step = await report_twin_steps(api, token, request_id)

            from playwright.async_api import async_playwright, expect

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.on(
                        "console",
                        lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None,
                    )
                    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

                    await page.goto(f"{server.url}/")  # the service root leads to the page
                    await expect(page).to_have_url(f"{server.url}/ui/")

                    await page.fill("#token", token)
                    await page.click("#login-button")
                    await expect(page.locator("#app-view")).to_be_visible()
                    await expect(page.locator("#who")).to_have_text("alice")

                    # the JRM's node, ready, with its walltime counting down
                    node_row = page.locator(f'#nodes tr[data-node="{jrm.node_name}"]')
                    await expect(node_row).to_be_visible(timeout=WAIT_MS)
                    await expect(node_row).to_contain_text("Ready")
                    countdown = node_row.locator(".countdown")
                    await expect(countdown).to_have_text(CLOCK, timeout=WAIT_MS)
                    first = await countdown.inner_text()
                    await expect(countdown).not_to_have_text(first, timeout=WAIT_MS)

                    # the workflow, its Deployment with one ready replica, and the twin's decision
                    card = page.locator(f'[data-workflow="{request_id}"]')
                    await expect(card.locator("h3")).to_contain_text("web")
                    await expect(card.locator(".wf-state")).to_have_text("running")
                    row = card.locator(f'tr[data-deployment="{ns}/web"]')
                    await expect(row.locator(".replicas")).to_have_text("1", timeout=WAIT_MS)
                    await expect(row.locator(".ready")).to_have_text("1 / 1", timeout=WAIT_MS)
                    await expect(card.locator(".wf-twin")).to_contain_text(
                        f"Recommends {last_twin_step.recommended} threads"
                    )
                    await expect(card.locator(".wf-charts figure").first).to_be_visible(timeout=WAIT_MS)
                    await expect(page.locator(f'#pilots th:text-is("{pilot_id}")')).to_be_visible()
                    await expect(page.locator("#sites")).to_contain_text("local")

                    # scale to 2 with the page's control: the cluster follows, and the page shows it
                    await row.locator("input").fill("2")
                    await row.get_by_role("button", name="Scale").click()
                    await asyncio.to_thread(
                        eventually,
                        lambda: replicas_in_cluster(client, ns) == 2,
                        timeout=60,
                        what="Deployment web scaled to 2 in the cluster",
                    )
                    await expect(row.locator(".replicas")).to_have_text("2", timeout=WAIT_MS)
                    await expect(row.locator(".ready")).to_have_text("2 / 2", timeout=WAIT_MS)
                    await expect(page.locator("#events")).to_contain_text("workflow.scale", timeout=WAIT_MS)
                    await expect(page.locator("#banner")).to_be_hidden()

                    # the monitor's CPU and memory samples (metrics-server, from the JRM) appear as charts
                    charts = card.locator(".wf-charts figcaption")
                    for name in ("pods running", "cpu", "memory"):
                        await expect(charts.filter(has_text=name)).to_be_visible(timeout=WAIT_MS)
                    # ... and grow as samples arrive, without a reload
                    cpu_points = (
                        f'() => Number(document.querySelector(\'[data-workflow="{request_id}"] '
                        f'figure[data-series="cpu"]\')?.dataset.points || 0) >= 3'
                    )
                    await page.wait_for_function(cpu_points, timeout=WAIT_MS)
                    shot = REPO / "artifacts" / "dashboard.png"
                    shot.parent.mkdir(exist_ok=True)
                    await page.screenshot(path=str(shot), full_page=True)
                    docs_shot = REPO / "docs" / "dashboard.png"
                    if not docs_shot.exists():
                        shutil.copyfile(shot, docs_shot)
                    print(f"[dashboard] screenshot: {shot}")

                    assert console == [], console  # the whole normal session logged no error

                    # error paths: an action the JCS refuses shows in the error banner ...
                    await row.locator("input").fill("20000")
                    await row.get_by_role("button", name="Scale").click()
                    await expect(page.locator("#banner")).to_be_visible()
                    await expect(page.locator("#banner-text")).to_contain_text("replicas must be between")
                    await page.click("#banner-close")
                    await expect(page.locator("#banner")).to_be_hidden()
                    assert replicas_in_cluster(client, ns) == 2

                    # ... signing out forgets the token, and a wrong token is refused
                    await page.click("#logout")
                    await expect(page.locator("#login-view")).to_be_visible()
                    assert await page.evaluate("sessionStorage.length") == 0
                    await page.fill("#token", "jcs_wrong")
                    await page.click("#login-button")
                    await expect(page.locator("#login-error")).to_have_text("That token was not accepted.")
                    await expect(page.locator("#app-view")).to_be_hidden()
                    # the browser's own lines for the refused calls (422, 401) are the only errors
                    assert all(re.search(r"status of (401|422)", m) for m in console), console
                finally:
                    await browser.close()
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await kube.aclose()
        await db.close()


async def test_the_summary_queries_on_postgresql(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The summary's window queries (newest samples and twin events per workflow) on the production
    backend give what the unit tests check on SQLite."""
    from unit.dashboard.dashboard_seed import seed

    db = await jcs_fixtures.make_db("postgresql", tmp_path, request)
    try:
        w = await seed(db)
        jcs = Jcs(JcsSettings(), db=db, kube=None, run_loops=False)
        app = create_app(jcs, manage_lifecycle=False)
        mount_dashboard(app, jcs.db, jcs.kube)
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://jcs.test") as api:

            async def summary(token: str) -> dict[str, Any]:
                resp = await api.get(SUMMARY, headers={"Authorization": f"Bearer {token}"})
                assert resp.status_code == 200, resp.text
                body: dict[str, Any] = resp.json()
                return body

            alice = await summary(w.alice)
            assert [wf["id"] for wf in alice["workflows"]] == [w.alice_req, w.alice_done]
            running = alice["workflows"][0]
            queue = next(s for s in running["series"] if s["name"] == "queue")
            assert [p[1] for p in queue["points"]] == [float(i) for i in range(10, 70)]
            assert running["twin"]["decision"]["step"] == 2
            assert {p["id"]: p["leased_to"] for p in alice["pilots"]} == {"p-1": w.alice_req}
            assert {e["request_id"] for e in alice["events"]} == {w.alice_req}
            admin = await summary(w.admin)
            assert [wf["id"] for wf in admin["workflows"]] == [w.bob_req, w.alice_req, w.alice_done]
            assert (await api.get(SUMMARY)).status_code == 401
    finally:
        await db.close()
