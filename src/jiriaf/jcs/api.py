"""The front end (JFE): the REST API, with bearer-token authentication.

Users file, list, inspect and cancel their own requests and act on their own workflows; admins
see and act on everything (sites, pilots, every request). The OpenAPI schema is served at
``/openapi.json`` (and browsable at ``/docs``). :func:`create_app` returns the FastAPI app; more
routes and static files (the dashboard) can be added to it before it is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from jiriaf import __version__
from jiriaf.errors import UserError
from jiriaf.jcs import auth, leases, trail
from jiriaf.jcs.auth import Principal
from jiriaf.jcs.control import ActionError
from jiriaf.jcs.filing import file_request
from jiriaf.jcs.models import (
    FINAL_REQUEST_STATES,
    Event,
    Lease,
    LeaseState,
    Pilot,
    RequestState,
    Site,
    WorkflowStatus,
    utcnow,
)
from jiriaf.jcs.models import Request as RequestRow
from jiriaf.jcs.schemas import (
    ActionCall,
    ActionResult,
    EventView,
    LeaseView,
    PilotView,
    RequestSpec,
    RequestView,
    ResourceView,
    SiteView,
    StatusView,
    WhoAmI,
)
from jiriaf.jcs.service import Jcs

API = "/api/v1"
bearer = HTTPBearer(auto_error=False, description="An API token from 'jiriaf jcs token create'.")


def _jcs(request: Request) -> Jcs:
    jcs: Jcs = request.app.state.jcs
    return jcs


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with _jcs(request).db.session() as s:
        yield s


Session = Annotated[AsyncSession, Depends(_session)]


async def _principal(
    s: Session, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers=unauthorized)
    who = await auth.authenticate(s, credentials.credentials)
    if who is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked token", headers=unauthorized)
    return who


Who = Annotated[Principal, Depends(_principal)]


def _admin(who: Principal) -> None:
    if not who.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may do this")


async def _own_request(s: AsyncSession, who: Principal, request_id: int) -> RequestRow:
    row = await s.get(RequestRow, request_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no request {request_id}")
    if row.user != who.user and not who.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"request {request_id} belongs to another user")
    return row


async def _workflow(s: AsyncSession, who: Principal, ref: str) -> RequestRow:
    """A workflow by request id, or by request name (the newest running one the caller may see)."""
    if ref.isdigit():
        return await _own_request(s, who, int(ref))
    stmt = select(RequestRow).where(RequestRow.name == ref, RequestRow.state == RequestState.RUNNING.value)
    if not who.admin:
        stmt = stmt.where(RequestRow.user == who.user)
    row = (await s.execute(stmt.order_by(RequestRow.id.desc()))).scalars().first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no running workflow named {ref!r}")
    return row


def request_view(row: RequestRow, active: Sequence[Lease], now: datetime) -> RequestView:
    return RequestView(
        id=row.id,
        user=row.user,
        name=row.name,
        namespace=row.namespace,
        state=row.state,
        outcome=row.outcome,
        reason=row.reason,
        nodes=row.nodes,
        cpus_per_node=row.cpus_per_node,
        memory_mb_per_node=row.memory_mb_per_node,
        node_type=row.node_type,
        sites=list(row.sites),
        walltime_s=row.walltime_s,
        deadline=row.deadline,
        priority=row.priority,
        attempts=row.attempts,
        workflow=row.workflow,
        actions=list(row.actions),
        metrics=dict(row.metrics),
        inactivity_timeout_s=row.inactivity_timeout_s,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        leases=[
            LeaseView(
                id=lease.id,
                pilot_id=lease.pilot_id,
                state=lease.state,
                nodes=list(lease.pilot.node_names),
                remaining_s=leases.remaining_s(lease.pilot, now),
            )
            for lease in active
        ],
    )


def pilot_view(p: Pilot, leased_to: int | None, now: datetime) -> PilotView:
    return PilotView(
        id=p.id,
        site=p.site,
        partition=p.partition,
        node_type=p.node_type,
        nodes=p.nodes,
        state=p.state,
        native_id=p.native_id,
        node_names=list(p.node_names),
        walltime_s=p.walltime_s,
        expires_at=p.expires_at,
        remaining_s=leases.remaining_s(p, now),
        leased_to=leased_to,
        last_error=p.last_error,
    )


def _event_view(e: Event) -> EventView:
    return EventView.model_validate(e, from_attributes=True)


def _field_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def create_app(jcs: Jcs, *, manage_lifecycle: bool = True) -> FastAPI:
    """The REST API over ``jcs`` (started and stopped with the app when ``manage_lifecycle``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await jcs.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await jcs.stop()

    app = FastAPI(
        title="JIRIAF central service",
        version=__version__,
        description="File workflow requests; the central service matches them to free resources, "
        "launches JRM pilots, runs and monitors the workflows, and records every step.",
        lifespan=lifespan,
    )
    app.state.jcs = jcs

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"detail": errors, "message": _field_message(errors)},
        )

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_400_BAD_REQUEST, content={"detail": str(exc)})

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    router = APIRouter(prefix=API)

    @router.get("/whoami", tags=["service"])
    async def whoami(who: Who) -> WhoAmI:
        return WhoAmI(user=who.user, admin=who.admin)

    # ----------------------------------------------------------------------------- requests

    @router.post("/requests", status_code=status.HTTP_201_CREATED, tags=["requests"])
    async def submit(spec: RequestSpec, who: Who, s: Session) -> RequestView:
        """File a workflow request."""
        row = await file_request(s, who.user, spec)
        return request_view(row, [], utcnow())

    @router.get("/requests", tags=["requests"])
    async def list_requests(
        who: Who,
        s: Session,
        state: Annotated[str | None, Query(description="Only requests in this state.")] = None,
        all_users: Annotated[bool, Query(alias="all", description="Admins: every user's requests.")] = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[RequestView]:
        stmt = select(RequestRow)
        if not (who.admin and all_users):
            stmt = stmt.where(RequestRow.user == who.user)
        if state:
            stmt = stmt.where(RequestRow.state == state)
        rows = (await s.execute(stmt.order_by(RequestRow.id.desc()).limit(limit))).scalars().all()
        active = await _active_leases(s, [r.id for r in rows])
        now = utcnow()
        return [request_view(r, active.get(r.id, []), now) for r in rows]

    @router.get("/requests/{request_id}", tags=["requests"])
    async def show_request(request_id: int, who: Who, s: Session) -> RequestView:
        row = await _own_request(s, who, request_id)
        return request_view(row, await leases.active_leases(s, row.id), utcnow())

    async def _cancel(request_id: int, who: Principal, s: AsyncSession) -> RequestView:
        row = await _own_request(s, who, request_id)
        if row.state in FINAL_REQUEST_STATES:
            raise HTTPException(status.HTTP_409_CONFLICT, f"request {request_id} is already {row.state}")
        if row.state == RequestState.STOPPING.value:
            return request_view(row, await leases.active_leases(s, row.id), utcnow())
        reason = f"cancelled by {who.user}"
        if row.state == RequestState.PENDING.value:
            leases.finish(s, row, RequestState.CANCELLED, reason, actor=who.user)
        else:
            row.state = RequestState.STOPPING.value
            row.outcome = RequestState.CANCELLED.value
            row.reason = reason
            trail.record(s, who.user, "request.cancelling", "request", row.id, reason, request_id=row.id)
        await s.commit()
        return request_view(row, await leases.active_leases(s, row.id), utcnow())

    @router.post("/requests/{request_id}/cancel", tags=["requests"])
    async def cancel_request(request_id: int, who: Who, s: Session) -> RequestView:
        """Cancel a request: a pending one at once; a leased or running one is taken down by the loop."""
        return await _cancel(request_id, who, s)

    @router.delete("/requests/{request_id}", tags=["requests"])
    async def delete_request(request_id: int, who: Who, s: Session) -> RequestView:
        """The same as ``POST .../cancel`` (requests are kept, with their trail)."""
        return await _cancel(request_id, who, s)

    @router.get("/requests/{request_id}/status", tags=["requests"])
    async def request_status(
        request_id: int, who: Who, s: Session, limit: Annotated[int, Query(ge=1, le=10000)] = 100
    ) -> list[StatusView]:
        """The monitor's samples of the workflow, oldest first (the last ``limit``)."""
        await _own_request(s, who, request_id)
        rows = (
            (
                await s.execute(
                    select(WorkflowStatus)
                    .where(WorkflowStatus.request_id == request_id)
                    .order_by(WorkflowStatus.id.desc())
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
        return [StatusView.model_validate(r, from_attributes=True) for r in reversed(rows)]

    @router.get("/requests/{request_id}/events", tags=["requests"])
    async def request_events(request_id: int, who: Who, s: Session) -> list[EventView]:
        await _own_request(s, who, request_id)
        rows = (await s.execute(trail.query(request_id=request_id, limit=10000))).scalars().all()
        return [_event_view(e) for e in rows]

    # ----------------------------------------------------------------------------- control

    @router.post("/workflows/{workflow}/actions", tags=["control"])
    async def workflow_action(
        workflow: str, call: ActionCall, who: Who, s: Session, request: Request
    ) -> ActionResult:
        """A control action on a workflow: ``scale`` (replicas, deployment), ``resources`` (cpu, memory,
        deployment, container), ``stop``, ``set-threads`` (the digital twin's call) or an action the
        request declared (with its parameter as declared, or ``value``)."""
        row = await _workflow(s, who, workflow)
        try:
            message, event_id = await _jcs(request).controller.workflow_action(s, who, row, call)
        except ActionError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return ActionResult(action=call.action, workflow=row.id, ok=True, message=message, event_id=event_id)

    @router.get("/pilots", tags=["control"])
    async def list_pilots(
        who: Who,
        s: Session,
        live: Annotated[bool, Query(description="Only pilots that have not ended.")] = False,
    ) -> list[PilotView]:
        """Admins see every pilot; users the pilots leased to their requests."""
        stmt = select(Pilot)
        if live:
            stmt = stmt.where(Pilot.state.in_(leases.LIVE_PILOT_STATES))
        pilots = (await s.execute(stmt.order_by(Pilot.created_at.desc()).limit(1000))).scalars().all()
        active = (
            await s.execute(
                select(Lease.pilot_id, Lease.request_id, RequestRow.user)
                .join(RequestRow, RequestRow.id == Lease.request_id)
                .where(Lease.state == LeaseState.ACTIVE.value)
            )
        ).all()
        leased = {pid: (rid, user) for pid, rid, user in active}
        now = utcnow()
        out = []
        for p in pilots:
            rid, user = leased.get(p.id, (None, None))
            if who.admin or user == who.user:
                out.append(pilot_view(p, rid, now))
        return out

    async def _pilot(s: AsyncSession, pilot_id: str) -> Pilot:
        p = await s.get(Pilot, pilot_id)
        if p is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pilot {pilot_id}")
        return p

    async def _pilot_action(
        action: str, pilot_id: str, who: Principal, s: AsyncSession, jcs: Jcs, reason: str
    ) -> ActionResult:
        _admin(who)
        pilot = await _pilot(s, pilot_id)
        lease = await leases.pilot_lease(s, pilot_id)
        run = jcs.controller.drain_pilot if action == "drain" else jcs.controller.stop_pilot
        try:
            message, event_id = await run(s, who, pilot, reason)
        except ActionError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        workflow = lease.request_id if lease else 0
        return ActionResult(action=action, workflow=workflow, ok=True, message=message, event_id=event_id)

    @router.post("/pilots/{pilot_id}/drain", tags=["control"])
    async def drain_pilot(
        pilot_id: str, who: Who, s: Session, request: Request, reason: str = ""
    ) -> ActionResult:
        """Admins: cordon the pilot's nodes and delete the pods on them."""
        return await _pilot_action("drain", pilot_id, who, s, _jcs(request), reason)

    @router.post("/pilots/{pilot_id}/stop", tags=["control"])
    async def stop_pilot(
        pilot_id: str, who: Who, s: Session, request: Request, reason: str = ""
    ) -> ActionResult:
        """Admins: cancel the pilot (its request, if any, is queued again)."""
        return await _pilot_action("stop", pilot_id, who, s, _jcs(request), reason)

    # ----------------------------------------------------------------------------- sites and events

    @router.get("/sites", tags=["sites"])
    async def list_sites(who: Who, s: Session) -> list[SiteView]:
        rows = (
            (await s.execute(select(Site).options(selectinload(Site.resources)).order_by(Site.name)))
            .scalars()
            .all()
        )
        return [
            SiteView(
                name=r.name,
                kind=r.kind,
                enabled=r.enabled,
                state=r.state,
                last_error=r.last_error,
                last_scrape_at=r.last_scrape_at,
                resources=[ResourceView.model_validate(x, from_attributes=True) for x in r.resources],
            )
            for r in rows
        ]

    @router.post("/sites/{name}/scrape", tags=["sites"])
    async def scrape_site(name: str, who: Who, request: Request) -> SiteView:
        """Admins: scrape a site now."""
        _admin(who)
        try:
            site = await _jcs(request).facilities.scrape_site(name, actor=who.user)
        except UserError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        return SiteView(
            name=site.name,
            kind=site.kind,
            enabled=site.enabled,
            state=site.state,
            last_error=site.last_error,
            last_scrape_at=site.last_scrape_at,
            resources=[ResourceView.model_validate(x, from_attributes=True) for x in site.resources],
        )

    @router.get("/events", tags=["service"])
    async def list_events(
        who: Who,
        s: Session,
        request_id: int | None = None,
        since_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 500,
    ) -> list[EventView]:
        """Admins: every event; users: the events of their requests."""
        if request_id is not None:
            await _own_request(s, who, request_id)
        stmt = trail.query(request_id=request_id, since_id=since_id, limit=limit)
        if not who.admin and request_id is None:
            mine = select(RequestRow.id).where(RequestRow.user == who.user)
            stmt = stmt.where(Event.request_id.in_(mine))
        rows = (await s.execute(stmt)).scalars().all()
        return [_event_view(e) for e in rows]

    @router.get("/stats", tags=["service"])
    async def stats(who: Who, s: Session) -> dict[str, dict[str, int]]:
        """Counts of requests and pilots by state (a user's own requests; all for admins)."""
        rq = select(RequestRow.state, func.count()).group_by(RequestRow.state)
        if not who.admin:
            rq = rq.where(RequestRow.user == who.user)
        requests = {state: n for state, n in (await s.execute(rq)).all()}
        pilots = {
            state: n
            for state, n in (await s.execute(select(Pilot.state, func.count()).group_by(Pilot.state))).all()
        }
        return {"requests": requests, "pilots": pilots if who.admin else {}}

    app.include_router(router)
    from jiriaf.dashboard import mount_dashboard  # the web dashboard (issue 8) rides on the same app

    mount_dashboard(app, jcs.db, jcs.kube)
    return app


async def _active_leases(s: AsyncSession, request_ids: Sequence[int]) -> dict[int, list[Lease]]:
    if not request_ids:
        return {}
    rows = (
        (
            await s.execute(
                select(Lease)
                .options(selectinload(Lease.pilot))
                .where(Lease.request_id.in_(request_ids), Lease.state == LeaseState.ACTIVE.value)
            )
        )
        .scalars()
        .all()
    )
    out: dict[int, list[Lease]] = {}
    for lease in rows:
        out.setdefault(lease.request_id, []).append(lease)
    return out
