"""System-tier fixtures: a real single-host SLURM, a real sshd, and pilots that are cleaned up."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jiriaf.devcluster.slurm import DEBIAN_PACKAGES as SLURM_PACKAGES
from jiriaf.devcluster.slurm import LocalSlurm, find_daemon, missing_programs
from jiriaf.devcluster.sshd import LocalSshd
from support import eventually

TOLERATION = {"key": "virtual-kubelet.io/provider", "value": "mock", "effect": "NoSchedule"}


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """munged + slurmctld + slurmd from Debian on 127.0.0.1, with ``SLURM_CONF`` set for the session."""
    missing = missing_programs()
    if missing:
        pytest.skip(
            f"SLURM is not installed (missing {', '.join(missing)}); install {' '.join(SLURM_PACKAGES)}"
        )
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"), progress=lambda m: print(f"[slurm] {m}"))
    try:
        slurm.up()
    except BaseException:
        print(f"[slurm] start-up failed; logs in {slurm.log_dir}")
        slurm.down()
        raise
    print(f"[slurm] logs in {slurm.log_dir}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(slurm.conf_path))
        yield slurm
    slurm.down()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    """OpenSSH's sshd on 127.0.0.1 with a throw-away host key and user key."""
    if find_daemon("sshd") is None:
        pytest.skip("sshd is not installed; install openssh-server")
    server = LocalSshd(tmp_path_factory.mktemp("sshd")).start()
    print(f"[sshd] 127.0.0.1:{server.port}, log {server.log}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pilot_cli() -> None:
    """The pilot job runs ``python -m jiriaf.cli pilot task``: the CLI must mount the pilot commands."""
    from jiriaf.cli import app
    from jiriaf.pilots.commands import app as pilot_app

    if not any(group.typer_instance is pilot_app for group in app.registered_groups):
        pytest.fail("jiriaf.cli does not mount jiriaf.pilots.commands.app as 'pilot'")


class Pilots:
    """Sites file, registry and launcher for one test; every pilot it started is cancelled at the end."""

    def __init__(self, directory: Path, kubeconfig: Path) -> None:
        from jiriaf.pilots.registry import PilotRegistry

        self.directory = directory
        self.kubeconfig = kubeconfig
        self.sites_file = directory / "sites.yaml"
        self.registry = PilotRegistry(directory / "pilots")
        self._launcher: Any = None

    def write_sites(self, sites: dict[str, Any]) -> Path:
        self.sites_file.write_text(yaml.safe_dump({"sites": sites}, sort_keys=False))
        self._launcher = None
        return self.sites_file

    @property
    def launcher(self) -> Any:
        from jiriaf.pilots.launcher import PilotLauncher
        from jiriaf.pilots.sites import load_sites

        if self._launcher is None:
            self._launcher = PilotLauncher(
                load_sites(self.sites_file), registry=self.registry, kubeconfig=self.kubeconfig
            )
        return self._launcher

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``jiriaf pilot <args>`` with this test's sites file, registry and kubeconfig."""
        import os

        common = ["--sites", str(self.sites_file), "--registry", str(self.registry.root)]
        common += ["--kubeconfig", str(self.kubeconfig)]
        return subprocess.run(
            [sys.executable, "-m", "jiriaf.cli", "pilot", *args, *common],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def task_facts(self, pilot_id: str) -> dict[str, dict[str, Any]]:
        """The facts each task wrote (``tasks/<node>.json``), by node name."""
        import json

        out = {}
        for path in sorted((self.registry.directory(pilot_id) / "tasks").glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(path.read_text())
                out[data["node"]] = data
        return out

    def logs(self, pilot_id: str) -> str:
        d = self.registry.directory(pilot_id)
        parts = []
        for path in sorted(d.glob("job-*.log")) + sorted((d / "tasks").glob("*.log")):
            parts.append(f"---- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ the pilots' nodes and pods
    def wait_ready(self, client: Any, names: list[str], timeout: float = 120) -> None:
        """Every node in ``names`` reports Ready (the pilot's logs are shown if not)."""
        from lightkube.resources.core_v1 import Node

        def ready() -> bool:
            for name in names:
                node = client.get(Node, name)
                if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                    return False
            return True

        try:
            eventually(ready, timeout=timeout, what=f"nodes {names} Ready")
        except AssertionError:
            for record in self.registry.all():
                print(self.logs(record.id))
            raise

    def run_pod(self, client: Any, ns: str, node: str, name: str, script: str) -> Any:
        """A pod pinned to ``node`` running ``sh -c script`` once; returns it once it Succeeded."""
        from lightkube.codecs import from_dict
        from lightkube.resources.core_v1 import Pod

        client.create(
            from_dict(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "tolerations": [TOLERATION],
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}],
                    },
                }
            )
        )
        return eventually(
            lambda: (p := client.get(Pod, name, namespace=ns)).status.phase == "Succeeded" and p,
            timeout=120,
            what=f"pod {name} Succeeded on {node}",
        )

    def cleanup(self) -> None:
        for record in self.registry.all():
            if not record.final:
                with contextlib.suppress(Exception):
                    self.launcher.cancel(record.id, drain_timeout=60)
            print(f"[pilot {record.id}] {record.state}; files in {self.registry.directory(record.id)}")


@pytest.fixture()
def pilots(tmp_path: Path, kubeconfig: Path, pilot_cli: None) -> Iterator[Pilots]:
    p = Pilots(tmp_path, kubeconfig)
    yield p
    p.cleanup()
