"""The reference configuration: the original JIRIAF twin's model and the paper's scenario (section 6).

Model (from the description of the original code):

* five ordinal load states labelled 0, 20, 40, 60, 80 (indices 0..4), starting surely in state 0;
* two controls, 16 and 32 receiver threads;
* a transition table built from one parameter p = 0.05 (the same for both controls, so the control
  does not change the dynamics): unnormalised weight (1-p)^2 to stay, p^2 to move by one level, p^2/2
  to move further, except that the top state keeps itself with weight 1; each row is normalised;
* a Gaussian likelihood of the measured queue length around the *theoretical* (M/M/1) queue length
  of each state under the control enacted while measuring, sigma = 1.5 / sqrt(50), normalised over
  states with entries below machine epsilon set to zero;
* a threshold policy: 32 threads when P(state >= 2) >= 1/2 (ties go to 32), else 16;
* an 11-step prediction horizon.

Scenario (the "asset"): a continuous load index x in [0, 4] follows the paper's piecewise schedule and
the measured queue length is the linear interpolation of the *observed* Lq table (paper Tables 8/9)
at x for the enacted control, without noise. The generator therefore uses observed values while the
likelihood uses theoretical ones, a mismatch that the original kept on purpose.
"""

from __future__ import annotations

import math

import numpy as np

from jiriaf.twin.model import FloatArray, IntArray, TwinModel

STATE_LABELS: tuple[str, ...] = ("0", "20", "40", "60", "80")
CONTROLS: tuple[int, ...] = (16, 32)
TRANSITION_P = 0.05
SIGMA = 1.5 / math.sqrt(50.0)
HORIZON = 11
THRESHOLD_STATE = 2

# Paper Tables 8 (16 threads) and 9 (32 threads), as printed.
TABLE_RATES: tuple[float, ...] = (162.0, 163.0, 164.0, 165.0, 166.0)
PRINTED_MU: dict[int, float] = {16: 167.0, 32: 222.0}
OBSERVED_LQ: dict[int, tuple[float, ...]] = {
    16: (32.0, 41.0, 58.0, 97.0, 241.0),
    32: (1.56, 2.5, 2.56, 3.5, 3.56),
}
THEORETICAL_LQ: dict[int, tuple[float, ...]] = {
    16: (33.74, 43.48, 60.52, 98.01, 248.00),
    32: (1.96, 2.02, 2.08, 2.14, 2.21),
}


def reference_transition(p: float = TRANSITION_P, n_states: int = 5) -> FloatArray:
    """The original twin's transition table (rows: from-state, columns: to-state)."""
    weights = np.zeros((n_states, n_states))
    for i in range(n_states):
        for j in range(n_states):
            d = abs(j - i)
            if d == 0:
                weights[i, j] = 1.0 if i == n_states - 1 else (1.0 - p) ** 2
            elif d == 1:
                weights[i, j] = p**2
            else:
                weights[i, j] = p**2 / 2.0
    out: FloatArray = weights / weights.sum(axis=1, keepdims=True)
    return out


def reference_model() -> TwinModel:
    """The original twin's DBN parameters."""
    t = reference_transition()
    prior = np.zeros(5)
    prior[0] = 1.0
    return TwinModel(
        name="reference",
        state_labels=STATE_LABELS,
        controls=CONTROLS,
        prior=prior,
        transition=np.stack([t, t]),
        obs_mean=np.array([THEORETICAL_LQ[c] for c in CONTROLS], dtype=np.float64),
        obs_sigma=np.full((2, 5), SIGMA),
        log_space=False,
        zero_below_eps=True,
        notes={"source": "original JIRIAF twin (theoretical Lq likelihood, p=0.05, sigma=1.5/sqrt(50))"},
    )


def schedule_delta(ts: int) -> float:
    """Change of the load index after asset step ``ts`` (paper 6.2, extended as the original code does)."""
    if ts < 10 or 40 < ts < 50 or 80 < ts < 90:
        return 0.4
    if 20 < ts < 30 or 60 < ts < 70 or 100 < ts < 110:
        return -0.4
    return 0.0


def ground_truth(steps: int) -> FloatArray:
    """The load index x_t measured at step t = 0..steps-1 (floating-point accumulation as the original)."""
    xs = np.zeros(steps)
    x = 0.0
    for ts in range(steps):
        xs[ts] = x
        x += schedule_delta(ts)
    return xs


def true_state(x: FloatArray) -> IntArray:
    """The discrete state of a load index: the nearest of the five levels."""
    out: IntArray = np.clip(np.floor(np.asarray(x) + 0.5), 0, 4).astype(np.int64)
    return out


def measure(x: float, threads: int) -> float:
    """The asset's measurement: the observed Lq table interpolated linearly at load index ``x``."""
    table = OBSERVED_LQ[threads]
    return float(np.interp(min(max(x, 0.0), 4.0), np.arange(5.0), np.asarray(table)))
