"""The reference configuration reproduces the original twin on the paper scenario.

Expected values are derived from the model description with plain-Python arithmetic in the tests
(not with the package's numpy code), plus a cross-check against numbers logged by the original twin
(run 0711_T13 of the original repository's digital-twin experiment).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jiriaf.twin import dbn, reference
from jiriaf.twin.policy import ThresholdPolicy, original_planner_q
from jiriaf.twin.scenario import Trajectory, ideal_threads, lag_events, run_closed_loop, switch_steps

pytestmark = pytest.mark.unit

SIGMA = 1.5 / math.sqrt(50.0)
THEO16 = [33.74, 43.48, 60.52, 98.01, 248.0]
THEO32 = [1.96, 2.02, 2.08, 2.14, 2.21]


def hand_transition_row(i: int) -> list[float]:
    p = 0.05
    w = []
    for j in range(5):
        if i == j:
            w.append(1.0 if i == 4 else (1 - p) ** 2)
        elif abs(i - j) == 1:
            w.append(p * p)
        else:
            w.append(p * p / 2)
    total = sum(w)
    return [v / total for v in w]


def hand_filter_step(pred: list[float], obs: float, means: list[float]) -> list[float]:
    """Posterior with the original's normalised-and-zeroed Gaussian likelihood, in plain Python."""
    logs = [-((obs - m) ** 2) / (2 * SIGMA * SIGMA) for m in means]
    top = max(logs)
    w = [math.exp(v - top) for v in logs]
    tw = sum(w)
    w = [v / tw if v / tw >= 2.220446049250313e-16 else 0.0 for v in w]
    post = [a * b for a, b in zip(pred, w, strict=True)]
    tp = sum(post)
    return [v / tp for v in post]


def hand_propagate(b: list[float]) -> list[float]:
    rows = [hand_transition_row(i) for i in range(5)]
    return [sum(b[i] * rows[i][j] for i in range(5)) for j in range(5)]


@pytest.fixture(scope="module")
def paper_run() -> Trajectory:
    model = reference.reference_model()
    x = reference.ground_truth(80)
    return run_closed_loop(model, ThresholdPolicy(model), x, reference.true_state(x), reference.measure)


def test_transition_table_matches_the_described_construction() -> None:
    t = reference.reference_transition()
    for i in range(5):
        assert t[i].tolist() == pytest.approx(hand_transition_row(i), abs=1e-15)
    # the rounded table of the description
    assert t[0, 0] == pytest.approx(0.993122, abs=5e-7)
    assert t[1, 0] == pytest.approx(0.002747, abs=5e-7)
    assert t[4, 4] == pytest.approx(0.993789, abs=5e-7)
    assert t[4, 3] == pytest.approx(0.002484, abs=5e-7)


def test_reference_model_uses_theoretical_lq_and_sigma() -> None:
    m = reference.reference_model()
    assert m.controls == (16, 32)
    assert m.obs_mean[0].tolist() == THEO16
    assert m.obs_mean[1].tolist() == THEO32
    assert np.all(m.obs_sigma == pytest.approx(0.2121320343559643))
    assert m.prior.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_ground_truth_follows_the_piecewise_schedule() -> None:
    x = reference.ground_truth(80)
    assert x[0] == 0.0
    assert x[1] == pytest.approx(0.4)
    assert x[10] == 3.9999999999999996  # ten float additions of 0.4 stay just below 4
    assert np.all(x[10:22] == x[10])
    assert x[30] == pytest.approx(0.4)  # nine steps down (ts 21..29) end at 0.4, not 0
    assert np.all(np.diff(x[30:42]) == 0)
    assert x[50] == pytest.approx(4.0)
    assert x[70] == pytest.approx(0.4)


def test_measurement_interpolates_the_observed_table() -> None:
    assert reference.measure(0.4, 16) == pytest.approx(35.6)
    assert reference.measure(2.4, 32) == pytest.approx(2.936)
    assert reference.measure(4.0, 16) == pytest.approx(241.0)
    assert reference.measure(0.0, 32) == pytest.approx(1.56)


def test_first_steps_match_hand_computation(paper_run: Trajectory) -> None:
    # step 0: prior is surely state 0, so P(state >= 2) = 0 and 16 threads run; 32 is observed
    assert paper_run.threads[0] == 16
    assert paper_run.lq[0] == 32.0
    assert paper_run.filtered[0].tolist() == pytest.approx([1, 0, 0, 0, 0], abs=1e-12)
    # step 1: prediction is transition row 0; P(state >= 2) = 3 * 0.00125 / 0.90875
    assert paper_run.predicted[1].tolist() == pytest.approx(hand_transition_row(0), abs=1e-15)
    assert float(paper_run.predicted[1][2:].sum()) == pytest.approx(3 * 0.00125 / 0.90875, rel=1e-12)
    assert paper_run.threads[1] == 16
    # steps 0..5 under 16 threads, computed independently
    # observed-table interpolation at x = 0, 0.4, ..., 2.0: 32 + 9x below x = 1, 41 + 17(x - 1) above
    observed = [32.0, 35.6, 39.2, 44.4, 51.2, 58.0]
    assert paper_run.lq[:6].tolist() == pytest.approx(observed)
    b = [1.0, 0.0, 0.0, 0.0, 0.0]
    for t, obs in enumerate(observed):
        post = hand_filter_step(b, obs, THEO16)
        assert paper_run.filtered[t].tolist() == pytest.approx(post, abs=1e-12)
        b = hand_propagate(post)
    # the estimate follows the nearest theoretical value: states 0,0,1,1,1,2 at x = 0..2
    assert [int(np.argmax(paper_run.filtered[t])) for t in range(6)] == [0, 0, 1, 1, 1, 2]


