"""Filing a request: a validated :class:`~jiriaf.jcs.schemas.RequestSpec` becomes a pending row
and the first event of its trail."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from jiriaf.jcs import trail
from jiriaf.jcs.models import Request
from jiriaf.jcs.schemas import RequestSpec


async def file_request(s: AsyncSession, user: str, spec: RequestSpec) -> Request:
    """Add the request to ``s`` and commit it."""
    row = Request(
        user=user,
        name=spec.name,
        namespace=spec.namespace,
        nodes=spec.nodes,
        cpus_per_node=spec.cpus_per_node,
        memory_mb_per_node=spec.memory_mb_per_node,
        node_type=spec.node_type,
        sites=list(spec.sites),
        walltime_s=spec.walltime,
        deadline=spec.deadline,
        priority=spec.priority,
        workflow=spec.workflow.model_dump(mode="json", exclude_none=True),
        actions=[a.model_dump(mode="json", exclude_none=True) for a in spec.actions],
        metrics=dict(spec.metrics),
        activity_query=spec.activity_query,
        inactivity_timeout_s=spec.inactivity_timeout,
        idle_cpu_cores=spec.idle_cpu_cores,
        reason="waiting for the matcher",
    )
    s.add(row)
    await s.flush()
    trail.record(
        s,
        user,
        "request.submitted",
        "request",
        row.id,
        f"request {row.id} ({spec.name}): {spec.nodes} {spec.node_type} node(s) x "
        f"{spec.cpus_per_node} cpus, {spec.memory_mb_per_node} MB, for {spec.walltime} s",
        request_id=row.id,
    )
    await s.commit()
    return row
