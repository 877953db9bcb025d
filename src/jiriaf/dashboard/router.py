"""The dashboard's API and its static page: ``GET /api/v1/dashboard/summary`` (everything the page
shows) and ``POST /api/v1/dashboard/workflows/{id}/twin`` (a digital twin reports a step).

Add both to the central service's app with :func:`mount_dashboard` (``/`` then redirects to the
page)::

    mount_dashboard(app, jcs.db, jcs.kube)

The summary needs the same bearer token as the rest of the API and shows what the API would show
the same user: sites and the cluster's JRM nodes to everyone; requests, workflows, their status,
twin decisions, events and the pilots serving them to their owner only; everything to admins.
"""

# no ``from __future__ import annotations``: FastAPI must see the real Annotated[...] objects of the
# endpoint closures below, whose dependencies are local variables.
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx2
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, status
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from jiriaf.dashboard.clusterview import ClusterSnapshot, ClusterView
from jiriaf.dashboard.twinstate import TWIN_DECISION, parse_decision
from jiriaf.dashboard.views import (
    SERIES_POINTS,
    DeploymentView,
    Summary,
    TwinView,
    WorkflowView,
    deployment_refs,
    deployment_view,
    metric_series,
    node_views,
)
from jiriaf.jcs import trail
from jiriaf.jcs.api import pilot_view
from jiriaf.jcs.auth import Principal, authenticate
from jiriaf.jcs.db import Database
from jiriaf.jcs.leases import LIVE_PILOT_STATES
from jiriaf.jcs.models import (
    FINAL_REQUEST_STATES,
    Event,
    Lease,
    LeaseState,
    Pilot,
    Request,
    Site,
    WorkflowStatus,
    utcnow,
)
from jiriaf.jcs.schemas import EventView, SiteView, StatusView

STATIC_DIR = Path(__file__).parent / "static"
MAX_WORKFLOWS = 100  # unfinished first, then the most recently filed
MAX_EVENTS = 50
TWIN_CANDIDATES = 3  # newest twin events read per workflow, to skip a malformed one

_bearer = HTTPBearer(auto_error=False)


def dashboard_static() -> StaticFiles:
    """The page, its script and stylesheet (``/ui/`` serves ``index.html``)."""
    return StaticFiles(directory=STATIC_DIR, html=True)


def mount_dashboard(app: FastAPI, db: Database, kube: httpx2.AsyncClient | None, path: str = "/ui") -> None:
    """Serve the dashboard API, the page at ``path``, and redirect ``/`` to the page."""
    app.include_router(dashboard_router(db, kube))
    app.mount(path, dashboard_static(), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def to_the_dashboard() -> RedirectResponse:
        return RedirectResponse(f"{path}/")


def dashboard_router(db: Database, kube: httpx2.AsyncClient | None, cluster_ttl: float = 1.0) -> APIRouter:
    """The dashboard API of the JCS whose database is ``db`` and whose apiserver client is ``kube``
    (None: a service without Kubernetes; the summary then says so)."""
    router = APIRouter(prefix="/api/v1/dashboard", tags=["dashboard"])
    cluster = ClusterView(kube, ttl=cluster_ttl)

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is not None and credentials.scheme.lower() == "bearer":
            async with db.session() as session:
                who = await authenticate(session, credentials.credentials)
            if who is not None:
                return who
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @router.post("/workflows/{workflow_id}/twin", status_code=status.HTTP_201_CREATED)
    async def record_twin_decision(
        workflow_id: int,
        body: Annotated[dict[str, Any], Body()],
        who: Annotated[Principal, Depends(principal)],
    ) -> dict[str, int]:
        """Record one step of a digital twin watching this workflow (a ``twin.decision`` event whose
        data is the body: schema 1, see ``jiriaf.dashboard.twinstate``)."""
        decision = parse_decision(body)
        if decision is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "not a twin decision: need schema 1 with step, state_labels, probabilities (summing to 1, "
                "one per label), lq, threads, recommended_threads and applied",
            )
        async with db.session() as session:
            request = await session.get(Request, workflow_id)
            if request is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no workflow {workflow_id}")
            if request.user != who.user and not who.admin:
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN, f"workflow {workflow_id} belongs to another user"
                )
            ev = trail.record(
                session,
                who.user,
                TWIN_DECISION,
                "workflow",
                workflow_id,
                f"twin step {decision.step}: most likely {decision.likely_state}, "
                f"recommends {decision.recommended_threads} threads"
                + (" (applied)" if decision.applied else ""),
                request_id=workflow_id,
                data=decision.data(),
            )
            await session.commit()
            return {"event_id": ev.id}

    @router.get("/summary", response_model=Summary)
    async def summary(who: Annotated[Principal, Depends(principal)]) -> Summary:
        """Everything the dashboard shows, as this user may see it."""
        snapshot = await cluster.snapshot()
        async with db.session() as session:
            return await build_summary(session, who, snapshot)

    return router


