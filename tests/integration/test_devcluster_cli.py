"""``jiriaf dev cluster up|env|status|down`` through the real CLI, on a cluster of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from jiriaf.devcluster.build import kubectl

pytestmark = pytest.mark.integration


def _jiriaf(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jiriaf.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_up_env_status_down_leaves_nothing_running(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    up = _jiriaf("dev", "cluster", "up", "--dir", str(directory))
    assert up.returncode == 0, up.stderr
    kubeconfig = up.stdout.strip().splitlines()[-1]
    assert Path(kubeconfig).is_file()
    try:
        ready = subprocess.run(
            [kubectl(), "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ready.stdout.strip() == "ok", ready.stderr
        env = _jiriaf("dev", "cluster", "env", "--dir", str(directory))
        assert env.stdout.strip() == f"export KUBECONFIG={kubeconfig}"
        pids = {
            c: p["pid"] for c, p in json.loads((directory / "state.json").read_text())["processes"].items()
        }
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "metrics-server",
        }
        again = _jiriaf("dev", "cluster", "up", "--dir", str(directory))  # harmless the second time
        assert again.returncode == 0 and "already running" in again.stderr
        pids_again = {
            c: p["pid"] for c, p in json.loads((directory / "state.json").read_text())["processes"].items()
        }
        assert pids_again == pids
        assert _jiriaf("dev", "cluster", "status", "--dir", str(directory)).returncode == 0
        # metrics-server's APIService is registered (kubectl top works once a kubelet serves metrics)
        api = subprocess.run(
            [
                kubectl(),
                "--kubeconfig",
                kubeconfig,
                "get",
                "apiservice",
                "v1beta1.metrics.k8s.io",
                "-o",
                "jsonpath={.spec.service.name}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert api.stdout == "metrics-server", api.stderr
    finally:
        down = _jiriaf("dev", "cluster", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    still = [
        pid
        for pid in pids.values()
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert still == []
    status = _jiriaf("dev", "cluster", "status", "--dir", str(directory))
    assert status.returncode == 1
