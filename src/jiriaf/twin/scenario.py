"""Closed-loop runs of a twin against a synthetic asset, and the lag analysis of its switches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jiriaf.twin.digital_twin import DigitalTwin
from jiriaf.twin.model import FloatArray, IntArray, TwinModel
from jiriaf.twin.policy import Policy


@dataclass(frozen=True)
class Trajectory:
    """Everything recorded during one closed-loop run of ``T`` steps."""

    model_name: str
    policy_name: str
    truth: FloatArray  # continuous load index x_t
    true_state: IntArray  # nearest level of x_t
    threads: IntArray  # control enacted at step t (chosen before O_t)
    lq: FloatArray  # O_t
    predicted: FloatArray  # P(D_t | O_<t), the belief the control was chosen on, (T, S)
    filtered: FloatArray  # P(D_t | O_<=t), (T, S)
    smoothed: FloatArray  # P(D_t | O_0..O_{T-1}), (T, S)
    forecast: FloatArray  # P(D_{T-1+k} | O_0..O_{T-1}), k = 1..horizon, (H, S)
    forecast_threads: IntArray  # policy's control on each forecast belief
    estimated_threads: IntArray  # policy's control on each smoothed belief (the "estimated" control)

    @property
    def steps(self) -> int:
        return int(self.truth.shape[0])


def run_closed_loop(
    model: TwinModel,
    policy: Policy,
    truth: FloatArray,
    true_state: IntArray,
    measure: Callable[[float, int], float],
    horizon: int = 11,
) -> Trajectory:
    """Run the twin against an asset whose load index follows ``truth``."""
    twin = DigitalTwin(model, policy, horizon)
    threads: list[int] = []
    lqs: list[float] = []
    predicted: list[FloatArray] = []
    for x in truth:
        predicted.append(twin.next_belief)
        u = twin.recommend()
        y = measure(float(x), u)
        twin.observe(y, u)
        threads.append(u)
        lqs.append(y)
    smoothed = twin.smoothed()
    forecast = twin.forecast()
    choose = policy.choose
    return Trajectory(
        model_name=model.name,
        policy_name=policy.name,
        truth=np.asarray(truth, dtype=np.float64),
        true_state=np.asarray(true_state, dtype=np.int64),
        threads=np.asarray(threads, dtype=np.int64),
        lq=np.asarray(lqs, dtype=np.float64),
        predicted=np.asarray(predicted),
        filtered=twin.filtered(),
        smoothed=smoothed,
        forecast=forecast,
        forecast_threads=np.asarray([model.controls[choose(b)] for b in forecast], dtype=np.int64),
        estimated_threads=np.asarray([model.controls[choose(b)] for b in smoothed], dtype=np.int64),
    )


def switch_steps(threads: IntArray) -> list[tuple[int, int]]:
    """(step, new thread count) for every change of the enacted control."""
    return [(t, int(threads[t])) for t in range(1, len(threads)) if threads[t] != threads[t - 1]]


@dataclass(frozen=True)
class LagEvent:
    """One change of the ideal control and how long the twin took to follow it.

    ``lag`` is the number of steps from the first step whose true state calls for the new control to
    the first step run with it (0: the twin was already there; negative: it switched early; ``None``:
    it never switched before the next change of the ideal control).
    """

    kind: str  # "rise" or "fall"
    true_step: int
    twin_step: int | None
    lag: int | None


def ideal_threads(true_state: IntArray, threshold_state: int = 2, low: int = 16, high: int = 32) -> IntArray:
    """The control a twin that knew the true state would enact at each step."""
    out: IntArray = np.where(np.asarray(true_state) >= threshold_state, high, low).astype(np.int64)
    return out


def lag_events(ideal: IntArray, threads: IntArray) -> list[LagEvent]:
    """Match every change of the ideal control with the twin's corresponding switch."""
    changes = [t for t in range(1, len(ideal)) if ideal[t] != ideal[t - 1]]
    events: list[LagEvent] = []
    for i, t in enumerate(changes):
        prev_change = changes[i - 1] if i > 0 else 0
        next_change = changes[i + 1] if i + 1 < len(changes) else len(ideal)
        target = int(ideal[t])
        kind = "rise" if target > int(ideal[t - 1]) else "fall"
        s: int | None
        if threads[t] == target:
            s = t
            while s - 1 > prev_change and threads[s - 1] == target:
                s -= 1
        else:
            s = next((k for k in range(t, next_change) if threads[k] == target), None)
        events.append(LagEvent(kind=kind, true_step=t, twin_step=s, lag=None if s is None else s - t))
    return events


def tracking_error(traj: Trajectory, use: str = "filtered") -> FloatArray:
    """|E[state] - x_t| per step for the filtered (online) or smoothed marginals."""
    marg = traj.filtered if use == "filtered" else traj.smoothed
    mean = marg @ np.arange(marg.shape[1])
    out: FloatArray = np.abs(mean - traj.truth)
    return out
