"""The wire format between sender and receiver: one event per line, newline-delimited JSON.

An event is ``{"seq": 17, "sent": 1712345678.123456, "pad": "xxxx"}\\n``: a sequence number, the
sender's wall-clock time when the event was emitted (the receiver's latency is measured from it, so
sender and receiver clocks must agree: same host, or NTP) and optional padding that gives events a
size. Lines longer than :data:`MAX_LINE` are rejected. Pure logic, no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

MAX_LINE = 1024 * 1024
MAX_PAYLOAD = MAX_LINE - 128


class ProtocolError(ValueError):
    """A line that is not an event."""


@dataclass(frozen=True)
class Event:
    """One event on the wire."""

    seq: int
    sent: float
    size: int = 0


def encode_event(seq: int, sent: float, payload_bytes: int = 0) -> bytes:
    """The line of one event with ``payload_bytes`` bytes of padding."""
    if seq < 0:
        raise ValueError("seq must not be negative")
    if not 0 <= payload_bytes <= MAX_PAYLOAD:
        raise ValueError(f"payload must be between 0 and {MAX_PAYLOAD} bytes")
    body: dict[str, object] = {"seq": seq, "sent": round(sent, 6)}
    if payload_bytes:
        body["pad"] = "x" * payload_bytes
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_event(line: bytes) -> Event:
    """The event of one line (with or without its newline); :class:`ProtocolError` otherwise."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line of {len(line)} bytes is longer than {MAX_LINE}")
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("not a JSON object")
    seq, sent, pad = body.get("seq"), body.get("sent"), body.get("pad", "")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("seq must be a non-negative integer")
    if not isinstance(sent, (int, float)) or isinstance(sent, bool) or not math.isfinite(sent):
        raise ProtocolError("sent must be a finite number")
    if not isinstance(pad, str):
        raise ProtocolError("pad must be a string")
    return Event(seq=seq, sent=float(sent), size=len(pad))
