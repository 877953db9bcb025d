"""The README's first command runs the whole demo to its end and reports thread switches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.system


def test_demo_runs_to_the_end_switches_to_32_under_load_and_back_after_it_falls(tmp_path: Path) -> None:
    env = {**os.environ, "JIRIAF_DEMO_DIR": str(tmp_path / "demo")}
    res = subprocess.run(
        [sys.executable, "-m", "jiriaf.cli", "demo", "--duration", "110"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    found = re.search(r"report:\s*(\S+report\.md)", out.replace("\n", " "))
    assert found, out[-2000:]
    report = Path(found.group(1)).read_text()
    counts = dict(re.findall(r"\| (switches_to_\d+) \| (\d+) \|", report))
    assert int(counts["switches_to_32"]) >= 1 and int(counts["switches_to_16"]) >= 1, report
    # the must-show: a switch to 32 while the rate is high, then one back to 16 after it has fallen
    rows = re.findall(r"\| (\d+) \| (16|32) \| (16|32) \| (\d+) \|", report)
    ups = [i for i, (_, b, a, r) in enumerate(rows) if (b, a, r) == ("16", "32", "166")]
    assert ups, report
    assert any(b == "32" and a == "16" and r == "100" for _, b, a, r in rows[ups[0] + 1 :]), report
    timeline = (Path(found.group(1)).parent / "timeline.csv").read_text().splitlines()
    last = dict(zip(timeline[0].split(","), timeline[-1].split(","), strict=True))
    assert float(last["rate"]) == 100.0 and int(last["threads"]) == 16, timeline[-5:]
    assert (Path(found.group(1)).parent / "timeline.png").exists()
    # everything the demo started is gone: no JRM or pilot task of this demo directory still runs
    left = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if str(tmp_path) in " ".join(proc.info["cmdline"] or []) or any(
                str(tmp_path) in v for v in (proc.info["environ"] or {}).values()
            ):
                left.append(proc.pid)
        except psutil.Error:
            continue
    assert left == []
