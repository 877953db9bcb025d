"""Control policies: the reference threshold rule and a value-iteration planner.

A policy maps a belief over load states to a control (an index into ``model.controls``). For the
DBN's predictions it also gives a control per state (``state_controls``), which is how the policy
node feeds the next transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jiriaf.twin.model import FloatArray, IntArray, TwinModel


class Policy(Protocol):
    """What the twin needs from a policy."""

    name: str

    def choose(self, belief: FloatArray) -> int:
        """Control index for a belief over states."""
        ...

    def state_controls(self) -> IntArray:
        """Control index chosen in each state when the state is known."""
        ...


class ThresholdPolicy:
    """The reference rule: the high control when P(state >= threshold) >= 1/2 (ties go high)."""

    def __init__(
        self, model: TwinModel, threshold_state: int = 2, low_threads: int = 16, high_threads: int = 32
    ) -> None:
        if not 0 < threshold_state < model.n_states:
            raise ValueError("threshold state must be inside the state range")
        self.name = "threshold"
        self.threshold_state = threshold_state
        self.low = model.control_index(low_threads)
        self.high = model.control_index(high_threads)
        self._n_states = model.n_states

    def p_high(self, belief: FloatArray) -> float:
        return float(belief[self.threshold_state :].sum())

    def choose(self, belief: FloatArray) -> int:
        return self.high if self.p_high(belief) >= 0.5 else self.low

    def state_controls(self) -> IntArray:
        out = np.full(self._n_states, self.low, dtype=np.int64)
        out[self.threshold_state :] = self.high
        return out


@dataclass(frozen=True)
class PlannerReward:
    """Per-step reward r(s, c) = -queue_weight * Lq(s, c) - thread_cost * threads(c).

    ``thread_cost`` is in queued events per thread: with the default 3.125, 16 extra threads are worth
    50 waiting events, which puts the break-even between the paper's states 1 and 2 under 16 threads.
    """

    queue_weight: float = 1.0
    thread_cost: float = 3.125

    def table(self, model: TwinModel) -> FloatArray:
        r = np.zeros((model.n_states, model.n_controls))
        for c, threads in enumerate(model.controls):
            for s in range(model.n_states):
                r[s, c] = -self.queue_weight * model.typical_lq(c, s) - self.thread_cost * threads
        return r


def value_iteration(
    model: TwinModel, reward: FloatArray, gamma: float = 0.9, tol: float = 1e-10, max_iter: int = 10_000
) -> tuple[FloatArray, FloatArray]:
    """Standard discounted value iteration; returns (V[s], Q[s, c])."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError("gamma must be in [0, 1)")
    s_n, c_n = model.n_states, model.n_controls
    v = np.zeros(s_n)
    q = np.zeros((s_n, c_n))
    for _ in range(max_iter):
        for c in range(c_n):
            q[:, c] = reward[:, c] + gamma * model.transition[c] @ v
        v_new = q.max(axis=1)
        if np.max(np.abs(v_new - v)) < tol:
            v = v_new
            break
        v = v_new
    for c in range(c_n):
        q[:, c] = reward[:, c] + gamma * model.transition[c] @ v
    return v, q


class ValueIterationPolicy:
    """Plan with value iteration on the model, act on the belief with the QMDP rule.

    The chosen control maximises sum_s b(s) Q(s, c): it weighs how bad each possible state would be,
    not only whether the high states are more likely than not.
    """

    def __init__(self, model: TwinModel, reward: PlannerReward | None = None, gamma: float = 0.9) -> None:
        self.name = "planner"
        self.reward = reward or PlannerReward()
        self.gamma = gamma
        self.values, self.q = value_iteration(model, self.reward.table(model), gamma)

    def choose(self, belief: FloatArray) -> int:
        return int(np.argmax(belief @ self.q))

    def state_controls(self) -> IntArray:
        out: IntArray = np.argmax(self.q, axis=1).astype(np.int64)
        return out


def original_planner_q(
    model: TwinModel, gamma: float = 0.6, sweeps: int = 98, control_weight: float = 2.5
) -> FloatArray:
    """Q table of the original twin's planner, which it computed but did not use.

    Reward: health 1 - Lq/10 of the theoretical queue length plus ``control_weight`` times the control
    reward (-0.1 for 32 threads, +0.1 for 16); ``sweeps`` updates of V(s) = gamma * max_c[r + T V]
    (the discount multiplies the whole bracket). Returns Q[s, c] = r(s, c) + sum_s' T(s, s') V(s').
    """
    s_n, c_n = model.n_states, model.n_controls
    r = np.zeros((s_n, c_n))
    for c, threads in enumerate(model.controls):
        control_reward = -0.1 if threads == max(model.controls) else 0.1
        for s in range(s_n):
            r[s, c] = 1.0 - model.typical_lq(c, s) / 10.0 + control_weight * control_reward
    v = np.zeros(s_n)
    q = np.zeros((s_n, c_n))
    for _ in range(sweeps):
        for c in range(c_n):
            q[:, c] = r[:, c] + model.transition[c] @ v
        v = gamma * q.max(axis=1)
    for c in range(c_n):
        q[:, c] = r[:, c] + model.transition[c] @ v
    return q


def make_policy(kind: str, model: TwinModel, thread_cost: float = PlannerReward.thread_cost) -> Policy:
    """A policy by name: ``threshold`` or ``planner``."""
    if kind == "threshold":
        return ThresholdPolicy(model)
    if kind == "planner":
        return ValueIterationPolicy(model, PlannerReward(thread_cost=thread_cost))
    raise ValueError(f"unknown policy {kind!r} (threshold or planner)")
