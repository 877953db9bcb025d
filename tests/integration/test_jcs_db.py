"""The JCS database on SQLite and on a real PostgreSQL: migrations, append-only events, tokens,
timestamps, and the facility manager's scrapes of local, static and unreachable sites."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

import jcs_fixtures
from jiriaf.devcluster.cluster import free_port
from jiriaf.errors import UserError
from jiriaf.jcs import auth, trail
from jiriaf.jcs.db import Database, redact, resolve_url
from jiriaf.jcs.facilities import FacilityManager, SiteConfig
from jiriaf.jcs.models import ApiToken, Event, Request, Resource, Site

pytestmark = pytest.mark.integration

db = jcs_fixtures.db
postgres = jcs_fixtures.postgres


async def test_migrations_reach_head_and_are_idempotent(db: Database) -> None:
    assert await db.current_revision() == "0001"
    await db.upgrade()
    assert await db.current_revision() == "0001"
    async with db.session() as s:
        tables = {
            "api_tokens",
            "sites",
            "resources",
            "requests",
            "pilots",
            "leases",
            "workflow_status",
            "events",
            "service_meta",
        }
        for table in tables:
            await s.execute(text(f"SELECT count(*) FROM {table}"))


async def test_the_instance_id_is_made_once_and_kept(db: Database, tmp_path: Path) -> None:
    first = await db.instance_id()
    assert len(first) == 8 and await db.instance_id() == first
    other = Database(f"sqlite:///{tmp_path / 'other.sqlite'}")
    await other.upgrade()
    try:
        assert await other.instance_id() != first
    finally:
        await other.close()


async def test_events_are_append_only_in_the_database(db: Database) -> None:
    async with db.session() as s:
        ev = trail.record(s, "alice", "request.submitted", "request", 1, "filed", request_id=1)
        await s.commit()
        event_id = ev.id
    for statement in (
        f"UPDATE events SET message = 'changed' WHERE id = {event_id}",
        f"DELETE FROM events WHERE id = {event_id}",
    ):
        async with db.session() as s:
            with pytest.raises((DBAPIError, IntegrityError)) as info:
                await s.execute(text(statement))
                await s.commit()
            assert "append-only" in str(info.value)
    async with db.session() as s:
        row = await s.get(Event, event_id)
        assert row is not None and row.message == "filed"
        row.message = "changed through the ORM"
        with pytest.raises(ValueError, match="append-only"):
            await s.flush()


async def test_tokens_store_only_hashes(db: Database) -> None:
    async with db.session() as s:
        token = await auth.create_token(s, "alice", admin=False, label="laptop")
        admin_token = await auth.create_token(s, "root", admin=True)
    async with db.session() as s:
        rows = (await s.execute(select(ApiToken))).scalars().all()
        assert {r.token_hash for r in rows} == {auth.hash_token(token), auth.hash_token(admin_token)}
        assert all(token not in (r.token_hash + r.label) for r in rows)
        events = (await s.execute(select(Event).where(Event.action == "token.created"))).scalars().all()
        assert len(events) == 2 and all(
            token not in e.message and admin_token not in e.message for e in events
        )
        assert await auth.authenticate(s, token) == auth.Principal("alice", False)
        assert await auth.authenticate(s, admin_token) == auth.Principal("root", True)
        assert await auth.authenticate(s, token + "x") is None
        assert await auth.authenticate(s, "") is None
        await auth.revoke_token(s, rows[0].id)
        assert await auth.authenticate(s, token) is None


async def test_bad_user_names_are_refused(db: Database) -> None:
    async with db.session() as s:
        with pytest.raises(UserError, match="user name"):
            await auth.create_token(s, "Alice Smith")


async def test_timestamps_come_back_aware_utc(db: Database) -> None:
    deadline = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with db.session() as s:
        r = Request(
            user="alice",
            name="wf",
            nodes=1,
            cpus_per_node=1,
            memory_mb_per_node=1,
            node_type="cpu",
            walltime_s=60,
            deadline=deadline,
            workflow={"manifests": []},
        )
        s.add(r)
        await s.commit()
        rid = r.id
    async with db.session() as s:
        back = await s.get(Request, rid)
        assert back is not None and back.deadline == deadline and back.deadline.tzinfo is UTC
        assert back.created_at.tzinfo is UTC


async def test_scrape_local_and_static_sites(db: Database) -> None:
    fm = FacilityManager(db)
    await fm.load(
        [
            SiteConfig(name="here", kind="local", max_nodes=2, max_walltime="2h"),
            SiteConfig(
                name="alloc",
                kind="static",
                nodes=4,
                cpus_per_node=32,
                memory_mb_per_node=64000,
                node_type="gpu",
                partition="gpu",
            ),
        ]
    )
    here = await fm.scrape_site("here")
    assert here.state == "ok" and here.last_error == ""
    [res] = here.resources
    assert (res.nodes_total, res.nodes_free, res.max_walltime_s) == (2, 2, 7200)
    assert res.cpus_per_node == os.cpu_count()
    alloc = await fm.scrape_site("alloc")
    [res] = alloc.resources
    assert (res.node_type, res.partition, res.nodes_free, res.cpus_per_node) == ("gpu", "gpu", 4, 32)


async def test_unreachable_site_is_marked_with_its_error(db: Database) -> None:
    closed = free_port()  # nothing listens there: ssh is refused on 127.0.0.1
    fm = FacilityManager(db, timeout=30)
    await fm.load(
        [
            SiteConfig(
                name="far",
                kind="slurm",
                command_prefix=[
                    "ssh",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=5",
                    "-p",
                    str(closed),
                    "127.0.0.1",
                ],
            )
        ]
    )
    far = await fm.scrape_site("far")
    assert far.state == "unreachable"
    assert far.last_error.startswith("ssh failed:") and "refused" in far.last_error
    assert far.resources == []
    async with db.session() as s:
        [ev] = (await s.execute(select(Event).where(Event.action == "site.unreachable"))).scalars().all()
        assert ev.subject_id == "far" and "refused" in ev.message
    # a scrape that succeeds again clears the mark; the earlier resources of a site are replaced
    await fm.load([SiteConfig(name="far", kind="static", nodes=1, cpus_per_node=1, memory_mb_per_node=1)])
    again = await fm.scrape_site("far")
    assert again.state == "ok" and again.last_error == "" and len(again.resources) == 1
    async with db.session() as s:
        assert len((await s.execute(select(Resource))).scalars().all()) == 1
        assert (await s.execute(select(Site.state))).scalar_one() == "ok"


async def test_scrape_due_skips_recent_sites(db: Database) -> None:
    fm = FacilityManager(db, interval=3600)
    await fm.load([SiteConfig(name="a", kind="local"), SiteConfig(name="b", kind="local", enabled=False)])
    assert await fm.scrape_due() == ["a"]
    assert await fm.scrape_due() == []


def test_database_urls() -> None:
    assert resolve_url("sqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert resolve_url("postgresql://u:secret@h:5/db").startswith("postgresql+asyncpg://u:secret@")
    assert "secret" not in redact("postgresql://u:secret@h:5/db")
    with pytest.raises(UserError, match="unsupported database 'mysql'"):
        resolve_url("mysql://x/y")
    with pytest.raises(UserError, match="SQLite file"):
        resolve_url("sqlite://")


def test_default_database_is_in_the_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIRIAF_JCS_DB", raising=False)
    monkeypatch.setenv("JIRIAF_DATA_DIR", "/srv/jiriaf")
    assert resolve_url() == "sqlite+aiosqlite:////srv/jiriaf/jcs.sqlite"
    monkeypatch.setenv("JIRIAF_JCS_DB", "postgresql://db.example/jcs")
    assert resolve_url() == "postgresql+asyncpg://db.example/jcs"
