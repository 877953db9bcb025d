"""Alembic environment: migrations run on the connection that ``jiriaf.jcs.db`` hands over."""

from __future__ import annotations

from alembic import context

from jiriaf.jcs.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the JCS migrations through jiriaf.jcs.db.Database.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