def test_first_32_thread_step_matches_hand_computation(paper_run: Trajectory) -> None:
    # step 5 (x = 2.0) observed 58 under 16 threads: surely state 2, so step 6 runs 32 threads
    assert paper_run.threads[5] == 16 and paper_run.threads[6] == 32
    pred = hand_transition_row(2)  # prediction from a one-hot state 2
    assert paper_run.predicted[6].tolist() == pytest.approx(pred, abs=1e-12)
    obs = 2.56 + 0.4 * (3.5 - 2.56)  # x = 2.4 on the observed 32-thread table
    assert paper_run.lq[6] == pytest.approx(obs)
    post = hand_filter_step(pred, obs, THEO32)
    assert paper_run.filtered[6].tolist() == pytest.approx(post, rel=1e-9)
    assert post[2] == pytest.approx(0.9775994, abs=1e-6)


def test_switching_steps_and_lags_of_the_reference(paper_run: Trajectory) -> None:
    assert switch_steps(paper_run.threads) == [(6, 32), (37, 16), (46, 32), (77, 16)]
    events = lag_events(ideal_threads(paper_run.true_state), paper_run.threads)
    assert [(e.kind, e.true_step, e.lag) for e in events] == [
        ("rise", 4, 2),
        ("fall", 28, 9),
        ("rise", 44, 2),
        ("fall", 68, 9),
    ]


def test_switch_back_happens_when_p_high_drops_below_half(paper_run: Trajectory) -> None:
    # the belief drifts away from state 4 while 1.936 is observed under 32 threads (steps 30..36)
    p36 = float(paper_run.predicted[36][2:].sum())
    p37 = float(paper_run.predicted[37][2:].sum())
    assert p36 >= 0.5 > p37
    assert p37 == pytest.approx(0.49274, abs=1e-5)


def test_plateau_posterior_is_the_fixed_point_of_the_32_thread_filter(paper_run: Trajectory) -> None:
    # independent: iterate the plain-Python filter with obs 3.56 under 32 threads until it settles
    b = [0.0, 0.0, 0.0, 0.0, 1.0]
    post = b
    for _ in range(200):
        post = hand_filter_step(b, reference.measure(4.0, 32), THEO32)
        b = hand_propagate(post)
    assert paper_run.filtered[20].tolist() == pytest.approx(post, rel=1e-6)
    # the same numbers were logged by the original twin
    assert post == pytest.approx(
        [3.4533839e-07, 2.8069071e-06, 2.1335730e-05, 3.2775520e-04, 0.99964776], rel=1e-5
    )


def test_matches_the_original_twins_logged_smoothing_and_prediction(paper_run: Trajectory) -> None:
    """Smoothed D6 and the 11-step prediction after 16 observations, as logged by the original."""
    model = reference.reference_model()
    seq = dbn.ObservedSequence(paper_run.lq[:16], paper_run.threads[:16])
    sm = dbn.smooth(model, seq)
    logged_d6 = [
        1.10759352004938e-05,
        7.850692766058487e-05,
        0.09501847081718105,
        0.0018255295077388488,
        0.903066416812219,
    ]
    assert sm[6].tolist() == pytest.approx(logged_d6, rel=1e-8)
    pred = dbn.predict(model, sm[-1], 11, ThresholdPolicy(model).state_controls())
    logged_first = [
        0.0012426286514124023,
        0.0012450920075714538,
        0.0012638669641291073,
        0.0028087185812932093,
        0.9934396937955938,
    ]
    logged_last = [
        0.013248002901317371,
        0.01325171937796322,
        0.013358648861655973,
        0.026073761838633414,
        0.93406786702043,
    ]
    assert pred[0].tolist() == pytest.approx(logged_first, rel=1e-8)
    assert pred[10].tolist() == pytest.approx(logged_last, rel=1e-8)


def test_eleven_step_prediction_is_repeated_transition(paper_run: Trajectory) -> None:
    assert paper_run.forecast.shape == (11, 5)
    b = paper_run.filtered[-1].tolist()
    for k in range(11):
        b = hand_propagate(b)
        assert paper_run.forecast[k].tolist() == pytest.approx(b, abs=1e-14)
    # the run ends surely in state 0 (16 threads, x = 0.4): the forecast is row 0 of T^k
    assert paper_run.forecast[0].tolist() == pytest.approx(hand_transition_row(0), abs=1e-12)
    assert paper_run.forecast[10][0] == pytest.approx(0.927577597103, abs=1e-10)
    assert list(paper_run.forecast_threads) == [16] * 11


def test_original_planner_would_always_choose_32_threads() -> None:
    q = original_planner_q(reference.reference_model())
    q16, q32 = q[:, 0], q[:, 1]
    assert np.all(q32 > q16)
    assert q32.min() == pytest.approx(1.3228, abs=1e-3) and q32.max() == pytest.approx(1.3847, abs=1e-3)
    assert q16[0] == pytest.approx(-1.2933, abs=1e-3) and q16[4] == pytest.approx(-22.7562, abs=1e-3)
    # hand check of state 0: health 1 - 1.96/10, control -0.25, plus the discounted future value
    v = 0.6 * q32  # V = gamma * max_c Q
    row0 = hand_transition_row(0)
    assert q32[0] == pytest.approx(
        1 - 0.196 - 0.25 + sum(a * b for a, b in zip(row0, v, strict=True)), abs=1e-9
    )
