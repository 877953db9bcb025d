"""``jiriaf twin reproduce``: the paper's scenario with the reference twin, a fitted twin and the tables.

Outputs (all in one directory):

* ``paper_tables.csv`` - Tables 8 and 9 checked against the M/M/1 formula;
* ``trajectory.csv`` / ``trajectory_fitted.csv`` - per step truth, control, observation, filtered and
  smoothed marginals, followed by the 11-step prediction rows;
* ``observed_lq.png`` (Figure 8), ``control_history.png`` (Figure 9), ``state_estimate.png`` and
  ``comparison.png`` (reference vs fitted);
* ``training.csv`` and ``fitted_model.json`` - the recorded data the fitted twin was learned from and
  its tables, ``reference_model.json`` - the reference tables in the same format;
* ``lag.csv`` - the switching-lag table that is also printed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from jiriaf.twin import reference
from jiriaf.twin.fitting import FitReport, fit_recording, generate_training_runs, write_recording
from jiriaf.twin.model import FloatArray, TwinModel, save_model
from jiriaf.twin.paper_tables import compare_tables, format_tables, rows_as_records
from jiriaf.twin.policy import Policy, ThresholdPolicy, ValueIterationPolicy
from jiriaf.twin.scenario import Trajectory, ideal_threads, lag_events, run_closed_loop, tracking_error


@dataclass(frozen=True)
class Contender:
    label: str
    trajectory: Trajectory


@dataclass(frozen=True)
class ReproductionResult:
    tables_text: str
    lag_text: str
    reference: Trajectory
    fitted: Trajectory
    contenders: list[Contender]
    fit: FitReport | None
    files: list[Path]


def _phase_masks(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps after a rise (until the next fall) and after a fall (until the next rise)."""
    rising = np.zeros(steps, dtype=bool)
    direction = 1.0
    for t in range(steps):
        if t > 0:
            d = reference.schedule_delta(t - 1)
            if d != 0:
                direction = d
        rising[t] = direction > 0
    return rising, ~rising


def run_paper_scenario(model: TwinModel, policy: Policy, steps: int) -> Trajectory:
    x = reference.ground_truth(steps)
    return run_closed_loop(
        model, policy, x, reference.true_state(x), reference.measure, horizon=reference.HORIZON
    )


def format_lag_table(contenders: list[Contender]) -> tuple[str, list[dict[str, object]]]:
    """The printed lag table and its rows (for ``lag.csv``)."""
    base = contenders[0].trajectory
    ideal = ideal_threads(base.true_state, reference.THRESHOLD_STATE)
    per = [lag_events(ideal, c.trajectory.threads) for c in contenders]
    width = max(len(c.label) for c in contenders)
    width = max(width, 14)
    lines = [
        "Switching lag: steps from the first step whose true state (nearest level of x) calls for the",
        "other control (32 threads when state >= 2) to the first step the twin runs with it.",
        f"{'event':<6} {'true step':>9}  " + "  ".join(f"{c.label:>{width}}" for c in contenders),
    ]
    records: list[dict[str, object]] = []
    for i, ev in enumerate(per[0]):
        cells = []
        rec: dict[str, object] = {"event": ev.kind, "true_step": ev.true_step}
        for c, evs in zip(contenders, per, strict=True):
            e = evs[i]
            cell = "missed" if e.lag is None else f"step {e.twin_step}, lag {e.lag}"
            cells.append(f"{cell:>{width}}")
            rec[f"{c.label}_switch_step"] = e.twin_step
            rec[f"{c.label}_lag"] = e.lag
        records.append(rec)
        lines.append(f"{ev.kind:<6} {ev.true_step:>9}  " + "  ".join(cells))
    for kind in ("rise", "fall"):
        cells = []
        for evs in per:
            lags = [e.lag for e in evs if e.kind == kind]
            if any(lag is None for lag in lags):
                cells.append(f"{'missed some':>{width}}")
            else:
                vals = [lag for lag in lags if lag is not None]
                cells.append(f"{(np.mean(vals) if vals else float('nan')):>{width}.1f}")
        lines.append(f"{'mean ' + kind + ' lag':<17} " + "  ".join(cells))
    rising, falling = _phase_masks(base.steps)
    for name, mask in (("|E[k]-x| rising", rising), ("|E[k]-x| falling", falling)):
        cells = [f"{float(tracking_error(c.trajectory)[mask].mean()):>{width}.3f}" for c in contenders]
        lines.append(f"{name:<17} " + "  ".join(cells))
    truth_high = (base.true_state >= reference.THRESHOLD_STATE).astype(np.float64)
    for name, mask in (("P(k>=2) err rise", rising), ("P(k>=2) err fall", falling)):
        cells = []
        for c in contenders:
            p_high = c.trajectory.filtered[:, reference.THRESHOLD_STATE :].sum(axis=1)
            cells.append(f"{float(np.abs(p_high - truth_high)[mask].mean()):>{width}.3f}")
        lines.append(f"{name:<17} " + "  ".join(cells))
    wrong = [int(np.sum(c.trajectory.threads != ideal)) for c in contenders]
    lines.append(f"{'steps off ideal':<17} " + "  ".join(f"{w:>{width}d}" for w in wrong))
    return "\n".join(lines), records


