"""Leases and pilots in the database: the matcher's inputs, its decisions written back, and leases
released (a released pilot's remaining walltime goes back to the pool as an idle pilot).

Every function works inside the caller's session and adds its events to it, so a decision and
its trail are committed together.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from jiriaf.jcs import trail
from jiriaf.jcs.matching import Decision, Demand, IdlePilot, Pool, Verdict
from jiriaf.jcs.models import (
    FINAL_PILOT_STATES,
    Lease,
    LeaseState,
    Pilot,
    PilotState,
    Request,
    RequestState,
    Site,
    SiteState,
    utcnow,
)

LIVE_PILOT_STATES = tuple(s.value for s in PilotState if s not in FINAL_PILOT_STATES)


@dataclass
class MatchInputs:
    requests: list[Request]
    demands: list[Demand]
    pools: list[Pool]
    idle: list[IdlePilot]
    usage: dict[str, int]
    unreachable: dict[str, str]


def remaining_s(pilot: Pilot, now: datetime) -> float | None:
    """Walltime left: from the start when the job runs, the whole walltime while it is queued."""
    if pilot.state in FINAL_PILOT_STATES:
        return 0.0
    if pilot.expires_at is not None:
        return max(0.0, (pilot.expires_at - now).total_seconds())
    return float(pilot.walltime_s)


def new_pilot_id(request_id: int) -> str:
    """A pilot id (a DNS label of at most 32 characters) recorded before the pilot is submitted."""
    return f"jcs{request_id}-{secrets.token_hex(3)}"


async def active_leases(s: AsyncSession, request_id: int) -> list[Lease]:
    rows = await s.execute(
        select(Lease)
        .options(selectinload(Lease.pilot))
        .where(Lease.request_id == request_id, Lease.state == LeaseState.ACTIVE.value)
        .order_by(Lease.id)
    )
    return list(rows.scalars().all())


async def pilot_lease(s: AsyncSession, pilot_id: str) -> Lease | None:
    rows = await s.execute(
        select(Lease).where(Lease.pilot_id == pilot_id, Lease.state == LeaseState.ACTIVE.value)
    )
    return rows.scalars().first()


async def matcher_inputs(s: AsyncSession, now: datetime) -> MatchInputs:
    """Pending requests, free pools, idle pilots, the nodes each user holds, unreachable sites."""
    requests = list(
        (
            await s.execute(
                select(Request).where(Request.state == RequestState.PENDING.value).order_by(Request.id)
            )
        )
        .scalars()
        .all()
    )
    demands = [
        Demand(
            id=r.id,
            user=r.user,
            nodes=r.nodes,
            cpus_per_node=r.cpus_per_node,
            memory_mb_per_node=r.memory_mb_per_node,
            node_type=r.node_type,
            walltime_s=r.walltime_s,
            sites=tuple(r.sites),
            priority=r.priority,
            deadline=r.deadline.timestamp() if r.deadline else None,
            submitted=r.created_at.timestamp(),
        )
        for r in requests
    ]
    sites = list((await s.execute(select(Site).options(selectinload(Site.resources)))).scalars().all())
    live = list((await s.execute(select(Pilot).where(Pilot.state.in_(LIVE_PILOT_STATES)))).scalars().all())
    leased = {
        pid
        for pid in (
            await s.execute(select(Lease.pilot_id).where(Lease.state == LeaseState.ACTIVE.value))
        ).scalars()
    }
    pools: list[Pool] = []
    unreachable: dict[str, str] = {}
    for site in sites:
        if not site.enabled:
            continue
        if site.state == SiteState.UNREACHABLE.value:
            unreachable[site.name] = site.last_error or "unreachable"
            continue
        if site.state != SiteState.OK.value:
            continue
        for res in site.resources:
            taken = sum(
                p.nodes
                for p in live
                if p.site == site.name
                and p.partition == res.partition
                and (site.kind != "slurm" or p.started_at is None or p.started_at > res.scraped_at)
            )
            pools.append(
                Pool(
                    site=site.name,
                    partition=res.partition,
                    node_type=res.node_type,
                    nodes_free=max(0, res.nodes_free - taken),
                    cpus_per_node=res.cpus_per_node,
                    memory_mb_per_node=res.memory_mb_per_node,
                    max_walltime_s=res.max_walltime_s,
                )
            )
    idle = [
        IdlePilot(
            id=p.id,
            site=p.site,
            partition=p.partition,
            node_type=p.node_type,
            nodes=p.nodes,
            cpus_per_node=p.cpus_per_node,
            memory_mb_per_node=p.memory_mb_per_node,
            remaining_s=remaining_s(p, now) or 0.0,
        )
        for p in live
        if p.id not in leased and p.state in (PilotState.SUBMITTED.value, PilotState.RUNNING.value)
    ]
    usage: dict[str, int] = defaultdict(int)
    rows = await s.execute(
        select(Request.user, Pilot.nodes)
        .join(Lease, Lease.request_id == Request.id)
        .join(Pilot, Pilot.id == Lease.pilot_id)
        .where(Lease.state == LeaseState.ACTIVE.value)
    )
    for user, nodes in rows.all():
        usage[user] += nodes
    return MatchInputs(requests, demands, pools, idle, dict(usage), unreachable)


async def apply_decisions(
    s: AsyncSession, requests: Sequence[Request], decisions: Iterable[Decision]
) -> list[Pilot]:
    """Write the matcher's decisions; the pilots planned (to be submitted after the commit)."""
    by_id = {r.id: r for r in requests}
    planned: list[Pilot] = []
    for d in decisions:
        req = by_id[d.request_id]
        if d.verdict is Verdict.WAIT:
            if req.reason != d.explanation:
                req.reason = d.explanation
                trail.record(
                    s, trail.SYSTEM, "request.waits", "request", req.id, d.explanation, request_id=req.id
                )
            continue
        if d.verdict is Verdict.REJECT:
            finish(s, req, RequestState.FAILED, d.explanation)
            continue
        req.attempts += 1
        req.reason = d.explanation
        req.state = RequestState.LEASED.value
        if d.verdict is Verdict.REUSE:
            pilot_ids = list(d.pilot_ids)
            for pid in pilot_ids:
                pilot = await s.get(Pilot, pid)
                assert pilot is not None
                pilot.idle_since = None
        else:
            [source] = [r for r in requests if r.id == d.request_id]
            pilot = Pilot(
                id=new_pilot_id(req.id),
                site=d.site,
                partition=d.partition,
                node_type=source.node_type,
                nodes=d.nodes,
                cpus_per_node=source.cpus_per_node,
                memory_mb_per_node=source.memory_mb_per_node,
                walltime_s=d.pilot_walltime_s,
                state=PilotState.PLANNED.value,
            )
            s.add(pilot)
            planned.append(pilot)
            pilot_ids = [pilot.id]
            trail.record(
                s,
                trail.SYSTEM,
                "pilot.planned",
                "pilot",
                pilot.id,
                f"pilot {pilot.id}: {d.nodes} {source.node_type} node(s) for {d.pilot_walltime_s} s at "
                f"{d.site}" + (f"/{d.partition}" if d.partition else "") + f" for request {req.id}",
                request_id=req.id,
                data={
                    "site": d.site,
                    "partition": d.partition,
                    "nodes": d.nodes,
                    "walltime_s": d.pilot_walltime_s,
                },
            )
        await s.flush()
        for pid in pilot_ids:
            s.add(Lease(request_id=req.id, pilot_id=pid))
        trail.record(
            s,
            trail.SYSTEM,
            "request.leased",
            "request",
            req.id,
            d.explanation,
            request_id=req.id,
            data={"verdict": d.verdict.value, "pilots": pilot_ids, "site": d.site},
        )
    return planned


