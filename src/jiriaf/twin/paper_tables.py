"""Check the paper's Tables 8 and 9 against the M/M/1 formula, row by row.

For each printed row (lambda, mu, Obs. Lq, Calc. Lq) this computes:

* ``lq_printed_inputs``: Lq = lambda^2 / (mu (mu - lambda)) from the printed lambda and mu;
* the difference to the printed "Calc. Lq", absolute and relative;
* ``mu_implied_calc``: the mu that makes the formula give the printed "Calc. Lq" exactly;
* ``lq_exact_mu``: Lq with the service rate the calculation evidently used (500/3 Hz for 16 threads,
  2000/9 Hz for 32), rounded as printed, to show the printed column is reproduced;
* ``rho_obs`` and ``mu_implied_obs``: the utilisation and service rate under which an M/M/1 queue
  would have the printed "Obs. Lq";
* the relative deviation of "Obs. Lq" from the printed "Calc. Lq".
"""

from __future__ import annotations

from dataclasses import dataclass

from jiriaf.twin.queueing import PAPER_MU_16, PAPER_MU_32, mm1_lq, mu_from_lq, rho_from_lq
from jiriaf.twin.reference import OBSERVED_LQ, PRINTED_MU, TABLE_RATES, THEORETICAL_LQ

EXACT_MU = {16: PAPER_MU_16, 32: PAPER_MU_32}


@dataclass(frozen=True)
class TableRow:
    table: int  # 8 or 9
    threads: int
    state: int
    lam: float
    mu_printed: float
    obs_lq: float
    calc_lq_printed: float
    lq_printed_inputs: float
    mu_implied_calc: float
    lq_exact_mu: float
    rho_obs: float
    mu_implied_obs: float

    @property
    def calc_diff(self) -> float:
        """Printed Calc. Lq minus the formula on the printed lambda and mu."""
        return self.calc_lq_printed - self.lq_printed_inputs

    @property
    def calc_rel_diff(self) -> float:
        return self.calc_diff / self.lq_printed_inputs

    @property
    def calc_consistent(self) -> bool:
        """True when the printed Calc. Lq matches the printed inputs to the printed precision."""
        return abs(self.calc_diff) <= 0.005 + 1e-12

    @property
    def exact_mu_reproduces(self) -> bool:
        return abs(round(self.lq_exact_mu, 2) - self.calc_lq_printed) <= 0.005 + 1e-12

    @property
    def obs_rel_diff(self) -> float:
        """(Obs. Lq - printed Calc. Lq) / printed Calc. Lq."""
        return (self.obs_lq - self.calc_lq_printed) / self.calc_lq_printed


def compare_tables() -> list[TableRow]:
    rows: list[TableRow] = []
    for table, threads in ((8, 16), (9, 32)):
        mu = PRINTED_MU[threads]
        for state, lam in enumerate(TABLE_RATES):
            calc = THEORETICAL_LQ[threads][state]
            obs = OBSERVED_LQ[threads][state]
            rows.append(
                TableRow(
                    table=table,
                    threads=threads,
                    state=state,
                    lam=lam,
                    mu_printed=mu,
                    obs_lq=obs,
                    calc_lq_printed=calc,
                    lq_printed_inputs=mm1_lq(lam, mu),
                    mu_implied_calc=mu_from_lq(lam, calc),
                    lq_exact_mu=mm1_lq(lam, EXACT_MU[threads]),
                    rho_obs=rho_from_lq(obs),
                    mu_implied_obs=mu_from_lq(lam, obs),
                )
            )
    return rows