# ----------------------------------------------------------------------------- queries


def _visible_requests(who: Principal) -> Select[Request]:
    stmt = select(Request)
    if not who.admin:
        stmt = stmt.where(Request.user == who.user)
    finished = case((Request.state.in_([s.value for s in FINAL_REQUEST_STATES]), 1), else_=0)
    return stmt.order_by(finished, Request.id.desc()).limit(MAX_WORKFLOWS)


def _newest_per_request(model: Any, ids: Sequence[int], per_request: int, where: Any = None) -> Select[Any]:
    """The ``per_request`` newest rows of ``model`` for each of ``ids`` (a window over request_id)."""
    rank = func.row_number().over(partition_by=model.request_id, order_by=model.id.desc()).label("rank")
    inner = select(model.id.label("id"), rank).where(model.request_id.in_(ids))
    if where is not None:
        inner = inner.where(where)
    sub = inner.subquery()
    return select(model).join(sub, sub.c.id == model.id).where(sub.c.rank <= per_request)


async def build_summary(session: AsyncSession, who: Principal, snapshot: ClusterSnapshot) -> Summary:
    requests = list((await session.execute(_visible_requests(who))).scalars())
    ids = [r.id for r in requests]

    samples: dict[int, list[WorkflowStatus]] = defaultdict(list)
    twin_events: dict[int, list[Event]] = defaultdict(list)
    if ids:
        for row in (await session.execute(_newest_per_request(WorkflowStatus, ids, SERIES_POINTS))).scalars():
            samples[row.request_id].append(row)
        twin = _newest_per_request(Event, ids, TWIN_CANDIDATES, where=Event.action == TWIN_DECISION)
        for ev in (await session.execute(twin)).scalars():
            if ev.request_id is not None:
                twin_events[ev.request_id].append(ev)

    sites = list(
        (
            await session.execute(select(Site).options(selectinload(Site.resources)).order_by(Site.name))
        ).scalars()
    )

    serving: dict[str, int] = {}
    if ids:
        leases = await session.execute(
            select(Lease.pilot_id, Lease.request_id).where(
                Lease.state == LeaseState.ACTIVE.value, Lease.request_id.in_(ids)
            )
        )
        for pilot_id, request_id in leases:
            serving[pilot_id] = request_id
    live = select(Pilot).where(Pilot.state.in_(LIVE_PILOT_STATES))
    if not who.admin:  # as in the JCS API: users see the pilots that serve their requests
        live = live.where(Pilot.id.in_(list(serving)))
    pilots = list((await session.execute(live.order_by(Pilot.created_at, Pilot.id))).scalars())

    events_stmt = select(Event).order_by(Event.id.desc()).limit(MAX_EVENTS)
    if not who.admin:
        events_stmt = events_stmt.where(
            Event.request_id.in_(select(Request.id).where(Request.user == who.user))
        )
    events = list((await session.execute(events_stmt)).scalars())

    now = utcnow()
    return Summary(
        generated_at=now,
        user=who.user,
        admin=who.admin,
        sites=[SiteView.model_validate(site, from_attributes=True) for site in sites],
        nodes=node_views(snapshot.nodes, snapshot.pods),
        pilots=[pilot_view(p, serving.get(p.id), now) for p in pilots],
        workflows=[
            workflow_view(r, samples.get(r.id, []), twin_events.get(r.id, []), snapshot) for r in requests
        ],
        events=[EventView.model_validate(e, from_attributes=True) for e in events],
        kubernetes_error=snapshot.error,
    )


def workflow_view(
    request: Request,
    samples: Sequence[WorkflowStatus],
    twin_events: Sequence[Event],
    snapshot: ClusterSnapshot,
) -> WorkflowView:
    # only what this workflow applied: the Deployments the JCS's scale action may act on
    refs = deployment_refs(request.applied_objects or [])
    deployments: list[DeploymentView] = [
        deployment_view(snapshot.deployments[ref]) for ref in refs if ref in snapshot.deployments
    ]
    latest = max(samples, key=lambda r: (r.at, r.id), default=None)
    return WorkflowView(
        id=request.id,
        name=request.name,
        user=request.user,
        namespace=request.namespace,
        state=request.state,
        outcome=request.outcome,
        nodes=request.nodes,
        node_type=request.node_type,
        walltime_s=request.walltime_s,
        reason=request.reason,
        created_at=request.created_at,
        started_at=request.started_at,
        status=None if latest is None else StatusView.model_validate(latest, from_attributes=True),
        deployments=deployments,
        series=metric_series(samples),
        twin=twin_view(twin_events),
    )


def twin_view(events: Sequence[Event]) -> TwinView | None:
    """The newest well-formed twin decision among ``events``."""
    for ev in sorted(events, key=lambda e: e.id, reverse=True):
        decision = parse_decision(ev.data)
        if decision is not None:
            return TwinView(at=ev.at, likely_state=decision.likely_state, decision=decision)
    return None
