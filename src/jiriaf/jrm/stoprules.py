"""Rules that end a JRM before its walltime: an idle timeout.

The JRM goes idle when none of its pods is active (every pod has reached a terminal phase, or it
has no pods at all). :class:`IdleClock` is the pure rule; :func:`idle_watch` applies it to a
running pod controller and asks the agent to stop with reason ``IdleTimeout`` once the node has
been idle for ``timeout`` seconds since its last pod activity (a pod running or arriving). The
agent reports the reason as its Node's Ready condition and in an Event, like any stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

IDLE_REASON = "IdleTimeout"


class _Worker(Protocol):
    @property
    def terminal(self) -> bool: ...


class PodSource(Protocol):
    """What the watcher reads from the pod controller: its workers by pod uid."""

    @property
    def workers(self) -> Mapping[str, _Worker]: ...


class IdleClock:
    """Tracks the last pod activity; pure (the caller supplies the time)."""

    def __init__(self, now: float) -> None:
        self.last_activity = now
        self._seen: set[str] = set()

    def observe(self, now: float, pods: Iterable[tuple[str, bool]]) -> float:
        """Record the pods ``(uid, terminal)`` seen at ``now``; return seconds idle so far.

        Activity is any non-terminal pod, or a pod not seen before (even if it already ended).
        Pods disappearing (deleted after they finished) are not activity.
        """
        current = dict(pods)
        arrived = set(current) - self._seen
        self._seen = set(current)
        if arrived or not all(current.values()):
            self.last_activity = now
        return now - self.last_activity


async def idle_watch(
    pods: PodSource,
    timeout: float,
    request_stop: Callable[[str], None],
    *,
    interval: float | None = None,
) -> None:
    """Call ``request_stop("IdleTimeout")`` once no pod has been active for ``timeout`` seconds.

    Returns after requesting the stop. ``timeout`` must be positive (0 means "no idle rule": the
    agent then does not start the watcher).
    """
    if timeout <= 0:
        raise ValueError("idle timeout must be positive")
    loop = asyncio.get_running_loop()
    step = interval if interval is not None else min(1.0, timeout / 10)
    clock = IdleClock(loop.time())
    while True:
        idle = clock.observe(loop.time(), ((uid, w.terminal) for uid, w in list(pods.workers.items())))
        if idle >= timeout:
            request_stop(IDLE_REASON)
            return
        await asyncio.sleep(min(step, timeout - idle))
