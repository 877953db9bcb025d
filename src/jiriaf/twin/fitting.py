"""Fit the twin's tables from recorded data instead of setting them by hand.

Recorded data is a CSV with one row per step and the columns

* ``lq``      - the measured queue length (required);
* ``threads`` - the thread count enacted while measuring (required; ``16c``/``32c`` also accepted);
* ``run``     - an identifier of independent recordings (optional; rows are grouped by it, in order);
* ``state``   - the true load state when known (optional; used by ``--supervised``).

The default fit is expectation-maximisation (Baum-Welch) of the transition table and of a Gaussian on
log(Lq) per (control, state), started from the reference model. Recording the asset while the load
wanders and the thread count is switched now and then (:func:`generate_training_runs`) gives data in
which every state is seen under both controls.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from jiriaf.errors import UserError
from jiriaf.twin import dbn, reference
from jiriaf.twin.model import IntArray, TwinModel


@dataclass(frozen=True)
class Recording:
    """Sequences read from or written to a training CSV, with true states when known."""

    sequences: list[dbn.ObservedSequence]
    states: list[IntArray] | None
    run_ids: list[str]

    @property
    def steps(self) -> int:
        return sum(len(s) for s in self.sequences)


def _parse_threads(value: str) -> int:
    v = value.strip().lower().removesuffix("c")
    return int(float(v))


def read_recording(path: Path) -> Recording:
    """Read a training CSV; any problem is a one-line :class:`UserError`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read data file {path}: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in ("lq", "threads") if c not in fields]
    if missing:
        raise UserError(f"{path} is not a twin recording: missing column(s) {', '.join(missing)}")
    has_state = "state" in fields
    runs: dict[str, tuple[list[float], list[int], list[int]]] = {}
    for line_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        try:
            lq = float(row["lq"])
            threads = _parse_threads(row["threads"])
            state = int(float(row["state"])) if has_state and row.get("state") else -1
        except ValueError:
            raise UserError(f"{path}, line {line_no}: lq, threads and state must be numbers") from None
        if not math.isfinite(lq) or lq < 0:
            raise UserError(f"{path}, line {line_no}: lq must be a finite number >= 0")
        run = row.get("run", "") or "0"
        runs.setdefault(run, ([], [], []))
        runs[run][0].append(lq)
        runs[run][1].append(threads)
        runs[run][2].append(state)
    if not runs:
        raise UserError(f"{path} has no data rows")
    seqs = [
        dbn.ObservedSequence(lq=np.asarray(v[0], dtype=np.float64), threads=np.asarray(v[1], dtype=np.int64))
        for v in runs.values()
    ]
    states: list[IntArray] | None = None
    if has_state and all(s >= 0 for v in runs.values() for s in v[2]):
        states = [np.asarray(v[2], dtype=np.int64) for v in runs.values()]
    return Recording(sequences=seqs, states=states, run_ids=list(runs))


