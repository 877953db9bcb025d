"""Helpers shared by the test tiers (bounded polling; never timing assertions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    fn: Callable[[], T | None], timeout: float = 60.0, what: str = "condition", interval: float = 0.3
) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
        except Exception as exc:  # the object may not exist yet
            last = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def not_none(value: T | None) -> T:
    """``value``, an optional field of an API object that the test knows is set (a pod's ``status``).

    ``None`` fails an assertion here where using it would have failed anyway; ``eventually`` retries both.
    """
    assert value is not None
    return value
