"""The CLI answers bad input with one line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jiriaf import __version__

pytestmark = pytest.mark.unit


def _jiriaf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jiriaf.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_version() -> None:
    res = _jiriaf("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"jiriaf {__version__}"


@pytest.mark.parametrize("group", ["jrm", "jcs", "pilot", "twin", "dev", "demo"])
def test_groups_have_help(group: str) -> None:
    res = _jiriaf(group, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


def test_unknown_subcommand_is_one_line_error() -> None:
    res = _jiriaf("frobnicate")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "No such command 'frobnicate'" in res.stderr


def test_broken_kubeconfig_path_is_one_line_error(tmp_path: Path) -> None:
    res = _jiriaf("dev", "check", "--kubeconfig", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing.yaml" in lines[0] and "does not exist" in lines[0]


def test_garbage_kubeconfig_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("just a string\n")
    res = _jiriaf("dev", "check", "--kubeconfig", str(bad))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0], res.stderr


def test_env_without_cluster_is_one_line_error(tmp_path: Path) -> None:
    res = _jiriaf("dev", "cluster", "env", "--dir", str(tmp_path / "none"))
    assert res.returncode == 2
    assert "jiriaf dev cluster up" in res.stderr and "Traceback" not in res.stderr


def test_jrm_on_a_busy_kubelet_port_is_one_line_error_before_registering(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]\n'
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "NODENAME": "busy-port",
            "KUBECONFIG": str(kubeconfig),
            "KUBELET_PORT": str(port),
            "VKUBELET_POD_IP": "127.0.0.1",
            "JIRIAF_WORKDIR": str(tmp_path / "work"),
        }
        res = subprocess.run(
            [sys.executable, "-m", "jiriaf.cli", "jrm", "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "KUBELET_PORT" in lines[0], res.stderr
    # the port is checked before the Node is registered: the (unreachable) apiserver was never tried
    assert "control plane" not in res.stderr
