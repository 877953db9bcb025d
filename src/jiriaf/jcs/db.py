"""The central service's database: an async engine, sessions, and schema upgrades by Alembic.

SQLite in the user's data directory is the embedded default; PostgreSQL (asyncpg) given by URL is
the production backend. ``--db`` / ``JIRIAF_JCS_DB`` select it; plain ``sqlite:///`` and
``postgresql://`` URLs get their async drivers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from jiriaf.datadirs import data_directory
from jiriaf.errors import UserError

DB_ENV = "JIRIAF_JCS_DB"
MIGRATIONS = Path(__file__).parent / "migrations"


def data_dir() -> Path:
    """``$JIRIAF_DATA_DIR`` or ``$XDG_DATA_HOME/jiriaf`` (default ``~/.local/share/jiriaf``)."""
    return data_directory("JIRIAF_DATA_DIR")


def default_url() -> str:
    return f"sqlite+aiosqlite:///{data_dir() / 'jcs.sqlite'}"


def resolve_url(url: str | None = None) -> str:
    """The database URL to use: ``url``, else ``$JIRIAF_JCS_DB``, else SQLite in the data directory;
    with the async driver of its backend filled in."""
    text = url or os.environ.get(DB_ENV) or default_url()
    try:
        parsed = make_url(text)
    except ArgumentError:
        raise UserError(
            f"database URL {redact(text)!r} is not a URL (sqlite:///FILE or postgresql://...)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        if parsed.database in (None, "", ":memory:"):
            raise UserError("the central service needs a SQLite file, not an in-memory database")
    elif backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise UserError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://...")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """One engine and its session factory. ``await db.upgrade()`` brings the schema to head."""

    def __init__(self, url: str | None = None, echo: bool = False) -> None:
        self.url = resolve_url(url)
        self.sqlite = is_sqlite(self.url)
        if self.sqlite:
            path = Path(make_url(self.url).database or "")
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(self.url, echo=echo, pool_pre_ping=not self.sqlite)
        if self.sqlite:
            sa_event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def display_url(self) -> str:
        return redact(self.url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s:
            yield s

    async def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to ``revision`` (idempotent)."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(_run_upgrade, revision)
        except (OSError, OperationalError, DBAPIError) as exc:
            raise UserError(f"cannot open the database {self.display_url}: {_first_line(exc)}") from None

    async def instance_id(self) -> str:
        """This database's random instance id (made on first use, then kept)."""
        import secrets

        from sqlalchemy.exc import IntegrityError

        from jiriaf.jcs.models import ServiceMeta

        for _ in range(3):
            async with self.session() as s:
                row = await s.get(ServiceMeta, "instance")
                if row is not None:
                    return row.value
                s.add(ServiceMeta(key="instance", value=secrets.token_hex(4)))
                try:
                    await s.commit()
                except IntegrityError:  # another process made it first
                    continue
        raise UserError(f"cannot read the instance id of {self.display_url}")

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def close(self) -> None:
        await self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _run_upgrade(connection: Any, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def _current_revision(connection: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
