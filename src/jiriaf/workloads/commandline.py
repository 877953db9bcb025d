"""What every workload program shares: one-line errors, argument types, and stopping on a signal.

Workloads run as pod commands (``python3 -m jiriaf.workloads.<name> ...``). A bad argument prints
``error: <message>`` on one line and exits with code 2; SIGTERM (pod deletion) and SIGINT stop the
program cleanly with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from jiriaf.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors become :class:`UserError` (one line, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit: 0 on success, the error's code with one line on a UserError."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(0)


def number_type(
    kind: type[int] | type[float],
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type=`` that parses ``kind`` and checks ``low <= value <= high`` (``low < value``
    with ``low_open``); the message names the accepted range."""

    def parse(text: str) -> float:
        try:
            value: float = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            lower = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            upper = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range (must be {' and '.join(filter(None, [lower, upper]))})"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <name> value" messages
    return parse


def configure_logging(level: str) -> None:
    """Log lines with time and source at ``level``; the HTTP client's per-request lines only at DEBUG."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        for name in ("httpx2", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (the loop must be running)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
            loop.add_signal_handler(sig, stop.set)
