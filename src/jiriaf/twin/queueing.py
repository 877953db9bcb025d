"""Queueing-theory formulas for the streaming queue (sender -> FIFO -> receiver).

The paper models the receiver as a single M/M/1 server whose service rate ``mu`` is the measured
processing rate of the whole receiver (16 or 32 threads). ``Lq`` is the mean number of events waiting
in the FIFO (not counting the ones being processed):

    Lq = rho**2 / (1 - rho) = lambda**2 / (mu * (mu - lambda)),   rho = lambda / mu < 1.

A receiver with ``c`` worker threads that each serve at ``mu / c`` is the M/M/c queue; its ``Lq``
uses the Erlang C probability of waiting. Both are provided so that the simulator can be checked
against theory in either mode.
"""

from __future__ import annotations

import math


def utilisation(lam: float, mu: float) -> float:
    """Traffic intensity rho = lambda / mu."""
    if lam < 0 or mu <= 0:
        raise ValueError("need lambda >= 0 and mu > 0")
    return lam / mu


def mm1_lq(lam: float, mu: float) -> float:
    """Mean queue length (waiting only) of an M/M/1 queue; ``inf`` when unstable (lambda >= mu)."""
    rho = utilisation(lam, mu)
    if rho >= 1.0:
        return math.inf
    return rho * rho / (1.0 - rho)


def mm1_l(lam: float, mu: float) -> float:
    """Mean number in the system (waiting + in service) of an M/M/1 queue."""
    rho = utilisation(lam, mu)
    if rho >= 1.0:
        return math.inf
    return rho / (1.0 - rho)


def mm1_wq(lam: float, mu: float) -> float:
    """Mean time spent waiting in the FIFO (Little's law: Lq = lambda * Wq)."""
    if lam == 0:
        return 0.0
    return mm1_lq(lam, mu) / lam


def rho_from_lq(lq: float) -> float:
    """Invert Lq = rho^2 / (1 - rho) for rho in [0, 1)."""
    if lq < 0:
        raise ValueError("Lq must be >= 0")
    return (-lq + math.sqrt(lq * lq + 4.0 * lq)) / 2.0


def mu_from_lq(lam: float, lq: float) -> float:
    """The M/M/1 service rate that gives mean queue length ``lq`` at arrival rate ``lam``."""
    if lam <= 0 or lq <= 0:
        raise ValueError("need lambda > 0 and Lq > 0")
    return lam / rho_from_lq(lq)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered load a = lambda / mu_server)."""
    if servers < 1:
        raise ValueError("need at least one server")
    rho = offered_load / servers
    if rho >= 1.0:
        return 1.0
    # Sum a^k / k! for k < c computed iteratively to stay finite for large c.
    term = 1.0
    total = 1.0
    for k in range(1, servers):
        term *= offered_load / k
        total += term
    last = term * offered_load / servers  # a^c / c!
    tail = last / (1.0 - rho)
    return tail / (total + tail)


def mmc_lq(lam: float, mu_total: float, servers: int) -> float:
    """Mean queue length of M/M/c where ``servers`` threads share the total rate ``mu_total``."""
    rho = utilisation(lam, mu_total)
    if rho >= 1.0:
        return math.inf
    offered = lam / (mu_total / servers)
    return erlang_c(servers, offered) * rho / (1.0 - rho)


# The receiver's measured processing rates that reproduce the paper's "Calc. Lq" columns exactly:
# mu(16 threads) = 500/3 Hz (printed as 167) and mu(32 threads) = 4/3 of that = 2000/9 Hz (printed 222).
PAPER_MU_16 = 500.0 / 3.0
PAPER_MU_32 = 2000.0 / 9.0
# Scaling exponent: mu(N) = mu16 * (N / 16) ** alpha with mu(32) / mu(16) = 4/3.
THREAD_SCALING_EXPONENT = math.log2(4.0 / 3.0)


def receiver_rate(threads: int, mu16: float = PAPER_MU_16) -> float:
    """Total processing rate of a receiver with ``threads`` workers (sub-linear scaling of the paper)."""
    if threads < 1:
        raise ValueError("need at least one thread")
    return float(mu16 * (threads / 16.0) ** THREAD_SCALING_EXPONENT)
