"""The demo report: switches found, summary numbers, files written."""

from __future__ import annotations

from pathlib import Path

import pytest

from jiriaf.demo.report import Sample, summary, switches, write_report

pytestmark = pytest.mark.unit


def _run() -> list[Sample]:
    threads = [16, 16, 32, 32, 32, 16, 16]
    rates = [100, 166, 166, 166, 100, 100, 100]
    return [
        Sample(
            t=10.0 * i,
            rate=r,
            queue=5.0 * i,
            processed_rate=r * 0.9,
            threads=th,
            recommended=th,
            p_high=0.5,
            nodes_ready=2,
            pods_running=2,
        )
        for i, (th, r) in enumerate(zip(threads, rates, strict=True))
    ]


def test_switches_and_summary() -> None:
    samples = _run()
    sw = switches(samples)
    assert [(s.t, s.before, s.after) for s in sw] == [(20.0, 16, 32), (50.0, 32, 16)]
    head = summary(samples)
    assert head["switches_to_32"] == 1 and head["switches_to_16"] == 1
    assert head["duration_s"] == 60.0 and head["max_rate"] == 166 and head["max_nodes_ready"] == 2


def test_write_report(tmp_path: Path) -> None:
    report = write_report(_run(), tmp_path / "r")
    text = report.read_text()
    assert "| 20 | 16 | 32 | 166 |" in text and "| 50 | 32 | 16 | 100 |" in text
    png = (tmp_path / "r" / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "r" / "timeline.csv").read_text().splitlines()) == 8