def _write_trajectory(path: Path, traj: Trajectory) -> None:
    s = traj.filtered.shape[1]
    k = np.arange(s)

    def mean_sd(m: FloatArray) -> tuple[float, float]:
        mu = float(m @ k)
        return mu, float(np.sqrt(max(float(m @ (k * k)) - mu * mu, 0.0)))

    ideal = ideal_threads(traj.true_state, reference.THRESHOLD_STATE)
    header = ["kind", "step", "x", "true_state", "ideal_threads", "threads", "lq", "p_high_before"]
    header += [f"filtered_p{i}" for i in range(s)] + ["filtered_mean"]
    header += [f"smoothed_p{i}" for i in range(s)] + ["smoothed_mean", "smoothed_sd", "estimated_threads"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for t in range(traj.steps):
            fm, _ = mean_sd(traj.filtered[t])
            sm, ssd = mean_sd(traj.smoothed[t])
            w.writerow(
                [
                    "past",
                    t,
                    f"{traj.truth[t]:.6g}",
                    int(traj.true_state[t]),
                    int(ideal[t]),
                    int(traj.threads[t]),
                ]
                + [f"{traj.lq[t]:.6g}", f"{float(traj.predicted[t][reference.THRESHOLD_STATE :].sum()):.6g}"]
                + [f"{p:.6g}" for p in traj.filtered[t]]
                + [f"{fm:.6g}"]
                + [f"{p:.6g}" for p in traj.smoothed[t]]
                + [f"{sm:.6g}", f"{ssd:.6g}", int(traj.estimated_threads[t])]
            )
        for h in range(traj.forecast.shape[0]):
            pm, psd = mean_sd(traj.forecast[h])
            w.writerow(
                ["forecast", traj.steps + h, "", "", "", int(traj.forecast_threads[h]), "", ""]
                + [""] * (s + 1)
                + [f"{p:.6g}" for p in traj.forecast[h]]
                + [f"{pm:.6g}", f"{psd:.6g}", int(traj.forecast_threads[h])]
            )


def reproduce(
    out: Path,
    *,
    steps: int = 80,
    fitted_model: TwinModel | None = None,
    training_runs: int = 20,
    training_steps: int = 100,
    seed: int = 7,
    plots: bool = True,
) -> ReproductionResult:
    """Run everything and write the outputs into ``out``."""
    from jiriaf.twin import plots as figures

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    rows = compare_tables()
    tables_text = format_tables(rows)
    tables_csv = out / "paper_tables.csv"
    records = rows_as_records(rows)
    with tables_csv.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    files.append(tables_csv)

    ref_model = reference.reference_model()
    save_model(ref_model, out / "reference_model.json")
    files.append(out / "reference_model.json")

    fit: FitReport | None = None
    if fitted_model is None:
        rec, truths = generate_training_runs(runs=training_runs, steps=training_steps, seed=seed)
        write_recording(out / "training.csv", rec, truths)
        files.append(out / "training.csv")
        fit = fit_recording(rec)
        fitted_model = fit.model
    save_model(fitted_model, out / "fitted_model.json")
    files.append(out / "fitted_model.json")

    # Both twins know that the scenario starts in state 0 (the fitted prior describes where the
    # recorded runs started, not this scenario).
    scenario_model = replace(fitted_model, prior=ref_model.prior.copy())
    ref_traj = run_paper_scenario(ref_model, ThresholdPolicy(ref_model), steps)
    fit_traj = run_paper_scenario(scenario_model, ThresholdPolicy(scenario_model), steps)
    plan_traj = run_paper_scenario(scenario_model, ValueIterationPolicy(scenario_model), steps)
    contenders = [
        Contender("reference", ref_traj),
        Contender("fitted", fit_traj),
        Contender("fitted+planner", plan_traj),
    ]
    lag_text, lag_rows = format_lag_table(contenders)
    lag_csv = out / "lag.csv"
    with lag_csv.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(lag_rows[0]))
        w.writeheader()
        w.writerows(lag_rows)
    files.append(lag_csv)

    _write_trajectory(out / "trajectory.csv", ref_traj)
    _write_trajectory(out / "trajectory_fitted.csv", fit_traj)
    files += [out / "trajectory.csv", out / "trajectory_fitted.csv"]

    if plots:
        files.append(figures.plot_observed_lq(ref_traj, out / "observed_lq.png"))
        files.append(figures.plot_control_history(ref_traj, out / "control_history.png"))
        files.append(figures.plot_state_estimate(ref_traj, out / "state_estimate.png"))
        files.append(figures.plot_comparison(ref_traj, fit_traj, out / "comparison.png"))

    return ReproductionResult(
        tables_text=tables_text,
        lag_text=lag_text,
        reference=ref_traj,
        fitted=fit_traj,
        contenders=contenders,
        fit=fit,
        files=files,
    )
