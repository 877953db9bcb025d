"""Filtering, smoothing, prediction and EM of the DBN against brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from jiriaf.twin import dbn
from jiriaf.twin.model import TwinModel, banded_transition

pytestmark = pytest.mark.unit


def small_model(control_dependent: bool = True) -> TwinModel:
    t16 = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    t32 = np.array([[0.9, 0.08, 0.02], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5]]) if control_dependent else t16
    return TwinModel(
        name="small",
        state_labels=("a", "b", "c"),
        controls=(16, 32),
        prior=np.array([0.5, 0.3, 0.2]),
        transition=np.stack([t16, t32]),
        obs_mean=np.array([[1.0, 2.0, 3.5], [0.2, 0.5, 0.9]]),
        obs_sigma=np.array([[0.6, 0.5, 0.8], [0.3, 0.3, 0.4]]),
    )


def gauss(y: float, m: float, s: float) -> float:
    return math.exp(-0.5 * ((y - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def brute_force(
    model: TwinModel, lq: list[float], threads: list[int]
) -> tuple[list[list[float]], list[list[float]], float]:
    """Joint over all state paths, by enumeration: marginals and the data likelihood."""
    t_len, s = len(lq), model.n_states
    cs = [model.controls.index(n) for n in threads]
    joint: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(s), repeat=t_len):
        p = float(model.prior[path[0]])
        for t in range(t_len):
            if t > 0:
                p *= float(model.transition[cs[t - 1], path[t - 1], path[t]])
            p *= gauss(lq[t], float(model.obs_mean[cs[t], path[t]]), float(model.obs_sigma[cs[t], path[t]]))
        joint[path] = p
    z = sum(joint.values())

    def marginal(t: int, upto: int) -> list[float]:
        # P(D_t | O_0..O_upto): re-enumerate with observations after `upto` removed
        acc = [0.0] * s
        for path in itertools.product(range(s), repeat=upto + 1):
            p = float(model.prior[path[0]])
            for k in range(upto + 1):
                if k > 0:
                    p *= float(model.transition[cs[k - 1], path[k - 1], path[k]])
                p *= gauss(
                    lq[k], float(model.obs_mean[cs[k], path[k]]), float(model.obs_sigma[cs[k], path[k]])
                )
            acc[path[t]] += p
        tot = sum(acc)
        return [a / tot for a in acc]

    smoothed = [[0.0] * s for _ in range(t_len)]
    for path, p in joint.items():
        for t in range(t_len):
            smoothed[t][path[t]] += p / z
    filtered = [marginal(t, t) for t in range(t_len)]
    return filtered, smoothed, math.log(z)


LQ = [1.1, 2.4, 0.6, 0.7, 3.0]
THREADS = [16, 16, 32, 32, 16]


def test_forward_filter_matches_enumeration() -> None:
    model = small_model()
    seq = dbn.ObservedSequence(np.array(LQ), np.array(THREADS))
    fwd = dbn.forward(model, seq)
    filtered, _, logz = brute_force(model, LQ, THREADS)
    for t in range(len(LQ)):
        assert fwd.filtered[t].tolist() == pytest.approx(filtered[t], rel=1e-10)
    assert fwd.log_likelihood == pytest.approx(logz, rel=1e-10)


def test_smoother_matches_enumeration() -> None:
    model = small_model()
    seq = dbn.ObservedSequence(np.array(LQ), np.array(THREADS))
    sm = dbn.smooth(model, seq)
    _, smoothed, _ = brute_force(model, LQ, THREADS)
    for t in range(len(LQ)):
        assert sm[t].tolist() == pytest.approx(smoothed[t], rel=1e-9)


def test_transition_into_a_step_uses_the_previous_steps_control() -> None:
    model = small_model()
    post = dbn.filter_step(model, model.prior, 0.5, 1)
    assert dbn.propagate(model, post, 1).tolist() == pytest.approx((post @ model.transition[1]).tolist())
    seq = dbn.ObservedSequence(np.array([0.5, 1.0]), np.array([32, 16]))
    fwd = dbn.forward(model, seq)
    assert fwd.predicted[1].tolist() == pytest.approx((fwd.filtered[0] @ model.transition[1]).tolist())


def test_prediction_uses_the_state_feedback_control() -> None:
    model = small_model()
    b = np.array([0.2, 0.5, 0.3])
    controls = np.array([0, 1, 1])
    pred = dbn.predict(model, b, 3, controls)
    eff = np.stack([model.transition[0][0], model.transition[1][1], model.transition[1][2]])
    expected = b
    for k in range(3):
        expected = expected @ eff
        assert pred[k].tolist() == pytest.approx(expected.tolist())


def test_zeroed_likelihood_falls_back_to_exact_posterior() -> None:
    from dataclasses import replace

    model = replace(small_model(), zero_below_eps=True)
    one_hot = np.array([1.0, 0.0, 0.0])
    # an observation that makes state 0 negligible next to state 2: the zeroed weights kill the prior
    post = dbn.filter_step(model, one_hot, 9.0, 0)
    assert post.tolist() == [1.0, 0.0, 0.0]
    assert np.all(np.isfinite(dbn.observation_weights(model, 1e6, 0)))


def sample(model: TwinModel, threads: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = int(rng.choice(model.n_states, p=model.prior))
    states, ys = [], []
    for t, n in enumerate(threads):
        c = model.controls.index(n)
        if t > 0:
            s = int(rng.choice(model.n_states, p=model.transition[model.controls.index(threads[t - 1]), s]))
        states.append(s)
        ys.append(rng.normal(model.obs_mean[c, s], model.obs_sigma[c, s]))
    return np.array(ys), np.array(states)


def test_em_recovers_generating_parameters_and_never_decreases_likelihood() -> None:
    rng = np.random.default_rng(3)
    t = banded_transition(3, 0.9)
    truth = TwinModel(
        name="truth",
        state_labels=("a", "b", "c"),
        controls=(16, 32),
        prior=np.full(3, 1 / 3),
        transition=np.stack([t, t]),
        obs_mean=np.array([[1.0, 3.0, 5.0], [0.0, 0.8, 1.6]]),
        obs_sigma=np.array([[0.3, 0.3, 0.3], [0.15, 0.15, 0.15]]),
    )
    seqs = []
    for _ in range(6):
        threads = [int(v) for v in rng.choice([16, 32], size=150)]
        ys, _ = sample(truth, threads, rng)
        seqs.append(dbn.ObservedSequence(np.maximum(ys, 0.0), np.array(threads)))
    from dataclasses import replace

    init = replace(
        truth,
        obs_mean=np.array([[0.5, 2.0, 4.0], [0.3, 0.6, 1.0]]),
        obs_sigma=np.ones((2, 3)),
        transition=np.stack([banded_transition(3, 0.5)] * 2),
    )
    res = dbn.em_fit(init, seqs, max_iter=80, tol=1e-9)
    ll = np.array(res.log_likelihood)
    assert np.all(np.diff(ll) >= -1e-6 * np.abs(ll[1:]))
    assert res.model.obs_mean[0].tolist() == pytest.approx([1.0, 3.0, 5.0], abs=0.1)
    assert res.model.obs_mean[1].tolist() == pytest.approx([0.0, 0.8, 1.6], abs=0.1)
    assert np.diag(res.model.transition[0]).tolist() == pytest.approx([0.9, 0.9, 0.9], abs=0.06)


def test_supervised_fit_counts_means_and_transitions() -> None:
    model = small_model(control_dependent=False)
    seq = dbn.ObservedSequence(np.array([1.0, 1.2, 3.0, 3.4, 0.4]), np.array([16, 16, 16, 16, 32]))
    states = [np.array([0, 0, 2, 2, 1])]
    fitted = dbn.supervised_fit(model, [seq], states, pseudo_count=0.0)
    assert fitted.obs_mean[0, 0] == pytest.approx(1.1)
    assert fitted.obs_mean[0, 2] == pytest.approx(3.2)
    assert fitted.obs_mean[1, 1] == pytest.approx(0.4)
    assert fitted.obs_mean[1, 0] == model.obs_mean[1, 0]  # unseen pair keeps its initial value
    assert fitted.transition[0, 0].tolist() == pytest.approx([0.5, 0.0, 0.5])
    assert fitted.transition[0, 2].tolist() == pytest.approx([0.0, 0.5, 0.5])
