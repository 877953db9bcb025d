"""When a recommended thread count is acted on: stabilization windows, as the HPA has them.

A recommendation is applied only once the twin has made it for ``up`` consecutive steps (more
threads) or ``down`` consecutive steps (fewer threads). Kubernetes' HorizontalPodAutoscaler does the
same thing asymmetrically: it scales up at once and scales down only after a stabilization window
(``behavior.scaleDown.stabilizationWindowSeconds``, 300 s by default), because removing capacity on
one quiet interval is the costly mistake. For the twin, an interval with an empty queue can happen
by chance under high load with 32 threads, while a long queue with 16 threads cannot hide, so
stepping down waits longer than stepping up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jiriaf.errors import UserError


@dataclass
class Stabilizer:
    """Counts consecutive identical recommendations and says when one should be applied."""

    up: int = 1
    down: int = 1
    _candidate: int | None = field(default=None, init=False)
    _streak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.up < 1 or self.down < 1:
            raise UserError("stabilization needs at least one step in each direction")

    def offer(self, recommended: int, current: int) -> bool:
        """Record this step's recommendation; True when it should be applied now."""
        if recommended == self._candidate:
            self._streak += 1
        else:
            self._candidate, self._streak = recommended, 1
        if recommended == current:
            return False
        needed = self.up if recommended > current else self.down
        if self._streak >= needed:
            self._streak = 0  # a new count starts from the new setting
            return True
        return False
