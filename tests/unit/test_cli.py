"""The CLI answers bad input with one line and a non-zero exit code, never a traceback."""

from __future__ import annotations

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
