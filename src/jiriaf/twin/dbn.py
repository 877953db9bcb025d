"""Exact inference in the twin's dynamic Bayesian network, written with numpy only.

The unrolled network is a hidden Markov model whose transition depends on the enacted control and
whose emission depends on the control enacted while the observation was taken. Provided here:

* one-step filtering (:func:`filter_step`) and propagation (:func:`propagate`) for the online twin;
* batch forward filtering (:func:`forward`) and forward-backward smoothing (:func:`smooth`);
* ``k``-step prediction (:func:`predict`) where future controls follow a state-feedback policy;
* expectation-maximisation (Baum-Welch, :func:`em_fit`) of the transition and Gaussian observation
  models from one or more recorded sequences.

All recursions are normalised at every step, and the observation term is handled in the log domain so
that a queue length far from every state's mean never underflows to an all-zero likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from jiriaf.twin.model import FloatArray, IntArray, TwinModel

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ObservedSequence:
    """One recorded run: queue lengths and the thread count enacted while each was measured."""

    lq: FloatArray
    threads: IntArray

    def __post_init__(self) -> None:
        if self.lq.shape != self.threads.shape or self.lq.ndim != 1:
            raise ValueError("lq and threads must be 1-D arrays of the same length")

    def __len__(self) -> int:
        return int(self.lq.shape[0])


def observation_loglik(model: TwinModel, lq: float, control: int) -> FloatArray:
    """log p(O = lq | D = s, U = control) for every state ``s`` (``control`` is an index)."""
    y = model.transform(lq)
    mean = model.obs_mean[control]
    sigma = model.obs_sigma[control]
    z = (y - mean) / sigma
    out: FloatArray = np.asarray(-0.5 * z * z - np.log(sigma) - _LOG_SQRT_2PI, dtype=np.float64)
    return out


def observation_weights(model: TwinModel, lq: float, control: int) -> FloatArray:
    """The likelihood vector over states, normalised to sum to one.

    With ``model.zero_below_eps`` the entries below machine epsilon are then set to zero, as the
    original twin does when it turns the likelihood into a conditional probability table.
    """
    ll = observation_loglik(model, lq, control)
    w: FloatArray = np.exp(ll - ll.max())
    w /= w.sum()
    if model.zero_below_eps:
        w[w < np.finfo(np.float64).eps] = 0.0
    return w


def filter_step(model: TwinModel, predicted: FloatArray, lq: float, control: int) -> FloatArray:
    """Posterior P(D_t | O_0..O_t) from the prediction P(D_t | O_0..O_{t-1}) and the observation O_t."""
    w = observation_weights(model, lq, control)
    post = predicted * w
    total = post.sum()
    if total > 0 and np.isfinite(total):
        out: FloatArray = post / total
        return out
    # Every state the prediction allows was ruled out by the (zeroed) likelihood: fall back to the
    # exact log-domain product, which always has a finite maximum.
    with np.errstate(divide="ignore"):
        logp = np.log(predicted) + observation_loglik(model, lq, control)
    logp -= logp.max()
    p = np.exp(logp)
    res: FloatArray = p / p.sum()
    return res


def propagate(model: TwinModel, belief: FloatArray, control: int) -> FloatArray:
    """P(D_{t+1}) from P(D_t) when ``control`` (an index) is enacted at step t."""
    out: FloatArray = belief @ model.transition[control]
    return out


@dataclass(frozen=True)
class ForwardResult:
    """Batch forward pass: ``predicted[t]`` = P(D_t | O_<t), ``filtered[t]`` = P(D_t | O_<=t)."""

    predicted: FloatArray
    filtered: FloatArray
    log_likelihood: float


def _control_indices(model: TwinModel, threads: IntArray) -> list[int]:
    return [model.control_index(int(n)) for n in threads]


def forward(model: TwinModel, seq: ObservedSequence) -> ForwardResult:
    """Forward filtering over a whole sequence (the transition into step t uses the control of t-1)."""
    t_len, s = len(seq), model.n_states
    cs = _control_indices(model, seq.threads)
    predicted = np.zeros((t_len, s))
    filtered = np.zeros((t_len, s))
    belief = model.prior.copy()
    loglik = 0.0
    for t in range(t_len):
        if t > 0:
            belief = propagate(model, filtered[t - 1], cs[t - 1])
        predicted[t] = belief
        ll = observation_loglik(model, float(seq.lq[t]), cs[t])
        m = float(ll.max())
        loglik += m + math.log(max(float(belief @ np.exp(ll - m)), 1e-300))
        filtered[t] = filter_step(model, belief, float(seq.lq[t]), cs[t])
    return ForwardResult(predicted=predicted, filtered=filtered, log_likelihood=loglik)


def smooth(model: TwinModel, seq: ObservedSequence, fwd: ForwardResult | None = None) -> FloatArray:
    """Smoothed marginals P(D_t | O_0..O_{T-1}) by a normalised backward pass."""
    if fwd is None:
        fwd = forward(model, seq)
    t_len, s = len(seq), model.n_states
    cs = _control_indices(model, seq.threads)
    smoothed = np.zeros((t_len, s))
    if t_len == 0:
        return smoothed
    beta = np.ones(s)
    smoothed[-1] = fwd.filtered[-1]
    for t in range(t_len - 2, -1, -1):
        w = observation_weights(model, float(seq.lq[t + 1]), cs[t + 1])
        beta = model.transition[cs[t]] @ (w * beta)
        total = beta.sum()
        beta = beta / total if total > 0 else np.ones(s) / s
        g = fwd.filtered[t] * beta
        gs = g.sum()
        smoothed[t] = g / gs if gs > 0 else fwd.filtered[t]
    return smoothed


def predict(model: TwinModel, belief: FloatArray, steps: int, state_controls: IntArray) -> FloatArray:
    """Beliefs for the next ``steps`` steps after ``belief``.

    Future controls are the policy's choice for each state (``state_controls[s]`` is a control index),
    which is how the DBN's policy node feeds the next state's transition.
    """
    s = model.n_states
    rows = model.transition[state_controls, np.arange(s), :]  # effective transition, (S, S)
    out = np.zeros((steps, s))
    b = belief
    for k in range(steps):
        b = b @ rows
        out[k] = b
    return out


# ----------------------------------------------------------------------------- expectation-maximisation


def _rows_from_counts(counts: FloatArray, fallback: FloatArray) -> FloatArray:
    """Normalise expected transition counts row by row; a row never left keeps ``fallback``."""
    totals = counts.sum(axis=-1, keepdims=True)
    out: FloatArray = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), fallback)
    return out


@dataclass(frozen=True)
class EmResult:
    """Fitted model and the data log-likelihood after each iteration (non-decreasing)."""

    model: TwinModel
    log_likelihood: list[float]
    iterations: int
    converged: bool


def _e_step(
    model: TwinModel, seq: ObservedSequence
) -> tuple[FloatArray, FloatArray, FloatArray, list[int], float]:
    """Posterior state marginals, expected transition counts per control, values, controls, loglik."""
    t_len, s = len(seq), model.n_states
    cs = _control_indices(model, seq.threads)
    y = np.array([model.transform(float(v)) for v in seq.lq])
    logw = np.zeros((t_len, s))
    for t in range(t_len):
        logw[t] = observation_loglik(model, float(seq.lq[t]), cs[t])
    shift = logw.max(axis=1)
    w = np.exp(logw - shift[:, None])
    alpha = np.zeros((t_len, s))
    scale = np.zeros(t_len)
    b = model.prior
    for t in range(t_len):
        if t > 0:
            b = alpha[t - 1] @ model.transition[cs[t - 1]]
        a = b * w[t]
        scale[t] = max(float(a.sum()), 1e-300)
        alpha[t] = a / scale[t]
    loglik = float(np.sum(np.log(scale)) + np.sum(shift))
    beta = np.ones((t_len, s))
    for t in range(t_len - 2, -1, -1):
        beta[t] = model.transition[cs[t]] @ (w[t + 1] * beta[t + 1]) / scale[t + 1]
    gamma = alpha * beta
    gamma /= gamma.sum(axis=1, keepdims=True)
    xi = np.zeros((model.n_controls, s, s))
    for t in range(t_len - 1):
        x = alpha[t][:, None] * model.transition[cs[t]] * (w[t + 1] * beta[t + 1])[None, :]
        total = x.sum()
        if total > 0:
            xi[cs[t]] += x / total
    return gamma, xi, y, cs, loglik


def em_fit(
    init: TwinModel,
    sequences: Sequence[ObservedSequence],
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    shared_transition: bool = True,
    fit_prior: bool = False,
    sigma_floor: float = 0.02,
    pseudo_count: float = 0.1,
    min_weight: float = 1.0,
    name: str = "fitted",
) -> EmResult:
    """Baum-Welch for the twin's DBN with control-dependent Gaussian observations.

    * Observation mean and standard deviation are re-estimated for every (control, state) pair from
      the posterior-weighted observations taken under that control; a pair with less than
      ``min_weight`` expected observations keeps its initial value. Standard deviations are floored
      at ``sigma_floor`` (in the units of the observation space) so that a state cannot collapse
      onto a single value.
    * Transitions are re-estimated from the expected transition counts, pooled over controls when
      ``shared_transition`` (the load does not depend on the thread count), with ``pseudo_count``
      added to every cell so that no move becomes impossible.
    * States are kept in their ordinal order by sorting them on the mean under the first control
      after every iteration.
    """
    if not sequences:
        raise ValueError("need at least one sequence")
    model = replace(init, zero_below_eps=False, name=name)
    history: list[float] = []
    converged = False
    iterations = 0
    c_n, s = model.n_controls, model.n_states
    for it in range(1, max_iter + 1):
        iterations = it
        w_sum = np.zeros((c_n, s))
        wy_sum = np.zeros((c_n, s))
        wyy_sum = np.zeros((c_n, s))
        xi_sum = np.zeros((c_n, s, s))
        first = np.zeros(s)
        total_ll = 0.0
        for seq in sequences:
            if len(seq) == 0:
                continue
            gamma, xi, y, cs, ll = _e_step(model, seq)
            total_ll += ll
            xi_sum += xi
            first += gamma[0]
            c_arr = np.asarray(cs)
            for c in range(c_n):
                sel = c_arr == c
                if not sel.any():
                    continue
                g = gamma[sel]
                yy = y[sel]
                w_sum[c] += g.sum(axis=0)
                wy_sum[c] += (g * yy[:, None]).sum(axis=0)
                wyy_sum[c] += (g * (yy * yy)[:, None]).sum(axis=0)
        history.append(total_ll)
        # M-step
        mean = model.obs_mean.copy()
        sigma = model.obs_sigma.copy()
        ok = w_sum > min_weight
        mean[ok] = wy_sum[ok] / w_sum[ok]
        var = np.where(ok, wyy_sum / np.maximum(w_sum, 1e-300) - mean * mean, sigma * sigma)
        sigma = np.where(ok, np.sqrt(np.maximum(var, sigma_floor**2)), sigma)
        if shared_transition:
            counts = xi_sum.sum(axis=0) + pseudo_count
            shared = _rows_from_counts(counts, model.transition[0])
            trans = np.broadcast_to(shared, (c_n, s, s)).copy()
        else:
            trans = _rows_from_counts(xi_sum + pseudo_count, model.transition)
        prior = model.prior
        if fit_prior:
            p = first + 1e-3
            prior = p / p.sum()
        order = np.argsort(mean[0], kind="stable")
        model = replace(
            model,
            obs_mean=mean[:, order],
            obs_sigma=sigma[:, order],
            transition=trans[:, order][:, :, order],
            prior=prior[order],
        )
        if len(history) >= 2 and abs(history[-1] - history[-2]) < tol * max(1.0, abs(history[-1])):
            converged = True
            break
    return EmResult(model=model, log_likelihood=history, iterations=iterations, converged=converged)


def supervised_fit(
    init: TwinModel,
    sequences: Sequence[ObservedSequence],
    states: Sequence[IntArray],
    *,
    sigma_floor: float = 0.02,
    pseudo_count: float = 0.1,
    name: str = "supervised",
) -> TwinModel:
    """Maximum-likelihood tables when the true state of every step is known (counting)."""
    c_n, s = init.n_controls, init.n_states
    n = np.zeros((c_n, s))
    sy = np.zeros((c_n, s))
    syy = np.zeros((c_n, s))
    counts = np.full((s, s), pseudo_count)
    for seq, st in zip(sequences, states, strict=True):
        cs = _control_indices(init, seq.threads)
        for t in range(len(seq)):
            k = int(st[t])
            if not 0 <= k < s:
                raise ValueError(f"state {k} out of range 0..{s - 1}")
            y = init.transform(float(seq.lq[t]))
            n[cs[t], k] += 1
            sy[cs[t], k] += y
            syy[cs[t], k] += y * y
            if t > 0:
                counts[int(st[t - 1]), k] += 1
    mean = init.obs_mean.copy()
    sigma = init.obs_sigma.copy()
    ok = n > 0
    mean[ok] = sy[ok] / n[ok]
    var = np.where(ok, syy / np.maximum(n, 1) - mean * mean, sigma * sigma)
    sigma = np.where(ok, np.sqrt(np.maximum(var, sigma_floor**2)), sigma)
    trans = np.broadcast_to(_rows_from_counts(counts, init.transition[0]), (c_n, s, s)).copy()
    return replace(init, name=name, obs_mean=mean, obs_sigma=sigma, transition=trans, zero_below_eps=False)
