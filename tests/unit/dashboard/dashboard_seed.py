"""The central-service state the dashboard tests seed: two users' requests (one finished), a site,
pilots and leases, status samples, events and twin decisions (one of them malformed)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from jiriaf.dashboard.twinstate import TWIN_DECISION
from jiriaf.jcs import auth, trail
from jiriaf.jcs.db import Database
from jiriaf.jcs.models import (
    ApiToken,
    Lease,
    LeaseState,
    Pilot,
    PilotState,
    Request,
    RequestState,
    Resource,
    Site,
    WorkflowStatus,
    utcnow,
)


def decision(step: int, probabilities: list[float], recommended: int, applied: bool) -> dict[str, Any]:
    return {
        "schema": 1,
        "step": step,
        "state_labels": ["low", "high"],
        "probabilities": probabilities,
        "lq": 2.0,
        "threads": 16,
        "recommended_threads": recommended,
        "applied": applied,
        "detail": "",
    }


class World:
    """What the tests seed: two users' requests, a site, pilots, status samples and events."""

    alice: str
    bob: str
    admin: str
    revoked: str
    alice_req: int
    alice_done: int
    bob_req: int


async def seed(db: Database) -> World:
    w = World()
    now = utcnow()
    async with db.session() as s:
        w.alice = await auth.create_token(s, "alice")
        w.bob = await auth.create_token(s, "bob")
        w.admin = await auth.create_token(s, "root", admin=True)
        w.revoked = await auth.create_token(s, "alice", label="old")
    async with db.session() as s:
        old = (await s.execute(select(ApiToken).where(ApiToken.label == "old"))).scalar_one()
        await auth.revoke_token(s, old.id)

    async with db.session() as s:
        site = Site(name="perlmutter", kind="slurm", state="ok", last_scrape_at=now)
        site.resources = [
            Resource(
                partition="regular",
                node_type="cpu",
                nodes_total=100,
                nodes_free=0,
                cpus_per_node=128,
                memory_mb_per_node=512000,
                max_walltime_s=None,
                queued_jobs=12,
                scraped_at=now,
            ),
            Resource(
                partition="debug",
                node_type="cpu",
                nodes_total=10,
                nodes_free=4,
                cpus_per_node=64,
                memory_mb_per_node=256000,
                max_walltime_s=1800,
                scraped_at=now,
            ),
        ]
        s.add_all([site, Site(name="empty", kind="static")])

        common: dict[str, Any] = dict(
            nodes=1, cpus_per_node=1, memory_mb_per_node=100, node_type="cpu", walltime_s=600
        )
        alice_req = Request(
            user="alice",
            name="stream",
            namespace="alice-ns",
            state=RequestState.RUNNING.value,
            reason="running on pilot p-1",
            applied_objects=[{"kind": "Deployment", "namespace": "alice-ns", "name": "receiver"}],
            **common,
        )
        alice_done = Request(
            user="alice", name="old-job", state=RequestState.COMPLETED.value, outcome="completed", **common
        )
        bob_req = Request(user="bob", name="bobs-secret-work", state=RequestState.PENDING.value, **common)
        s.add_all([alice_done, alice_req, bob_req])
        await s.flush()
        w.alice_req, w.alice_done, w.bob_req = alice_req.id, alice_done.id, bob_req.id

        p1 = Pilot(
            id="p-1",
            site="perlmutter",
            partition="debug",
            node_type="cpu",
            nodes=1,
            cpus_per_node=64,
            memory_mb_per_node=256000,
            walltime_s=3600,
            state=PilotState.RUNNING.value,
            node_names=["jrm-a"],
            expires_at=now + timedelta(hours=1),
        )
        p2 = Pilot(
            id="p-2",
            site="perlmutter",
            node_type="cpu",
            nodes=1,
            cpus_per_node=64,
            memory_mb_per_node=256000,
            walltime_s=3600,
            state=PilotState.SUBMITTED.value,
        )
        p_old = Pilot(
            id="p-old",
            site="perlmutter",
            node_type="cpu",
            nodes=1,
            cpus_per_node=64,
            memory_mb_per_node=256000,
            walltime_s=3600,
            state=PilotState.STOPPED.value,
        )
        s.add_all([p1, p2, p_old])
        await s.flush()
        s.add_all(
            [
                Lease(request_id=alice_req.id, pilot_id="p-1"),
                Lease(request_id=bob_req.id, pilot_id="p-2"),
                Lease(request_id=alice_done.id, pilot_id="p-1", state=LeaseState.RELEASED.value),
            ]
        )
        for i in range(70):
            s.add(
                WorkflowStatus(
                    request_id=alice_req.id,
                    at=now - timedelta(seconds=10 * (70 - i)),
                    phase="Running",
                    pods_total=2,
                    pods_running=1 + i % 2,
                    metrics={"queue": float(i)},
                )
            )
        s.add(WorkflowStatus(request_id=bob_req.id, at=now, phase="Pending", pods_total=1, pods_pending=1))

        trail.record(
            s, "alice", "request.submitted", "request", alice_req.id, "filed", request_id=alice_req.id
        )
        trail.record(s, "bob", "request.submitted", "request", bob_req.id, "bob filed", request_id=bob_req.id)
        trail.record(s, "jcs", "site.scraped", "site", "perlmutter", "scraped")
        trail.record(
            s,
            "jiriaf-twin",
            TWIN_DECISION,
            "workflow",
            alice_req.id,
            "step 1",
            request_id=alice_req.id,
            data=decision(1, [0.9, 0.1], 16, False),
        )
        trail.record(
            s,
            "jiriaf-twin",
            TWIN_DECISION,
            "workflow",
            alice_req.id,
            "step 2",
            request_id=alice_req.id,
            data=decision(2, [0.2, 0.8], 32, True),
        )
        trail.record(
            s,
            "jiriaf-twin",
            TWIN_DECISION,
            "workflow",
            alice_req.id,
            "garbage",
            request_id=alice_req.id,
            data={"schema": 1, "probabilities": "nope"},
        )
        trail.record(
            s,
            "jiriaf-twin",
            TWIN_DECISION,
            "workflow",
            bob_req.id,
            "bob step",
            request_id=bob_req.id,
            data=decision(5, [0.5, 0.5], 16, False),
        )
        await s.commit()
    return w
