"""The JCS command line: ``jcs token create`` and ``jcs serve`` as real processes (the database is
migrated on start), and the ``request`` and ``site`` commands against the served API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml
from typer.testing import CliRunner

from jiriaf.devcluster.cluster import free_port
from jiriaf.errors import UserError
from jiriaf.jcs.commands import request_app, site_app
from support import eventually

pytestmark = pytest.mark.integration


def jcs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jiriaf.jcs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


class Served:
    def __init__(self, url: str, db: str, log: Path, tokens: dict[str, str]) -> None:
        self.url = url
        self.db = db
        self.log = log
        self.tokens = tokens

    def run(self, app: object, *args: str, who: str = "alice") -> tuple[int, str, BaseException | None]:
        result = CliRunner().invoke(app, [*args, "--url", self.url, "--token", self.tokens[who]])  # type: ignore[arg-type]
        return result.exit_code, result.output, result.exception


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    db = f"sqlite:///{tmp_path / 'jcs.sqlite'}"
    tokens = {}
    for user, admin in (("alice", False), ("root", True)):
        res = jcs("token", "create", "--user", user, *(["--admin"] if admin else []), "--db", db)
        assert res.returncode == 0, res.stderr
        tokens[user] = res.stdout.strip()
        assert "shown once" in res.stderr
    facilities = tmp_path / "facilities.yaml"
    facilities.write_text(
        yaml.safe_dump(
            {
                "sites": {
                    "here": {
                        "kind": "static",
                        "nodes": 2,
                        "cpus_per_node": 8,
                        "memory_mb_per_node": 16000,
                        "max_walltime": "4h",
                    }
                }
            }
        )
    )
    port = free_port()
    log = tmp_path / "jcs.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jiriaf.jcs",
                "serve",
                "--db",
                db,
                "--port",
                str(port),
                "--no-reconcile",
                "--facilities",
                str(facilities),
                "--scrape-interval",
                "3600",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JIRIAF_JCS_TOKEN": ""},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(
            lambda: httpx2.get(f"{url}/healthz", timeout=2).status_code == 200, timeout=60, what="JCS up"
        )
        yield Served(url, db, log, tokens)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for token in tokens.values():
        assert token not in log.read_text()


def test_tokens_are_printed_once_and_stored_hashed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'jcs.sqlite'}"
    res = jcs("token", "create", "--user", "alice", "--db", db, "--label", "laptop")
    token = res.stdout.strip()
    assert res.returncode == 0 and token.startswith("jcs_") and len(token) > 40
    assert token.encode() not in (tmp_path / "jcs.sqlite").read_bytes()
    listed = jcs("token", "list", "--db", db)
    assert "alice" in listed.stdout and "laptop" in listed.stdout and token not in listed.stdout
    bad = jcs("token", "create", "--user", "Alice Smith", "--db", db)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: user name 'Alice Smith'")
    assert jcs("token", "revoke", "1", "--db", db).stdout.strip() == "token 1 revoked"


def test_request_and_site_commands(served: Served, tmp_path: Path) -> None:
    code, out, _ = served.run(site_app, "scrape", "here", who="root")
    assert code == 0 and out.strip() == "site here: ok, 2 free node(s) in 1 partition(s)"
    code, out, exc = served.run(site_app, "scrape", "here", who="alice")
    assert isinstance(exc, UserError) and "only an admin may do this (HTTP 403)" in str(exc)
    code, out, _ = served.run(site_app, "list")
    assert code == 0 and "here" in out and "2/2" in out and "4 h" in out

    spec = tmp_path / "req.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "demo",
                "nodes": 1,
                "cpus_per_node": 4,
                "walltime": "1h",
                "workflow": {
                    "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]
                },
            }
        )
    )
    code, out, _ = served.run(request_app, "submit", str(spec))
    assert code == 0 and out.strip() == "request 1 (demo) filed: pending", out
    code, out, _ = served.run(request_app, "list", "--json")
    [row] = json.loads(out)
    assert (row["id"], row["user"], row["walltime_s"]) == (1, "alice", 3600)
    code, out, _ = served.run(request_app, "show", "1")
    assert code == 0 and "request 1" in out and "request.submitted" in out
    code, out, _ = served.run(request_app, "cancel", "1")
    assert out.strip() == "request 1: cancelled (cancelled by alice)"

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "demo", "walltime": "later", "workflow": {"manifests": []}}))
    code, out, exc = served.run(request_app, "submit", str(bad))
    assert isinstance(exc, UserError) and str(exc).startswith(f"{bad}: walltime: ")
    code, out, exc = served.run(request_app, "show", "99")
    assert isinstance(exc, UserError) and str(exc) == "no request 99 (HTTP 404)"
