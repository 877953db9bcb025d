"""Figures of a closed-loop run (PNG, matplotlib with the Agg backend).

* :func:`plot_observed_lq` - observed queue length on a log scale with the control regions shaded
  (the paper's Figure 8);
* :func:`plot_control_history` - the control estimated from the smoothed states against the predicted
  control (the paper's Figure 9);
* :func:`plot_state_estimate` - the estimated state with +-2 sd bands, the truth and the prediction;
* :func:`plot_comparison` - two twins against the same truth (state estimate and control).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jiriaf.twin.model import FloatArray
from jiriaf.twin.scenario import Trajectory

LOW_COLOUR = "tab:blue"
HIGH_COLOUR = "tab:red"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_sd(marg: FloatArray) -> tuple[FloatArray, FloatArray]:
    k = np.arange(marg.shape[1])
    mean = marg @ k
    var = marg @ (k * k) - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def _shade_controls(ax: Any, threads: np.ndarray) -> None:
    high = int(threads.max())
    start = 0
    for t in range(1, len(threads) + 1):
        if t == len(threads) or threads[t] != threads[start]:
            colour = HIGH_COLOUR if threads[start] == high else LOW_COLOUR
            ax.axvspan(start - 0.5, t - 0.5, color=colour, alpha=0.15, lw=0)
            start = t


def plot_observed_lq(traj: Trajectory, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    steps = np.arange(traj.steps)
    _shade_controls(ax, traj.threads)
    ax.scatter(steps, traj.lq, color="black", s=12, zorder=3, label="observed Lq")
    ax.set_yscale("log")
    ax.set_xlabel("time step")
    ax.set_ylabel("queue length Lq (log scale)")
    ax.set_title(f"Observed queue length with control regions ({traj.model_name} twin)")
    from matplotlib.patches import Patch

    handles = [
        ax.collections[-1],
        Patch(color=LOW_COLOUR, alpha=0.3, label=f"{int(traj.threads.min())} threads"),
        Patch(color=HIGH_COLOUR, alpha=0.3, label=f"{int(traj.threads.max())} threads"),
    ]
    ax.legend(handles=handles, loc="upper right")
    ax.set_xlim(-0.5, traj.steps - 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_control_history(traj: Trajectory, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    steps = np.arange(traj.steps)
    horizon = np.arange(traj.steps, traj.steps + traj.forecast.shape[0])
    pred = np.concatenate([traj.threads, traj.forecast_threads])
    ax.step(steps, traj.estimated_threads, where="mid", color=LOW_COLOUR, lw=2.2, label="estimated control")
    ax.step(
        np.concatenate([steps, horizon]),
        pred,
        where="mid",
        color=HIGH_COLOUR,
        ls="--",
        lw=1.6,
        label="predicted control",
    )
    ax.axvline(traj.steps - 0.5, color="grey", lw=0.8, ls=":")
    levels = sorted({int(v) for v in pred} | {int(v) for v in traj.estimated_threads})
    ax.set_yticks(levels, [f"{v}c" for v in levels])
    ax.set_ylim(min(levels) - 4, max(levels) + 4)
    ax.set_xlabel("time step")
    ax.set_title(f"Control history ({traj.model_name} twin, {traj.policy_name} policy)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _state_axes(ax: Any, traj: Trajectory, colour: str, label: str, forecast: bool = True) -> None:
    steps = np.arange(traj.steps)
    mean, sd = _mean_sd(traj.smoothed)
    fmean, _ = _mean_sd(traj.filtered)
    ax.plot(steps, traj.truth, color="black", lw=1.6, label="ground truth")
    ax.plot(steps, mean, color=colour, lw=1.6, label=f"{label}: smoothed estimate")
    ax.fill_between(steps, mean - 2 * sd, mean + 2 * sd, color=colour, alpha=0.2, lw=0)
    ax.plot(steps, fmean, color=colour, lw=1.0, ls=":", label=f"{label}: online (filtered) estimate")
    if forecast and traj.forecast.shape[0]:
        pm, psd = _mean_sd(traj.forecast)
        h = np.arange(traj.steps, traj.steps + traj.forecast.shape[0])
        ax.plot(h, pm, color=HIGH_COLOUR, ls="--", lw=1.4, label="prediction")
        ax.fill_between(h, pm - 2 * psd, pm + 2 * psd, color=HIGH_COLOUR, alpha=0.15, lw=0)
    ax.set_ylim(-0.6, 4.8)
    ax.set_ylabel("load state index")


def plot_state_estimate(traj: Trajectory, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    _state_axes(ax, traj, LOW_COLOUR, traj.model_name)
    ax.set_xlabel("time step")
    ax.set_title("Estimated state (mean +-2 sd), ground truth and 11-step prediction")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_comparison(reference: Trajectory, fitted: Trajectory, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.4]})
    _state_axes(axes[0], reference, LOW_COLOUR, reference.model_name, forecast=False)
    axes[0].set_title(f"{reference.model_name} twin")
    axes[0].legend(loc="upper right", fontsize=7)
    _state_axes(axes[1], fitted, "tab:green", fitted.model_name, forecast=False)
    axes[1].set_title(f"{fitted.model_name} twin")
    axes[1].legend(loc="upper right", fontsize=7)
    steps = np.arange(reference.steps)
    ideal = np.where(reference.true_state >= 2, 32, 16)
    axes[2].step(steps, ideal, where="mid", color="black", lw=2.4, label="ideal")
    axes[2].step(steps, reference.threads, where="mid", color=LOW_COLOUR, lw=1.4, label=reference.model_name)
    axes[2].step(
        steps, fitted.threads, where="mid", color="tab:green", lw=1.4, ls="--", label=fitted.model_name
    )
    axes[2].set_yticks([16, 32], ["16c", "32c"])
    axes[2].set_ylim(12, 36)
    axes[2].set_xlabel("time step")
    axes[2].legend(loc="upper right", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
