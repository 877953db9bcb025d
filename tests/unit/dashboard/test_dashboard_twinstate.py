"""jiriaf.dashboard.twinstate: the ``twin.decision`` event data, written by the live twin, read back
by the dashboard; malformed data is ignored rather than shown or raised."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from jiriaf.dashboard.twinstate import SCHEMA, TWIN_DECISION, decision_data, parse_decision
from jiriaf.twin import live as lv
from jiriaf.twin.digital_twin import DigitalTwin, StepEstimate
from jiriaf.twin.policy import ThresholdPolicy

pytestmark = pytest.mark.unit


def good() -> dict[str, Any]:
    return {
        "schema": 1,
        "step": 7,
        "state_labels": ["100Hz", "130Hz", "166Hz"],
        "probabilities": [0.1, 0.2, 0.7],
        "lq": 12.5,
        "threads": 16,
        "recommended_threads": 32,
        "applied": True,
        "detail": "asked the central service to run 32 threads",
    }


def test_the_event_action_and_schema_are_fixed() -> None:
    assert TWIN_DECISION == "twin.decision"
    assert SCHEMA == 1


def test_a_well_formed_decision_is_read_back() -> None:
    d = parse_decision(good())
    assert d is not None
    assert d.step == 7 and d.threads == 16 and d.recommended_threads == 32 and d.applied
    assert d.state_labels == ["100Hz", "130Hz", "166Hz"]
    assert d.probabilities == [0.1, 0.2, 0.7]
    assert d.lq == 12.5
    assert d.likely_state == "166Hz"
    assert d.detail.startswith("asked")


def test_optional_fields_may_be_absent_or_null() -> None:
    data = good()
    del data["detail"]
    data["lq"] = None
    data["applied"] = False
    d = parse_decision(data)
    assert d is not None and d.lq is None and d.detail == "" and not d.applied


def test_the_decision_gives_back_its_event_data() -> None:
    d = parse_decision(good())
    assert d is not None and d.data() == good()


def test_limits_are_inclusive() -> None:
    labels = [f"s{i}" for i in range(64)]
    many = parse_decision(
        {**good(), "state_labels": labels, "probabilities": [1 / 64] * 64, "detail": "x" * 2000}
    )
    assert many is not None and len(many.state_labels) == 64


def test_a_non_text_detail_is_dropped_not_shown() -> None:
    d = parse_decision({**good(), "detail": {"x": 1}})
    assert d is not None and d.detail == ""


@pytest.mark.parametrize(
    "change",
    [
        {"schema": 2},
        {"schema": None},
        {"state_labels": []},
        {"state_labels": ["a", "b"]},  # fewer labels than probabilities
        {"state_labels": ["a", "b", 3]},
        {"state_labels": "abc"},
        {"probabilities": [0.5, 0.5, 0.5]},  # does not sum to 1
        {"probabilities": [-0.1, 0.4, 0.7]},
        {"probabilities": [0.1, 0.2, float("nan")]},
        {"probabilities": [0.1, 0.2, "0.7"]},
        {"probabilities": [0.1, 0.2, True]},
        {"step": "7"},
        {"step": 7.0},
        {"threads": None},
        {"recommended_threads": True},
        {"applied": "yes"},
        {"applied": 1},
        {"lq": "12"},
        {"lq": float("inf")},
        {"state_labels": ["s"] * 65, "probabilities": [1 / 65] * 65},  # more states than any twin has
        {"state_labels": ["x" * 65, "b", "c"]},
        {"detail": "x" * 2001},
    ],
)
def test_malformed_decisions_are_ignored(change: dict[str, Any]) -> None:
    assert parse_decision({**good(), **change}) is None


@pytest.mark.parametrize("data", [None, [], "twin", 3, {}])
def test_data_that_is_not_an_object_is_ignored(data: Any) -> None:
    assert parse_decision(data) is None


def estimate(filtered: list[float], lq: float = 3.0) -> StepEstimate:
    arr = np.array(filtered)
    return StepEstimate(step=4, lq=lq, threads=16, filtered=arr, next_belief=arr, recommended_threads=32)


def test_decision_data_of_a_live_step_round_trips_through_json() -> None:
    item = lv.LiveStep(
        estimate([0.25, 0.75]), context="", threshold_state=1, applied="patched ns/recv RECV_THREADS=32"
    )
    data = json.loads(json.dumps(decision_data(item, ["low", "high"])))
    assert data == {
        "schema": 1,
        "step": 4,
        "state_labels": ["low", "high"],
        "probabilities": [0.25, 0.75],
        "lq": 3.0,
        "threads": 16,
        "recommended_threads": 32,
        "applied": True,
        "detail": "patched ns/recv RECV_THREADS=32",
    }
    parsed = parse_decision(data)
    assert parsed is not None and parsed.likely_state == "high" and parsed.applied


def test_decision_data_of_an_unapplied_step_with_infinite_lq() -> None:
    item = lv.LiveStep(estimate([1.0, 0.0], lq=float("inf")), context="", threshold_state=1, applied=None)
    data = decision_data(item, ["low", "high"])
    assert data["applied"] is False and data["detail"] == "" and data["lq"] is None
    assert parse_decision(json.loads(json.dumps(data))) is not None


def test_decision_data_refuses_labels_that_do_not_match_the_states() -> None:
    item = lv.LiveStep(estimate([0.5, 0.5]), context="", threshold_state=1, applied=None)
    with pytest.raises(ValueError, match="2 state probabilities but 3 state labels"):
        decision_data(item, ["a", "b", "c"])


async def test_every_step_of_the_live_twin_on_the_simulator_makes_a_readable_decision() -> None:
    model = lv.queueing_model()
    src = lv.SimulatorSource([100.0] * 3 + [166.0] * 6, seconds_per_step=30.0, threads=16, seed=1)
    twin = DigitalTwin(model, ThresholdPolicy(model))
    steps = await lv.run_live(twin, src, steps=9, actuator=lv.SimulatorActuator(src))
    parsed = [parse_decision(json.loads(json.dumps(decision_data(s, model.state_labels)))) for s in steps]
    assert all(p is not None for p in parsed)
    assert [p.recommended_threads for p in parsed if p is not None] == [s.recommended for s in steps]
    assert [p.applied for p in parsed if p is not None] == [s.applied is not None for s in steps]
    assert any(p.applied for p in parsed if p is not None)  # the load rose: the twin acted
