"""Initial schema of the central service, with append-only events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
)
APPEND_ONLY_POSTGRESQL = (
    "CREATE FUNCTION jcs_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'events are append-only'; END $$",
    "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
    "FOR EACH ROW EXECUTE FUNCTION jcs_events_append_only()",
)


def _append_only_events() -> None:
    """Refuse UPDATE and DELETE on events in the database itself."""
    dialect = op.get_bind().dialect.name
    for statement in APPEND_ONLY_POSTGRESQL if dialect == "postgresql" else APPEND_ONLY_SQLITE:
        op.execute(statement)


def _drop_append_only_events() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS jcs_events_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user"), ["user"], unique=False)

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_request_id"), ["request_id"], unique=False)

    op.create_table(
        "pilots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.String(length=64), nullable=False),
        sa.Column("node_type", sa.String(length=64), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("cpus_per_node", sa.Integer(), nullable=False),
        sa.Column("memory_mb_per_node", sa.Integer(), nullable=False),
        sa.Column("walltime_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("native_id", sa.String(length=64), nullable=False),
        sa.Column("node_names", sa.JSON(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("idle_since", sa.DateTime(), nullable=True),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pilots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pilots_site"), ["site"], unique=False)
        batch_op.create_index(batch_op.f("ix_pilots_state"), ["state"], unique=False)

    op.create_table(
        "requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("cpus_per_node", sa.Integer(), nullable=False),
        sa.Column("memory_mb_per_node", sa.Integer(), nullable=False),
        sa.Column("node_type", sa.String(length=64), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("walltime_s", sa.Integer(), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("workflow", sa.JSON(), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("inactivity_timeout_s", sa.Integer(), nullable=True),
        sa.Column("idle_cpu_cores", sa.Float(), nullable=False),
        sa.Column("activity_query", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("applied_objects", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("last_active_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_requests_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_requests_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_requests_user"), ["user"], unique=False)

    op.create_table(
        "service_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("last_scrape_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("pilot_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["pilot_id"], ["pilots.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index("ix_leases_pilot_state", ["pilot_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_leases_request_id"), ["request_id"], unique=False)

    op.create_table(
        "resources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("partition", sa.String(length=64), nullable=False),
        sa.Column("node_type", sa.String(length=64), nullable=False),
        sa.Column("nodes_total", sa.Integer(), nullable=False),
        sa.Column("nodes_free", sa.Integer(), nullable=False),
        sa.Column("cpus_per_node", sa.Integer(), nullable=False),
        sa.Column("memory_mb_per_node", sa.Integer(), nullable=False),
        sa.Column("max_walltime_s", sa.Integer(), nullable=True),
        sa.Column("queued_jobs", sa.Integer(), nullable=False),
        sa.Column("scraped_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_resources_site_id"), ["site_id"], unique=False)

    op.create_table(
        "workflow_status",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("pods_total", sa.Integer(), nullable=False),
        sa.Column("pods_pending", sa.Integer(), nullable=False),
        sa.Column("pods_running", sa.Integer(), nullable=False),
        sa.Column("pods_succeeded", sa.Integer(), nullable=False),
        sa.Column("pods_failed", sa.Integer(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("cpu_cores", sa.Float(), nullable=True),
        sa.Column("memory_bytes", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workflow_status", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflow_status_request_id"), ["request_id"], unique=False)

    _append_only_events()


def downgrade() -> None:
    _drop_append_only_events()
    with op.batch_alter_table("workflow_status", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_status_request_id"))

    op.drop_table("workflow_status")
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resources_site_id"))

    op.drop_table("resources")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_leases_request_id"))
        batch_op.drop_index("ix_leases_pilot_state")

    op.drop_table("leases")
    op.drop_table("sites")
    op.drop_table("service_meta")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_user"))
        batch_op.drop_index(batch_op.f("ix_requests_state"))
        batch_op.drop_index(batch_op.f("ix_requests_name"))

    op.drop_table("requests")
    with op.batch_alter_table("pilots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pilots_state"))
        batch_op.drop_index(batch_op.f("ix_pilots_site"))

    op.drop_table("pilots")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_request_id"))
        batch_op.drop_index(batch_op.f("ix_events_at"))

    op.drop_table("events")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user"))

    op.drop_table("api_tokens")
