"""The online digital twin: assimilate one queue-length measurement per step and recommend a control.

Step ``t`` of the loop:

1. the control for step ``t`` is the policy's choice on P(D_t | O_0..O_{t-1}) (the prior at t = 0);
2. the system runs with that control and the queue length O_t is measured;
3. :meth:`DigitalTwin.observe` folds O_t into the filter (likelihood under the enacted control),
   predicts D_{t+1} and returns the estimate and the recommendation for step t+1.

The past can be re-estimated with all the evidence (:meth:`smoothed`) and the future predicted
``horizon`` steps ahead (:meth:`forecast`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jiriaf.twin import dbn
from jiriaf.twin.model import FloatArray, TwinModel
from jiriaf.twin.policy import Policy


@dataclass(frozen=True)
class StepEstimate:
    """What the twin knows after assimilating one measurement."""

    step: int
    lq: float
    threads: int
    filtered: FloatArray
    next_belief: FloatArray
    recommended_threads: int

    @property
    def mean_state(self) -> float:
        return float(self.filtered @ np.arange(self.filtered.shape[0]))

    @property
    def map_state(self) -> int:
        return int(np.argmax(self.filtered))

    def p_at_least(self, state: int) -> float:
        return float(self.filtered[state:].sum())


class DigitalTwin:
    """Recursive state estimation and control recommendation for one queue."""

    def __init__(self, model: TwinModel, policy: Policy, horizon: int = 11) -> None:
        self.model = model
        self.policy = policy
        self.horizon = horizon
        self._belief = model.prior.copy()  # P(D_t | O_<t) for the next step t
        self._lq: list[float] = []
        self._threads: list[int] = []
        self._filtered: list[FloatArray] = []

    @property
    def steps(self) -> int:
        return len(self._lq)

    @property
    def next_belief(self) -> FloatArray:
        """P(D_t | O_0..O_{t-1}) for the step about to run."""
        return self._belief.copy()

    def recommend(self) -> int:
        """Thread count for the step about to run."""
        return self.model.controls[self.policy.choose(self._belief)]

    def observe(self, lq: float, threads: int) -> StepEstimate:
        """Assimilate the queue length measured while ``threads`` workers were running."""
        c = self.model.control_index(threads)
        post = dbn.filter_step(self.model, self._belief, float(lq), c)
        self._lq.append(float(lq))
        self._threads.append(int(threads))
        self._filtered.append(post)
        self._belief = dbn.propagate(self.model, post, c)
        return StepEstimate(
            step=len(self._lq) - 1,
            lq=float(lq),
            threads=int(threads),
            filtered=post,
            next_belief=self._belief.copy(),
            recommended_threads=self.recommend(),
        )

    def sequence(self) -> dbn.ObservedSequence:
        return dbn.ObservedSequence(
            lq=np.asarray(self._lq, dtype=np.float64), threads=np.asarray(self._threads, dtype=np.int64)
        )

    def filtered(self) -> FloatArray:
        return np.asarray(self._filtered).reshape(len(self._filtered), self.model.n_states)

    def smoothed(self) -> FloatArray:
        """P(D_t | all measurements so far) for every past step."""
        if not self._lq:
            return np.zeros((0, self.model.n_states))
        return dbn.smooth(self.model, self.sequence())

    def forecast(self, steps: int | None = None) -> FloatArray:
        """Beliefs for the next ``steps`` (default: the horizon) steps after the last measurement."""
        k = self.horizon if steps is None else steps
        last = self._filtered[-1] if self._filtered else self.model.prior
        return dbn.predict(self.model, last, k, self.policy.state_controls())

    def forecast_controls(self, steps: int | None = None) -> list[int]:
        """The control the policy would choose on each predicted belief."""
        return [self.model.controls[self.policy.choose(b)] for b in self.forecast(steps)]