def write_recording(path: Path, rec: Recording, truth: Iterable[np.ndarray] | None = None) -> None:
    """Write a training CSV (with the continuous load index ``x`` when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    truths = list(truth) if truth is not None else None
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        header = ["run", "step", "threads", "lq"]
        if rec.states is not None:
            header.append("state")
        if truths is not None:
            header.append("x")
        w.writerow(header)
        for i, seq in enumerate(rec.sequences):
            for t in range(len(seq)):
                row: list[str | int | float] = [
                    rec.run_ids[i],
                    t,
                    int(seq.threads[t]),
                    round(float(seq.lq[t]), 6),
                ]
                if rec.states is not None:
                    row.append(int(rec.states[i][t]))
                if truths is not None:
                    row.append(round(float(truths[i][t]), 6))
                w.writerow(row)


def generate_training_runs(
    runs: int = 20,
    steps: int = 100,
    seed: int = 7,
    move_prob: float = 0.15,
    switch_prob: float = 0.25,
    noise: float = 0.05,
) -> tuple[Recording, list[np.ndarray]]:
    """Record the reference asset at the sender-rate settings of Tables 8/9 under an exploring controller.

    The load sits at one of the five table settings (load index 0..4) and moves to a neighbouring
    setting with probability ``move_prob`` per step; the thread count flips with probability
    ``switch_prob``; every measurement is the observed Lq of the setting times log-normal noise of
    relative size ``noise``. This is a different load pattern from the paper scenario (no ramps, no
    intermediate loads), so a model fitted on it is tested out of sample there.
    """
    rng = np.random.default_rng(seed)
    seqs: list[dbn.ObservedSequence] = []
    states: list[IntArray] = []
    truths: list[np.ndarray] = []
    for _ in range(runs):
        level = int(rng.integers(0, 5))
        threads = int(rng.choice(reference.CONTROLS))
        xs, us, ys = [], [], []
        for _t in range(steps):
            xs.append(float(level))
            us.append(threads)
            ys.append(reference.measure(float(level), threads) * math.exp(noise * rng.standard_normal()))
            if rng.random() < move_prob:
                step = 1 if rng.random() < 0.5 else -1
                level = level + step if 0 <= level + step <= 4 else level - step
            if rng.random() < switch_prob:
                threads = 32 if threads == 16 else 16
        xa = np.asarray(xs)
        truths.append(xa)
        seqs.append(dbn.ObservedSequence(lq=np.asarray(ys), threads=np.asarray(us, dtype=np.int64)))
        states.append(reference.true_state(xa))
    rec = Recording(sequences=seqs, states=states, run_ids=[str(i) for i in range(runs)])
    return rec, truths


def initial_model(log_space: bool = True) -> TwinModel:
    """The starting point of a fit: the reference tables, on log(Lq) when ``log_space``.

    The prior is uniform: recorded runs may start in any state (the reference's certain start in
    state 0 would force the first step of every run there).
    """
    ref = reference.reference_model()
    uniform = np.full(ref.n_states, 1.0 / ref.n_states)
    if not log_space:
        return replace(
            ref, name="initial", zero_below_eps=False, prior=uniform, obs_sigma=np.full((2, 5), 1.0)
        )
    return replace(
        ref,
        name="initial",
        log_space=True,
        zero_below_eps=False,
        prior=uniform,
        obs_mean=np.log(ref.obs_mean),
        obs_sigma=np.full((2, 5), 0.3),
    )


@dataclass(frozen=True)
class FitReport:
    model: TwinModel
    method: str
    iterations: int
    converged: bool
    log_likelihood: list[float]
    steps: int
    runs: int


def fit_recording(
    rec: Recording,
    *,
    supervised: bool = False,
    init: TwinModel | None = None,
    max_iter: int = 60,
    sigma_floor: float = 0.02,
    name: str = "fitted",
) -> FitReport:
    """Fit a model to a recording (EM by default; counting when ``supervised`` and states are known)."""
    start = init if init is not None else initial_model(log_space=True)
    for seq in rec.sequences:
        for n in set(seq.threads.tolist()):
            if int(n) not in start.controls:
                raise UserError(f"the data uses {n} threads; the model knows only {list(start.controls)}")
    if supervised:
        if rec.states is None:
            raise UserError("--supervised needs a 'state' column with a value on every row")
        model = dbn.supervised_fit(
            start, rec.sequences, rec.states, sigma_floor=sigma_floor, name=f"{name}-supervised"
        )
        ll = sum(dbn.forward(model, s).log_likelihood for s in rec.sequences)
        return FitReport(model, "supervised", 1, True, [ll], rec.steps, len(rec.sequences))
    res = dbn.em_fit(start, rec.sequences, max_iter=max_iter, sigma_floor=sigma_floor, name=name)
    model = replace(
        res.model,
        notes={"fit": "expectation-maximisation", "steps": rec.steps, "runs": len(rec.sequences)},
    )
    return FitReport(
        model, "em", res.iterations, res.converged, res.log_likelihood, rec.steps, len(rec.sequences)
    )


def format_model(model: TwinModel) -> str:
    """Human-readable tables of a model."""
    space = "log(Lq)" if model.log_space else "Lq"
    lines = [f"model {model.name}: Gaussian on {space}"]
    head = "state " + " ".join(f"{f'{c}c mean':>10} {f'{c}c sd':>8} {f'{c}c Lq':>8}" for c in model.controls)
    lines.append(head)
    for s in range(model.n_states):
        cells = []
        for c in range(model.n_controls):
            cells.append(
                f"{model.obs_mean[c, s]:>10.4f} {model.obs_sigma[c, s]:>8.4f} {model.typical_lq(c, s):>8.2f}"
            )
        lines.append(f"{model.state_labels[s]:>5} " + " ".join(cells))
    lines.append("transition (first control):")
    for s in range(model.n_states):
        lines.append("  " + " ".join(f"{p:.4f}" for p in model.transition[0, s]))
    return "\n".join(lines)
