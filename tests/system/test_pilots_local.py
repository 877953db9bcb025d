"""The same pilot path without SLURM: PSI/J's local executor (what the demo uses), with JRMs that
hold only the least-privilege identity of ``deploy/rbac/jrm.yaml``."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from lightkube.resources.core_v1 import Node, Secret

from jiriaf.devcluster.build import kubectl
from jiriaf.pilots.launcher import PilotRequest
from support import eventually

pytestmark = pytest.mark.system

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac" / "jrm.yaml"


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture()
def jrm_kubeconfig(kubeconfig: Path, client: Any, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig with the jiriaf-jrm ServiceAccount's token (deploy/rbac/jrm.yaml applied)."""
    applied = _kubectl(kubeconfig, "apply", "-f", str(RBAC))
    assert applied.returncode == 0, applied.stderr
    secret = eventually(
        lambda: (
            (s := client.get(Secret, "jiriaf-jrm-token", namespace="jiriaf")).data
            and s.data.get("token")
            and s
        ),
        timeout=60,
        what="the jiriaf-jrm token",
    )
    admin = yaml.safe_load(kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "jiriaf", "cluster": cluster}],
        "users": [{"name": "jrm", "user": {"token": base64.b64decode(secret.data["token"]).decode()}}],
        "contexts": [{"name": "jrm", "context": {"cluster": "jiriaf", "user": "jrm"}}],
        "current-context": "jrm",
    }
    path = tmp_path / "jrm.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    denied = _kubectl(path, "auth", "can-i", "create", "deployments")
    assert denied.stdout.strip() == "no"  # least privilege: nothing beyond what a JRM needs
    yield path
    _kubectl(kubeconfig, "delete", "--ignore-not-found", "-f", str(RBAC))


def test_local_executor_runs_the_pilot_path_without_slurm(
    pilots: Any, client: Any, ns: str, kubeconfig: Path, jrm_kubeconfig: Path
) -> None:
    pilots.write_sites(
        {
            "here": {
                "kind": "local",
                "control_plane": {"kubeconfig": str(jrm_kubeconfig), "node_ip": "127.0.0.1"},
                "walltime_margin": 30,
            }
        }
    )
    pilot_id = f"l{uuid.uuid4().hex[:6]}"
    record = pilots.launcher.submit(PilotRequest(site="here", nodes=2, walltime=1800, pilot_id=pilot_id))
    assert record.executor == "local" and record.native_id is not None
    names = [f"here-{pilot_id}-0", f"here-{pilot_id}-1"]
    pilots.wait_ready(client, names)
    assert pilots.launcher.status(pilot_id).state == "active"
    for name in names:
        assert client.get(Node, name).metadata.labels["jiriaf.pilot"] == pilot_id
    facts = pilots.task_facts(pilot_id)
    assert {f["kubeconfig"] for f in facts.values()} == {str(jrm_kubeconfig)}

    pilots.run_pod(client, ns, names[1], "hi", "echo hi-from-local-pilot")
    logs = _kubectl(kubeconfig, "-n", ns, "logs", "hi")
    assert logs.stdout.strip() == "hi-from-local-pilot", logs.stderr

    record = pilots.launcher.cancel(pilot_id, drain_timeout=90)
    assert record.state == "canceled" and record.stop_reason == "PilotCancelled"
    assert record.exit_code == 0, pilots.logs(pilot_id)  # the JRMs drained; nothing was killed
    for name in names:
        with pytest.raises(Exception, match="not found"):
            client.get(Node, name)
    for f in facts.values():
        for pid in (f["jrm_pid"], f["task_pid"]):
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
