"""``jiriaf pilot``: bad input is a one-line UserError before anything is submitted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jiriaf.errors import UserError
from jiriaf.pilots.commands import app

pytestmark = pytest.mark.unit

SITES = """
sites:
  ci:
    executor: slurm
    control_plane: {kubeconfig: /nonexistent}
"""


def run(tmp_path: Path, *args: str) -> BaseException | None:
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES)
    result = CliRunner().invoke(app, [*args, "--sites", str(sites), "--registry", str(tmp_path / "reg")])
    return result.exception


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("submit", "--site", "nope"), "no site 'nope'"),
        (("submit", "--site", "ci", "--walltime", "soon"), "duration 'soon'"),
        (("submit", "--site", "ci", "--walltime", "30s"), "less than 30s"),
        (("submit", "--site", "ci", "--id", "Not_Valid"), "pilot id"),
        (("submit", "--site", "ci", "--label", "novalue"), "not key=value"),
        (("submit", "--site", "ci", "--idle-timeout", "x"), "duration 'x'"),
        (("status", "p404"), "no pilot 'p404'"),
        (("cancel", "p404"), "no pilot 'p404'"),
    ],
)
def test_bad_input_is_a_user_error(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    exc = run(tmp_path, *args)
    assert isinstance(exc, UserError), exc
    assert message in str(exc) and "\n" not in str(exc)
    assert not (tmp_path / "reg").exists() or not any((tmp_path / "reg").glob("*/record.json"))


def test_list_of_an_empty_registry(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["list", "--json", "--registry", str(tmp_path / "reg"), "--sites", str(tmp_path / "none")]
    )
    assert result.exit_code == 0 and result.stdout.strip() == "[]"


def test_task_outside_a_pilot_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIRIAF_PILOT_TASK", raising=False)
    result = CliRunner().invoke(app, ["task"])
    assert isinstance(result.exception, UserError)
    assert "runs inside a pilot job" in str(result.exception)
