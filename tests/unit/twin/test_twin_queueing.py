"""M/M/1 and M/M/c formulas, the paper's tables and the discrete-event simulator."""

from __future__ import annotations

import math

import pytest

from jiriaf.twin import queueing as q
from jiriaf.twin.paper_tables import compare_tables, format_tables
from jiriaf.twin.simulator import QueueSimulator

pytestmark = pytest.mark.unit


def test_mm1_formulas() -> None:
    assert q.mm1_lq(162, 167) == pytest.approx(162**2 / (167 * 5))
    assert q.mm1_lq(3, 4) == pytest.approx(2.25)  # rho = 0.75: 0.5625 / 0.25
    assert q.mm1_l(3, 4) == pytest.approx(3.0)
    assert q.mm1_wq(3, 4) == pytest.approx(0.75)
    assert q.mm1_lq(5, 5) == math.inf


def test_inverse_of_lq() -> None:
    for rho in (0.1, 0.5, 0.9, 0.996):
        assert q.rho_from_lq(rho * rho / (1 - rho)) == pytest.approx(rho)
    assert q.mu_from_lq(162, 33.74) == pytest.approx(500 / 3, rel=1e-4)


def test_erlang_c_known_values() -> None:
    assert q.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert q.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert q.mmc_lq(3, 4, 1) == pytest.approx(q.mm1_lq(3, 4))
    # many servers at low load almost never queue
    assert q.mmc_lq(100, q.receiver_rate(32), 32) < 1e-3


def test_receiver_rates_of_the_paper() -> None:
    assert q.receiver_rate(16) == pytest.approx(500 / 3)
    assert q.receiver_rate(32) == pytest.approx(2000 / 9)


def test_printed_calc_lq_does_not_follow_from_printed_lambda_and_mu() -> None:
    rows = {(r.table, r.state): r for r in compare_tables()}
    r84 = rows[(8, 4)]
    assert r84.lq_printed_inputs == pytest.approx(166**2 / (167 * 1), rel=1e-12)
    assert r84.lq_printed_inputs == pytest.approx(165.006, abs=1e-3)
    assert r84.calc_diff == pytest.approx(248.0 - 165.006, abs=1e-3)
    assert rows[(8, 0)].lq_printed_inputs == pytest.approx(31.430, abs=1e-3)
    assert all(not r.calc_consistent for r in rows.values())
    # table 9 is off by one unit of the last printed digit only
    assert all(0.005 < abs(r.calc_diff) < 0.012 for r in rows.values() if r.table == 9)


def test_printed_calc_lq_follows_from_the_unrounded_service_rates() -> None:
    for r in compare_tables():
        assert r.exact_mu_reproduces
        exact = 500 / 3 if r.threads == 16 else 2000 / 9
        assert r.mu_implied_calc == pytest.approx(exact, rel=2e-3)


def test_observed_32_thread_lq_is_not_mm1() -> None:
    rows = [r for r in compare_tables() if r.threads == 32]
    mus = [r.mu_implied_obs for r in rows]
    assert max(mus) - min(mus) > 25  # no single service rate explains them
    assert rows[3].obs_rel_diff == pytest.approx(3.5 / 2.14 - 1)
    text = format_tables(compare_tables())
    assert "Table 8" in text and "Table 9" in text and "166.6667" in text


def test_pooled_simulator_matches_mm1() -> None:
    sim = QueueSimulator(120.0, 16, mode="pooled", seed=11)
    sim.run_for(20)
    st = sim.run_for(600)
    theory = q.mm1_lq(120, q.receiver_rate(16))
    assert st.mean_queue == pytest.approx(theory, rel=0.15)
    # Little's law on the same interval
    assert st.mean_wait * st.arrivals / st.duration == pytest.approx(st.mean_queue, rel=0.05)


def test_threaded_simulator_matches_erlang_c() -> None:
    sim = QueueSimulator(150.0, 16, mode="threads", seed=5)
    sim.run_for(20)
    st = sim.run_for(600)
    theory = q.mmc_lq(150, q.receiver_rate(16), 16)
    assert st.mean_queue == pytest.approx(theory, rel=0.2)
    assert st.threads == 16 and st.lam == 150.0


def test_simulator_is_reproducible_with_a_seed() -> None:
    a = QueueSimulator(140.0, 16, seed=42).run_for(30)
    b = QueueSimulator(140.0, 16, seed=42).run_for(30)
    assert a == b


def test_more_threads_drain_a_backlog() -> None:
    sim = QueueSimulator(166.0, 16, seed=1)
    for _ in range(4):
        sim.run_for(30)
    backlog = sim.queue_length
    sim.set_threads(32)
    st = sim.run_for(30)
    assert st.threads == 32
    assert st.final_queue < max(backlog, 5)
    assert st.mean_queue < 5


def test_simulator_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        QueueSimulator(10, 0)
    with pytest.raises(ValueError):
        QueueSimulator(10, 4, mode="nope")
    with pytest.raises(ValueError):
        QueueSimulator(10, 4).run_for(0)
