"""The central service's tables (SQLAlchemy 2 declarative models).

``sites`` and ``resources`` are what the facility manager knows; ``requests`` are user workflow
requests (one request = one workflow); ``pilots`` are batch jobs that start JRMs and ``leases`` bind
a pilot's nodes to the request they serve; ``workflow_status`` holds the monitor's samples;
``events`` is the append-only trail of who did what, when and why; ``api_tokens`` holds only the
sha256 of each API token.

The schema is created and changed by the Alembic migrations in ``jiriaf/jcs/migrations`` only.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and read back as an aware UTC datetime, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class SiteState(enum.StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    UNREACHABLE = "unreachable"


class RequestState(enum.StrEnum):
    PENDING = "pending"  # waiting for a match
    LEASED = "leased"  # pilots chosen (launching or reused); waiting for their JRMs
    RUNNING = "running"  # workflow applied on the lease's nodes
    STOPPING = "stopping"  # tearing down; ``outcome`` says how it ends
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_REQUEST_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})


class PilotState(enum.StrEnum):
    PLANNED = "planned"  # recorded, not yet handed to the launcher
    SUBMITTED = "submitted"  # queued in the batch system
    RUNNING = "running"  # the batch job runs; JRMs register
    STOPPING = "stopping"  # cancel requested
    STOPPED = "stopped"
    FAILED = "failed"


FINAL_PILOT_STATES = frozenset({PilotState.STOPPED, PilotState.FAILED})


class LeaseState(enum.StrEnum):
    ACTIVE = "active"
    RELEASED = "released"


class ServiceMeta(Base):
    """Facts about this central service's database, e.g. its ``instance`` id, which labels what its
    workflows create so that two services (or a reset database) sharing a cluster never mix them up."""

    __tablename__ = "service_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # slurm | local | static
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default=SiteState.UNKNOWN.value)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_scrape_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    resources: Mapped[list[Resource]] = relationship(
        back_populates="site", cascade="all, delete-orphan", passive_deletes=True
    )


class Resource(Base):
    """What one partition (or host) of a site had free at ``scraped_at``."""

    __tablename__ = "resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    partition: Mapped[str] = mapped_column(String(64))
    node_type: Mapped[str] = mapped_column(String(64))
    nodes_total: Mapped[int] = mapped_column(Integer)
    nodes_free: Mapped[int] = mapped_column(Integer)
    cpus_per_node: Mapped[int] = mapped_column(Integer)
    memory_mb_per_node: Mapped[int] = mapped_column(Integer)
    max_walltime_s: Mapped[int | None] = mapped_column(Integer, default=None)  # None: no limit
    queued_jobs: Mapped[int] = mapped_column(Integer, default=0)
    scraped_at: Mapped[datetime] = mapped_column(default=utcnow)

    site: Mapped[Site] = relationship(back_populates="resources")


class Request(Base):
    """A user's workflow request and the state of its workflow."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    namespace: Mapped[str] = mapped_column(String(63), default="default")
    state: Mapped[str] = mapped_column(String(16), default=RequestState.PENDING.value, index=True)
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    nodes: Mapped[int] = mapped_column(Integer)
    cpus_per_node: Mapped[int] = mapped_column(Integer)
    memory_mb_per_node: Mapped[int] = mapped_column(Integer)
    node_type: Mapped[str] = mapped_column(String(64))
    sites: Mapped[list[Any]] = mapped_column(default=list)  # preference order; empty = any
    walltime_s: Mapped[int] = mapped_column(Integer)
    deadline: Mapped[datetime | None] = mapped_column(default=None)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    workflow: Mapped[dict[str, Any]] = mapped_column(default=dict)  # manifests or a Helm chart
    actions: Mapped[list[Any]] = mapped_column(default=list)  # workflow-specific actions
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> PromQL
    inactivity_timeout_s: Mapped[int | None] = mapped_column(Integer, default=None)
    idle_cpu_cores: Mapped[float] = mapped_column(Float, default=0.01)  # below this the workflow is idle
    activity_query: Mapped[str | None] = mapped_column(Text, default=None)  # PromQL > 0 means active
    reason: Mapped[str] = mapped_column(Text, default="")  # the last decision, explained
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # leases tried (a failed pilot retries)
    applied_objects: Mapped[list[Any]] = mapped_column(default=list)  # what the workflow created
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    last_active_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    leases: Mapped[list[Lease]] = relationship(back_populates="request")


class Pilot(Base):
    """A batch job that starts ``nodes`` JRMs at a site; identified by a deterministic id."""

    __tablename__ = "pilots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    partition: Mapped[str] = mapped_column(String(64), default="")
    node_type: Mapped[str] = mapped_column(String(64))
    nodes: Mapped[int] = mapped_column(Integer)
    cpus_per_node: Mapped[int] = mapped_column(Integer)
    memory_mb_per_node: Mapped[int] = mapped_column(Integer)
    walltime_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=PilotState.PLANNED.value, index=True)
    native_id: Mapped[str] = mapped_column(String(64), default="")
    node_names: Mapped[list[Any]] = mapped_column(default=list)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    idle_since: Mapped[datetime | None] = mapped_column(default=None)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)

    leases: Mapped[list[Lease]] = relationship(back_populates="pilot")


class Lease(Base):
    """A pilot's nodes serving one request; released when the workflow ends."""

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_pilot_state", "pilot_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    pilot_id: Mapped[str] = mapped_column(ForeignKey("pilots.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=LeaseState.ACTIVE.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(default=None)
    release_reason: Mapped[str] = mapped_column(Text, default="")

    request: Mapped[Request] = relationship(back_populates="leases")
    pilot: Mapped[Pilot] = relationship(back_populates="leases")


class WorkflowStatus(Base):
    """One monitor sample of a workflow: pods from Kubernetes, metrics from Prometheus."""

    __tablename__ = "workflow_status"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    phase: Mapped[str] = mapped_column(String(16))
    pods_total: Mapped[int] = mapped_column(Integer, default=0)
    pods_pending: Mapped[int] = mapped_column(Integer, default=0)
    pods_running: Mapped[int] = mapped_column(Integer, default=0)
    pods_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    pods_failed: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    cpu_cores: Mapped[float | None] = mapped_column(Float, default=None)
    memory_bytes: Mapped[float | None] = mapped_column(Float, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message: Mapped[str] = mapped_column(Text, default="")


class Event(Base):
    """Append-only: who did what to which subject, when, and why (the migrations add triggers that
    refuse UPDATE and DELETE on this table, on SQLite and PostgreSQL alike)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


@event.listens_for(Event, "before_update")
def _events_are_append_only(mapper: Any, connection: Any, target: Event) -> None:
    raise ValueError("events are append-only")


@event.listens_for(Event, "before_delete")
def _events_are_never_deleted(mapper: Any, connection: Any, target: Event) -> None:
    raise ValueError("events are append-only")