async def release_leases(
    s: AsyncSession, req: Request, reason: str, now: datetime | None = None
) -> list[str]:
    """Release the request's active leases; their pilots become idle from ``now``."""
    when = now or utcnow()
    released = []
    for lease in await active_leases(s, req.id):
        lease.state = LeaseState.RELEASED.value
        lease.released_at = when
        lease.release_reason = reason
        pilot = lease.pilot
        left = remaining_s(pilot, when)
        if pilot.state not in FINAL_PILOT_STATES:
            pilot.idle_since = when
        released.append(pilot.id)
        trail.record(
            s,
            trail.SYSTEM,
            "lease.released",
            "pilot",
            pilot.id,
            f"pilot {pilot.id} released by request {req.id} ({reason})"
            + (
                f"; {left:.0f} s of walltime back in the pool"
                if left and pilot.state not in FINAL_PILOT_STATES
                else ""
            ),
            request_id=req.id,
            data={"lease": lease.id, "remaining_s": left},
        )
    return released


def finish(
    s: AsyncSession, req: Request, state: RequestState, reason: str, actor: str = trail.SYSTEM
) -> None:
    """Put a request in a final state (the caller has released its leases and workflow)."""
    req.state = state.value
    req.outcome = state.value
    req.reason = reason
    req.finished_at = utcnow()
    trail.record(s, actor, f"request.{state.value}", "request", req.id, reason, request_id=req.id)


def pilot_expiry(pilot: Pilot, started: datetime) -> datetime:
    return started + timedelta(seconds=pilot.walltime_s)
