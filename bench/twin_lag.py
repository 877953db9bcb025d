"""Switching lag of the reference twin vs twins fitted on recorded data, over several training seeds.

Run: ``python bench/twin_lag.py [--seeds 5] [--noise 0.05]``

For each training seed a twin is fitted by EM on 20 recorded runs of the asset (a wandering load and
an exploring controller, see ``jiriaf.twin.fitting.generate_training_runs``) and run on the paper's
scenario. The table gives the mean lag in steps from the true state change to the twin's switch
(rising and falling phases), the tracking error in the falling phases and the number of steps run
with a control other than the ideal one. A second table repeats the comparison with multiplicative
measurement noise on the scenario, averaged over noise seeds.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np

from jiriaf.twin import reference
from jiriaf.twin.fitting import fit_recording, generate_training_runs
from jiriaf.twin.model import TwinModel
from jiriaf.twin.policy import Policy, ThresholdPolicy, ValueIterationPolicy
from jiriaf.twin.scenario import Trajectory, ideal_threads, lag_events, run_closed_loop, tracking_error

STEPS = 80


def run(model: TwinModel, policy: Policy, noise: float = 0.0, seed: int = 0) -> Trajectory:
    x = reference.ground_truth(STEPS)
    rng = np.random.default_rng(seed)

    def measure(xv: float, threads: int) -> float:
        y = reference.measure(xv, threads)
        return y * math.exp(noise * rng.standard_normal()) if noise > 0 else y

    return run_closed_loop(model, policy, x, reference.true_state(x), measure)


def summary(traj: Trajectory) -> tuple[float, float, int, float, int]:
    ideal = ideal_threads(traj.true_state)
    events = lag_events(ideal, traj.threads)
    rise = [e.lag for e in events if e.kind == "rise"]
    fall = [e.lag for e in events if e.kind == "fall"]
    missed = sum(1 for e in events if e.lag is None)
    rise_v = (
        float(np.mean([v for v in rise if v is not None])) if any(v is not None for v in rise) else math.nan
    )
    fall_v = (
        float(np.mean([v for v in fall if v is not None])) if any(v is not None for v in fall) else math.nan
    )
    err = float(np.mean(np.concatenate([tracking_error(traj)[22:42], tracking_error(traj)[62:80]])))
    off = int(np.sum(traj.threads != ideal))
    return rise_v, fall_v, missed, err, off


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="training seeds")
    ap.add_argument("--noise", type=float, default=0.05, help="relative measurement noise of the noisy table")
    ap.add_argument("--noise-seeds", type=int, default=10)
    args = ap.parse_args()

    ref = reference.reference_model()
    twins: list[tuple[str, TwinModel, Policy]] = [("reference", ref, ThresholdPolicy(ref))]
    for seed in range(1, args.seeds + 1):
        rec, _ = generate_training_runs(runs=20, steps=100, seed=seed)
        # the scenario starts in state 0, which both twins are told
        model = replace(fit_recording(rec).model, prior=ref.prior.copy())
        twins.append((f"fitted seed {seed}", model, ThresholdPolicy(model)))
        twins.append((f"fitted seed {seed} + planner", model, ValueIterationPolicy(model)))

    head = (
        f"{'twin':<26} {'rise lag':>8} {'fall lag':>8} {'missed':>6} {'|E[k]-x| fall':>13} {'off ideal':>9}"
    )
    print("Paper scenario, noise-free measurements (as in the paper)")
    print(head)
    for name, model, pol in twins:
        r, f, m, e, o = summary(run(model, pol))
        print(f"{name:<26} {r:>8.1f} {f:>8.1f} {m:>6d} {e:>13.3f} {o:>9d}")

    print()
    print(
        f"Paper scenario with {args.noise:.0%} log-normal measurement noise, mean of {args.noise_seeds} runs"
    )
    print(head)
    for name, model, pol in twins:
        rows = [summary(run(model, pol, args.noise, s)) for s in range(args.noise_seeds)]
        arr = np.array(rows, dtype=float)
        mean = np.nanmean(arr, axis=0)
        print(f"{name:<26} {mean[0]:>8.1f} {mean[1]:>8.1f} {mean[2]:>6.1f} {mean[3]:>13.3f} {mean[4]:>9.1f}")


if __name__ == "__main__":
    main()
