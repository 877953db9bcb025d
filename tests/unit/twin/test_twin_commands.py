"""``jiriaf twin reproduce|fit|live`` from the command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jiriaf.twin.commands import app

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("twin") / "out"
    res = runner.invoke(app, ["reproduce", "--out", str(out), "--training-runs", "10"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_reproduce_writes_figures_and_csv(reproduced: tuple[Path, str]) -> None:
    out, _ = reproduced
    for name in ("observed_lq.png", "control_history.png", "state_estimate.png", "comparison.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with (out / "trajectory.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    past = [r for r in rows if r["kind"] == "past"]
    assert len(past) == 80 and len(rows) == 80 + 11
    assert [int(r["threads"]) for r in past[4:8]] == [16, 16, 32, 32]
    assert float(past[6]["filtered_p2"]) == pytest.approx(0.9775994, abs=1e-6)
    assert (out / "paper_tables.csv").exists() and (out / "lag.csv").exists()
    model = json.loads((out / "fitted_model.json").read_text())
    assert model["format"] == "jiriaf-twin-model/1" and model["log_space"] is True


def test_reproduce_prints_tables_switches_and_lag_table(reproduced: tuple[Path, str]) -> None:
    _, text = reproduced
    assert "Table 8 (16 threads)" in text and "Table 9 (32 threads)" in text
    assert "248.00" in text and "165.006" in text
    assert "switches at step 6 -> 32c, step 37 -> 16c, step 46 -> 32c, step 77 -> 16c" in text
    assert "Switching lag" in text
    lines = {
        line.split()[0] + line.split()[1]: line
        for line in text.splitlines()
        if line.startswith(("rise", "fall"))
    }
    assert "step 37, lag 9" in lines["fall28"]
    assert "mean fall lag" in text


def test_fit_reads_the_recorded_training_data(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = reproduced
    model_path = tmp_path / "m.json"
    res = runner.invoke(app, ["fit", str(out / "training.csv"), "--out", str(model_path)])
    assert res.exit_code == 0, res.output
    assert "EM:" in res.output and "32c mean" in res.output
    assert json.loads(model_path.read_text())["controls"] == [16, 32]
    # the fitted model can be fed back into reproduce
    res2 = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "again"), "--model", str(model_path)])
    assert res2.exit_code == 0, res2.output
    assert (tmp_path / "again" / "comparison.png").exists()


def test_live_against_the_simulator_switches_up_and_back(tmp_path: Path) -> None:
    record = tmp_path / "live.csv"
    res = runner.invoke(
        app, ["live", "--steps", "32", "--sim-rates", "100x8,166x12,100x12", "--record", str(record)]
    )
    assert res.exit_code == 0, res.output
    assert "switches: after step 8 -> 32 threads, after step 20 -> 16 threads" in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("step")]
    assert len(lines) == 32
    assert "rate  166.0 Hz  threads  32" in lines[12]
    assert "rate  100.0 Hz  threads  16" in lines[25]
    with record.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 32 and {r["threads"] for r in rows} == {"16", "32"}
    # the model used is saved next to the record, so the record can be fitted from it
    model_path = tmp_path / "live.model.json"
    assert json.loads(model_path.read_text())["state_labels"][0] == "100Hz"
    fit = runner.invoke(
        app, ["fit", str(record), "--init", str(model_path), "--out", str(tmp_path / "f.json")]
    )
    assert fit.exit_code == 0, fit.output


def test_live_with_no_apply_only_recommends() -> None:
    res = runner.invoke(app, ["live", "--steps", "12", "--sim-rates", "166x12", "--no-apply"])
    assert res.exit_code == 0, res.output
    assert "-> 32 threads" in res.output
    assert "switches: none" in res.output


def test_live_waits_for_the_stabilization_window_before_applying() -> None:
    at_once = runner.invoke(app, ["live", "--steps", "6", "--sim-rates", "166x6"])
    assert at_once.exit_code == 0, at_once.output
    assert "switches: after step 0 -> 32 threads" in at_once.output
    waited = runner.invoke(app, ["live", "--steps", "6", "--sim-rates", "166x6", "--up-after", "3"])
    assert waited.exit_code == 0, waited.output
    assert "switches: after step 2 -> 32 threads" in waited.output


def _jiriaf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jiriaf.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    res = _jiriaf("twin", "fit", str(tmp_path / "missing.csv"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "does not exist" in res.stderr
    assert "Traceback" not in res.stderr
    res = _jiriaf(
        "twin", "live", "--source", "prometheus", "--prometheus-url", "http://127.0.0.1:9", "--steps", "1"
    )
    assert res.returncode == 2 and "cannot reach Prometheus" in res.stderr
    res = _jiriaf("twin", "live", "--source", "nowhere")
    assert res.returncode == 2 and "unknown source" in res.stderr
