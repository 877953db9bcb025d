"""The parameters of a digital-twin DBN: states, controls, transition and observation models.

One time slice of the network has a hidden load state ``D_t`` (ordinal, ``0..S-1``), the control
``U_t`` that was enacted during step ``t`` (a receiver thread count) and the observation ``O_t``, the
queue length measured during step ``t``. The conditional probability tables are:

* ``prior[s]`` = P(D_0 = s);
* ``transition[c, i, j]`` = P(D_t = j | D_{t-1} = i, U_{t-1} = controls[c]);
* ``O_t | D_t = s, U_t = controls[c]`` is Gaussian with mean ``obs_mean[c, s]`` and standard deviation
  ``obs_sigma[c, s]``, either on the queue length itself or on its natural logarithm (``log_space``).

``zero_below_eps`` reproduces a detail of the original twin: the likelihood vector of an observation
is normalised over states and entries below machine epsilon are set to zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from jiriaf.errors import UserError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MODEL_FORMAT = "jiriaf-twin-model/1"


@dataclass(frozen=True)
class TwinModel:
    """All conditional probability tables of the twin (see the module docstring)."""

    name: str
    state_labels: tuple[str, ...]
    controls: tuple[int, ...]
    prior: FloatArray
    transition: FloatArray
    obs_mean: FloatArray
    obs_sigma: FloatArray
    log_space: bool = False
    lq_floor: float = 1e-2
    zero_below_eps: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s, c = len(self.state_labels), len(self.controls)
        if s < 2 or c < 1:
            raise ValueError("a twin model needs at least two states and one control")
        if len(set(self.controls)) != c:
            raise ValueError("controls must be distinct thread counts")
        checks = {
            "prior": (self.prior, (s,)),
            "transition": (self.transition, (c, s, s)),
            "obs_mean": (self.obs_mean, (c, s)),
            "obs_sigma": (self.obs_sigma, (c, s)),
        }
        for what, (arr, shape) in checks.items():
            if arr.shape != shape:
                raise ValueError(f"{what} has shape {arr.shape}, expected {shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{what} has non-finite entries")
        if np.any(self.obs_sigma <= 0):
            raise ValueError("observation standard deviations must be positive")
        if np.any(self.prior < 0) or not math.isclose(float(self.prior.sum()), 1.0, abs_tol=1e-9):
            raise ValueError("prior must be a probability vector")
        if np.any(self.transition < 0) or not np.allclose(self.transition.sum(axis=2), 1.0, atol=1e-9):
            raise ValueError("every transition row must be a probability vector")

    @property
    def n_states(self) -> int:
        return len(self.state_labels)

    @property
    def n_controls(self) -> int:
        return len(self.controls)

    def control_index(self, threads: int) -> int:
        """Index of a thread count in ``controls``."""
        try:
            return self.controls.index(int(threads))
        except ValueError:
            raise UserError(
                f"thread count {threads} is not one of the model's controls {list(self.controls)}"
            ) from None

    def transform(self, lq: float) -> float:
        """The observed value the Gaussian is defined on (Lq, or log of Lq floored at ``lq_floor``)."""
        if self.log_space:
            return math.log(max(lq, self.lq_floor))
        return float(lq)

    def typical_lq(self, control_index: int, state: int) -> float:
        """The queue length the model expects in ``state`` under a control (median in log space)."""
        m = float(self.obs_mean[control_index, state])
        return math.exp(m) if self.log_space else m

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "name": self.name,
            "state_labels": list(self.state_labels),
            "controls": list(self.controls),
            "prior": self.prior.tolist(),
            "transition": self.transition.tolist(),
            "obs_mean": self.obs_mean.tolist(),
            "obs_sigma": self.obs_sigma.tolist(),
            "log_space": self.log_space,
            "lq_floor": self.lq_floor,
            "zero_below_eps": self.zero_below_eps,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwinModel:
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"not a {MODEL_FORMAT} document")
        return cls(
            name=str(data["name"]),
            state_labels=tuple(str(x) for x in data["state_labels"]),
            controls=tuple(int(x) for x in data["controls"]),
            prior=np.asarray(data["prior"], dtype=np.float64),
            transition=np.asarray(data["transition"], dtype=np.float64),
            obs_mean=np.asarray(data["obs_mean"], dtype=np.float64),
            obs_sigma=np.asarray(data["obs_sigma"], dtype=np.float64),
            log_space=bool(data.get("log_space", False)),
            lq_floor=float(data.get("lq_floor", 1e-2)),
            zero_below_eps=bool(data.get("zero_below_eps", False)),
            notes=dict(data.get("notes", {})),
        )


def save_model(model: TwinModel, path: Path) -> None:
    """Write a model as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model.to_dict(), indent=2) + "\n")


def load_model(path: Path) -> TwinModel:
    """Read a model written by :func:`save_model`; problems become a one-line :class:`UserError`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read model file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"model file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"model file {path} does not hold a JSON object")
    try:
        return TwinModel.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"model file {path} is not a valid twin model: {exc}") from None


def normalise_rows(weights: FloatArray) -> FloatArray:
    """Divide each row (last axis) by its sum."""
    out: FloatArray = weights / weights.sum(axis=-1, keepdims=True)
    return out


def banded_transition(n_states: int, stay: float) -> FloatArray:
    """A transition matrix that stays with probability ``stay`` and otherwise jumps to any other state.

    Jumps to nearer states are more likely (weight 1 / distance), so a slowly changing load is favoured
    over an abrupt one, but an abrupt change is never impossible.
    """
    if not 0.0 < stay < 1.0:
        raise ValueError("stay must be in (0, 1)")
    idx = np.arange(n_states)
    dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    off = np.where(dist > 0, 1.0 / np.maximum(dist, 1.0), 0.0)
    off = off / off.sum(axis=1, keepdims=True) * (1.0 - stay)
    out: FloatArray = off + np.eye(n_states) * stay
    return out
