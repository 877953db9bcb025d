"""Fixtures of the central-service tests, imported explicitly by their modules.

* :class:`PostgresServer`: a throw-away PostgreSQL cluster (Debian's ``initdb``/``pg_ctl``) in a
  temp dir on 127.0.0.1 and a free port, run as the ``postgres`` user when the tests run as root,
  stopped by pid;
* ``db``: a migrated :class:`~jiriaf.jcs.db.Database`, once on SQLite and once on PostgreSQL;
* :class:`JcsServer`: the REST API served by uvicorn in the test's event loop, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from jiriaf.devcluster.cluster import free_port
from jiriaf.jcs.db import Database


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


class PostgresServer:
    """initdb + pg_ctl on 127.0.0.1:<port>; ``url(db)`` gives an asyncpg URL with a password."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.user = "jcs"
        self.password = secrets.token_urlsafe(12)
        self.pid: int | None = None
        self.run_as: str | None = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def start(self) -> PostgresServer:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL server programs not found: apt-get install postgresql")
        self.directory.mkdir(parents=True, exist_ok=True)
        pwfile = self.directory / "pw"
        pwfile.write_text(self.password + "\n")
        sockets = self.directory / "sock"
        sockets.mkdir(exist_ok=True)
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for p in (self.directory, pwfile, sockets):
                os.chown(p, entry.pw_uid, entry.pw_gid)
            self.log.touch()
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._cmd(
                [
                    initdb,
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-h 127.0.0.1 -p {self.port} -k {sockets} -c fsync=off -c full_page_writes=off"
        subprocess.run(
            self._cmd(
                [pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, database="postgres"
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    def stop(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the session (in its own temp dir: the server user must reach it)."""
    directory = Path(tempfile.mkdtemp(prefix="jiriaf-pg-"))
    server = PostgresServer(directory)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')[-500:]}; log {server.log}"
        ) from None
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


async def make_db(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'jcs.sqlite'}"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres")
        url = pg.url(await pg.create_database())
    db = Database(url)
    await db.upgrade()
    return db


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database, once per backend."""
    database = await make_db(request.param, tmp_path, request)
    yield database
    await database.close()


class JcsServer:
    """The FastAPI app served by uvicorn inside the running event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JcsServer:
        import uvicorn

        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):
            if self._server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        raise RuntimeError("the JCS API did not start")

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


# ----------------------------------------------------------------------------- the reconcile loop


# the steps of a request that runs on a new pilot, completes, and whose pilot is then stopped idle
LIFECYCLE = (
    "request.submitted",
    "pilot.planned",
    "request.leased",
    "pilot.submitted",
    "pilot.running",
    "workflow.applied",
    "workflow.ending",
    "workflow.deleted",
    "lease.released",
    "request.completed",
    "pilot.stopping",
    "pilot.stopped",
)


def assert_in_order(steps: list[str], expected: tuple[str, ...] = LIFECYCLE) -> None:
    """Every expected action occurs in ``steps``, first occurrences in the expected order."""
    missing = [x for x in expected if x not in steps]
    assert not missing, f"missing {missing} in {steps}"
    positions = [steps.index(x) for x in expected]
    assert positions == sorted(positions), steps


def require_pilot_cli() -> None:
    """Pilot jobs run ``python -m jiriaf.cli pilot task``: the CLI must mount the pilot commands."""
    from jiriaf.cli import app
    from jiriaf.pilots.commands import app as pilot_app

    if not any(group.typer_instance is pilot_app for group in app.registered_groups):
        pytest.fail(
            "jiriaf.cli does not mount jiriaf.pilots.commands.app as 'pilot': pilot jobs cannot start"
        )


def local_launcher(kubeconfig: Path, root: Path, name: str = "local") -> Any:
    """The real pilot launcher with PSI/J's local executor: pilots are real processes on this host
    whose JRMs join the test cluster."""
    from jiriaf.pilots.launcher import PilotLauncher
    from jiriaf.pilots.registry import PilotRegistry
    from jiriaf.pilots.sites import local_site

    require_pilot_cli()
    site = local_site(
        str(kubeconfig),
        name=name,
        environment={
            "workdir": str(root / "jrm"),
            "env": {"JIRIAF_LEASE_RENEW_INTERVAL": "5", "JIRIAF_STATUS_INTERVAL": "5"},
        },
        walltime_margin=30,
    )
    return PilotLauncher(
        {name: site}, registry=PilotRegistry(root / "pilots"), kubeconfig=kubeconfig, poll_interval=1
    )


def stop_all_pilots(launcher: Any) -> None:
    """Cancel every pilot the launcher still runs (the JRMs drain and their processes end)."""
    for record in launcher.registry.all():
        if not record.final:
            with contextlib.suppress(Exception):
                launcher.cancel(record.id, 60)


async def drive(reconciler: Any, check: Any, timeout: float = 180.0, what: str = "condition") -> Any:
    """Run reconcile passes until ``await check()`` is truthy (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        await reconciler.step()
        last = await check()
        if last:
            return last
        await asyncio.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
