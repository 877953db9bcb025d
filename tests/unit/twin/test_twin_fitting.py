"""Fitting from recorded data, the lag comparison and the policies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from jiriaf.errors import UserError
from jiriaf.twin import reference
from jiriaf.twin.fitting import (
    FitReport,
    Recording,
    fit_recording,
    generate_training_runs,
    read_recording,
    write_recording,
)
from jiriaf.twin.model import TwinModel, load_model, save_model
from jiriaf.twin.policy import PlannerReward, ThresholdPolicy, ValueIterationPolicy, value_iteration
from jiriaf.twin.reproduction import run_paper_scenario
from jiriaf.twin.scenario import Trajectory, ideal_threads, lag_events, tracking_error

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fitted() -> FitReport:
    rec, _ = generate_training_runs(runs=12, steps=100, seed=7)
    return fit_recording(rec, max_iter=40)


def lags(traj: Trajectory) -> dict[str, list[int | None]]:
    events = lag_events(ideal_threads(traj.true_state), traj.threads)
    return {k: [e.lag for e in events if e.kind == k] for k in ("rise", "fall")}


def test_em_fit_moves_observation_means_to_the_observed_table(fitted: FitReport) -> None:
    m = fitted.model
    assert m.log_space and fitted.method == "em"
    assert fitted.log_likelihood[-1] > fitted.log_likelihood[0]
    # the learned means are the observed Lq of Tables 8/9, not the theoretical ones the EM started from
    for c, threads in enumerate(m.controls):
        learned = [m.typical_lq(c, s) for s in range(5)]
        assert learned == pytest.approx(list(reference.OBSERVED_LQ[threads]), rel=0.06)
    assert np.all(m.obs_sigma < 0.1)  # about the 5% recording noise
    assert np.all(np.diag(m.transition[0]) > 0.7)


def scenario_model(model: TwinModel) -> TwinModel:
    return replace(model, prior=reference.reference_model().prior.copy())


def test_fitted_twin_tracks_falls_faster_and_rises_as_fast(fitted: FitReport) -> None:
    ref_model = reference.reference_model()
    model = scenario_model(fitted.model)
    ref = run_paper_scenario(ref_model, ThresholdPolicy(ref_model), 80)
    fit = run_paper_scenario(model, ThresholdPolicy(model), 80)
    ref_lags, fit_lags = lags(ref), lags(fit)
    assert ref_lags == {"rise": [2, 2], "fall": [9, 9]}
    for f, r in zip(fit_lags["rise"], ref_lags["rise"], strict=True):
        assert f is not None and r is not None and f <= r
    assert all(f is not None and 0 <= f <= 3 for f in fit_lags["fall"])
    assert np.mean(tracking_error(fit)[22:42]) < 0.5 * np.mean(tracking_error(ref)[22:42])


def test_planner_policy_on_the_fitted_twin_switches_back(fitted: FitReport) -> None:
    model = scenario_model(fitted.model)
    traj = run_paper_scenario(model, ValueIterationPolicy(model), 80)
    got = lags(traj)
    assert all(lag is not None and lag <= 4 for lag in got["fall"])
    assert all(lag is not None and lag <= 3 for lag in got["rise"])


def test_value_iteration_satisfies_bellman_equation() -> None:
    model = reference.reference_model()
    r = PlannerReward().table(model)
    v, qv = value_iteration(model, r, gamma=0.8)
    for c in range(2):
        assert qv[:, c] == pytest.approx(r[:, c] + 0.8 * model.transition[c] @ v)
    assert v == pytest.approx(qv.max(axis=1))


def test_planner_with_default_cost_switches_between_states_1_and_2() -> None:
    model = reference.reference_model()
    pol = ValueIterationPolicy(model)
    assert pol.state_controls().tolist() == [0, 0, 1, 1, 1]
    # a belief split between states 0 and 4 is judged by expected cost, unlike the threshold rule
    b = np.array([0.7, 0.0, 0.0, 0.0, 0.3])
    assert ThresholdPolicy(model).choose(b) == 0
    assert model.controls[pol.choose(b)] == 32


def test_threshold_ties_go_to_32_threads() -> None:
    model = reference.reference_model()
    pol = ThresholdPolicy(model)
    assert model.controls[pol.choose(np.array([0.25, 0.25, 0.5, 0.0, 0.0]))] == 32
    assert model.controls[pol.choose(np.array([0.3, 0.2, 0.49, 0.01, 0.0]))] == 32
    assert model.controls[pol.choose(np.array([0.3, 0.21, 0.49, 0.0, 0.0]))] == 16


def test_recording_round_trip_and_supervised_fit(tmp_path: Path) -> None:
    rec, truths = generate_training_runs(runs=3, steps=40, seed=1)
    path = tmp_path / "rec.csv"
    write_recording(path, rec, truths)
    back = read_recording(path)
    assert len(back.sequences) == 3 and back.steps == 120
    assert back.states is not None
    assert back.sequences[1].lq == pytest.approx(rec.sequences[1].lq, rel=1e-6)
    rep = fit_recording(back, supervised=True)
    assert rep.method == "supervised"
    save_model(rep.model, tmp_path / "m.json")
    again = load_model(tmp_path / "m.json")
    assert again.obs_mean == pytest.approx(rep.model.obs_mean)
    assert again.controls == (16, 32)


def test_recording_without_runs_or_states_is_one_sequence(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("lq,threads\n33,16c\n2.0,32c\n2.1,32\n")
    rec = read_recording(path)
    assert isinstance(rec, Recording) and len(rec.sequences) == 1 and rec.states is None
    assert rec.sequences[0].threads.tolist() == [16, 32, 32]
    with pytest.raises(UserError, match="state"):
        fit_recording(rec, supervised=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "missing column"),
        ("lq,threads\nx,16\n", "must be numbers"),
        ("lq,threads\n-1,16\n", ">= 0"),
        ("lq,threads\n", "no data rows"),
    ],
)
def test_bad_recordings_are_user_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_recording(path)


def test_missing_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_recording(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a valid twin model"):
        load_model(tmp_path / "bad.json")
