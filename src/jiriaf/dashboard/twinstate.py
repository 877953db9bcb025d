"""The digital twin's latest word on a workflow, as recorded in the JCS event trail.

Whoever runs the twin against a workflow (the demo, ``jiriaf twin live``) appends one event per
step with ``action = "twin.decision"``, ``subject_kind = "workflow"``, ``subject_id`` and
``request_id`` = the workflow (request) id, and ``data`` of this shape (schema 1)::

    {
      "schema": 1,
      "step": 12,                                  # the twin's step counter
      "state_labels": ["100Hz", "130Hz", "166Hz"], # names of the hidden states
      "probabilities": [0.05, 0.15, 0.80],         # P(state | measurements so far), one per label
      "lq": 41.7,                                  # the measured queue length (null if none)
      "threads": 16,                               # the thread count in force while measuring
      "recommended_threads": 32,                   # what the twin recommends for the next step
      "applied": true,                             # whether the recommendation was enacted
      "detail": "asked the central service ..."    # what enacting did, or why not (may be "")
    }

:func:`decision_data` builds it from a :class:`jiriaf.twin.live.LiveStep`; :func:`parse_decision`
reads it back and ignores anything malformed (a bad event never breaks the dashboard). A twin that
runs in another process reports a step with ``POST /api/v1/dashboard/workflows/{id}/twin`` and this
body (the workflow owner's or an admin's token), which records the event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from jiriaf.twin.live import LiveStep

TWIN_DECISION = "twin.decision"
SCHEMA = 1
MAX_STATES = 64
MAX_LABEL = 64
MAX_DETAIL = 2000


class TwinDecision(BaseModel):
    """One twin step as the dashboard shows it (build it with :func:`parse_decision`)."""

    step: int
    state_labels: list[str]
    probabilities: list[float]
    lq: float | None
    threads: int
    recommended_threads: int
    applied: bool
    detail: str = ""

    def data(self) -> dict[str, Any]:
        """The event ``data`` of this decision."""
        return {"schema": SCHEMA, **self.model_dump()}

    @property
    def likely_state(self) -> str:
        """The label of the most probable state."""
        best = max(range(len(self.probabilities)), key=self.probabilities.__getitem__)
        return self.state_labels[best]


def decision_data(item: LiveStep, state_labels: Sequence[str]) -> dict[str, Any]:
    """The ``data`` of a ``twin.decision`` event for one step of the live twin."""
    est = item.estimate
    probabilities = [float(p) for p in est.filtered]
    if len(probabilities) != len(state_labels):
        raise ValueError(f"{len(probabilities)} state probabilities but {len(state_labels)} state labels")
    return {
        "schema": SCHEMA,
        "step": int(est.step),
        "state_labels": [str(label) for label in state_labels],
        "probabilities": probabilities,
        "lq": float(est.lq) if math.isfinite(est.lq) else None,
        "threads": int(est.threads),
        "recommended_threads": int(est.recommended_threads),
        "applied": item.applied is not None,
        "detail": item.applied or "",
    }


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_decision(data: Any) -> TwinDecision | None:
    """The decision in an event's ``data``, or None when it is not a well-formed schema-1 decision."""
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
        return None
    labels = data.get("state_labels")
    probs = data.get("probabilities")
    if not isinstance(labels, list) or not isinstance(probs, list) or not labels or len(labels) != len(probs):
        return None
    if len(labels) > MAX_STATES or not all(
        isinstance(label, str) and len(label) <= MAX_LABEL for label in labels
    ):
        return None
    numbers = [_number(p) for p in probs]
    clean = [p for p in numbers if p is not None and p >= 0.0]
    if len(clean) != len(probs) or not math.isclose(sum(clean), 1.0, abs_tol=1e-3):
        return None
    step, threads, recommended = (
        _int(data.get("step")),
        _int(data.get("threads")),
        _int(data.get("recommended_threads")),
    )
    applied = data.get("applied")
    if step is None or threads is None or recommended is None or not isinstance(applied, bool):
        return None
    lq_raw = data.get("lq")
    lq = _number(lq_raw)
    if lq_raw is not None and lq is None:
        return None
    detail = data.get("detail", "")
    if isinstance(detail, str) and len(detail) > MAX_DETAIL:
        return None
    return TwinDecision(
        step=step,
        state_labels=list(labels),
        probabilities=clean,
        lq=lq,
        threads=threads,
        recommended_threads=recommended,
        applied=applied,
        detail=detail if isinstance(detail, str) else "",
    )
