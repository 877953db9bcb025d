"""The event trail: every step the central service or a user takes, appended to ``events``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from jiriaf.jcs.models import Event

SYSTEM = "jcs"


def record(
    session: AsyncSession,
    actor: str,
    action: str,
    subject_kind: str,
    subject_id: object,
    message: str = "",
    *,
    request_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Add an event to ``session`` (it is written with the session's next commit, atomically with the
    change it describes)."""
    ev = Event(
        actor=actor,
        action=action,
        subject_kind=subject_kind,
        subject_id=str(subject_id),
        request_id=request_id,
        message=message,
        data=data or {},
    )
    session.add(ev)
    return ev


def query(
    *,
    request_id: int | None = None,
    subject: tuple[str, str] | None = None,
    actor: str | None = None,
    since_id: int | None = None,
    limit: int = 500,
) -> Select[Event]:
    """Events, oldest first, filtered as asked."""
    stmt = select(Event)
    if request_id is not None:
        stmt = stmt.where(Event.request_id == request_id)
    if subject is not None:
        stmt = stmt.where(Event.subject_kind == subject[0], Event.subject_id == subject[1])
    if actor is not None:
        stmt = stmt.where(Event.actor == actor)
    if since_id is not None:
        stmt = stmt.where(Event.id > since_id)
    return stmt.order_by(Event.id).limit(limit)