def format_tables(rows: list[TableRow]) -> str:
    """A fixed-width report of the comparison, one block per table, plus a summary."""
    lines: list[str] = []
    for table in (8, 9):
        sel = [r for r in rows if r.table == table]
        lines.append(f"Table {table} ({sel[0].threads} threads): M/M/1 Lq = lambda^2 / (mu (mu - lambda))")
        lines.append(
            f"{'state':>5} {'lambda':>7} {'mu':>6} {'Calc.Lq':>8} {'formula':>9} {'diff':>8} {'rel':>7} "
            f"{'mu_for_calc':>11} {'Lq(mu*)':>8} {'Obs.Lq':>7} {'obs/calc':>8} {'rho_obs':>7} "
            f"{'mu_for_obs':>10}"
        )
        for r in sel:
            lines.append(
                f"{r.state:>5} {r.lam:>7.0f} {r.mu_printed:>6.0f} {r.calc_lq_printed:>8.2f} "
                f"{r.lq_printed_inputs:>9.3f} {r.calc_diff:>+8.3f} {r.calc_rel_diff:>+7.1%} "
                f"{r.mu_implied_calc:>11.3f} {r.lq_exact_mu:>8.2f} {r.obs_lq:>7.2f} {r.obs_rel_diff:>+8.1%} "
                f"{r.rho_obs:>7.4f} {r.mu_implied_obs:>10.2f}"
            )
        lines.append("")
    lines.append("Findings:")
    for threads, printed in ((16, 167), (32, 222)):
        sel = [r for r in rows if r.threads == threads]
        bad = [r for r in sel if not r.calc_consistent]
        exact = all(r.exact_mu_reproduces for r in sel)
        worst = max(sel, key=lambda r: abs(r.calc_rel_diff))
        lo = min(abs(r.calc_diff) for r in sel)
        hi = max(abs(r.calc_diff) for r in sel)
        lines.append(
            f"- {threads} threads: {len(bad)} of {len(sel)} printed Calc. Lq values do not follow from the "
            f"printed lambda and mu = {printed} Hz: off by {lo:.3f}..{hi:.3f} "
            f"(worst: state {worst.state}, printed {worst.calc_lq_printed:.2f} vs formula "
            f"{worst.lq_printed_inputs:.3f}, {worst.calc_rel_diff:+.1%})."
        )
        if exact:
            lines.append(
                f"  All five are reproduced to the printed precision with mu = {EXACT_MU[threads]:.4f} Hz "
                f"(the printed {printed} is this value rounded)."
            )
    lines.append(
        "- mu(32) / mu(16) = 4/3 exactly for the service rates behind Calc. Lq; lambda is the same per state."
    )
    obs16 = [r.mu_implied_obs for r in rows if r.threads == 16]
    obs32 = [r.mu_implied_obs for r in rows if r.threads == 32]
    rel16 = [abs(r.obs_rel_diff) for r in rows if r.threads == 16]
    lines.append(
        f"- Obs. Lq (16 threads) is M/M/1-like: it implies mu = {min(obs16):.2f}..{max(obs16):.2f} Hz, "
        f"{min(rel16):.1%}..{max(rel16):.1%} below Calc. Lq. Obs. Lq (32 threads) is not: it spans "
        f"{min(OBSERVED_LQ[32]):.2f}..{max(OBSERVED_LQ[32]):.2f} where M/M/1 gives "
        f"{min(THEORETICAL_LQ[32]):.2f}..{max(THEORETICAL_LQ[32]):.2f} (-20%..+64%), implying "
        f"mu = {min(obs32):.1f}..{max(obs32):.1f} Hz, no single service rate."
    )
    return "\n".join(lines)


def rows_as_records(rows: list[TableRow]) -> list[dict[str, float | int | bool]]:
    """Rows as flat dictionaries (for a CSV)."""
    return [
        {
            "table": r.table,
            "threads": r.threads,
            "state": r.state,
            "lambda": r.lam,
            "mu_printed": r.mu_printed,
            "calc_lq_printed": r.calc_lq_printed,
            "lq_from_printed_inputs": round(r.lq_printed_inputs, 6),
            "calc_diff": round(r.calc_diff, 6),
            "calc_rel_diff": round(r.calc_rel_diff, 6),
            "calc_consistent": r.calc_consistent,
            "mu_implied_by_calc": round(r.mu_implied_calc, 6),
            "lq_with_exact_mu": round(r.lq_exact_mu, 6),
            "obs_lq": r.obs_lq,
            "obs_rel_diff_to_calc": round(r.obs_rel_diff, 6),
            "rho_implied_by_obs": round(r.rho_obs, 6),
            "mu_implied_by_obs": round(r.mu_implied_obs, 6),
        }
        for r in rows
    ]
