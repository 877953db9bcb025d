"""The demo's report: a summary table (Markdown) and PNG plots of what happened.

Pure over a list of :class:`Sample` rows recorded once per demo step, so it is tested without
running the demo.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from itertools import pairwise
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One demo step."""

    t: float  # seconds since the demo's workflow started
    rate: float  # sender's arrival rate set by the demo (events/s)
    queue: float  # observed queue length
    processed_rate: float  # receiver's measured service throughput (events/s)
    threads: int  # receiver threads in effect
    recommended: int  # the twin's recommendation this step
    p_high: float  # the twin's P(load state >= 2)
    nodes_ready: int
    pods_running: int


@dataclass(frozen=True)
class Switch:
    """A change of the receiver's thread count."""

    t: float
    before: int
    after: int
    rate: float


def switches(samples: Sequence[Sample]) -> list[Switch]:
    """Every step where the threads in effect changed."""
    out = []
    for prev, cur in pairwise(samples):
        if cur.threads != prev.threads:
            out.append(Switch(cur.t, prev.threads, cur.threads, cur.rate))
    return out


def summary(samples: Sequence[Sample]) -> dict[str, float | int]:
    """Headline numbers of a run."""
    sw = switches(samples)
    return {
        "steps": len(samples),
        "duration_s": round(samples[-1].t - samples[0].t, 1) if samples else 0.0,
        "max_rate": max((s.rate for s in samples), default=0.0),
        "max_queue": max((s.queue for s in samples), default=0.0),
        "switches_to_32": sum(1 for s in sw if s.after > s.before),
        "switches_to_16": sum(1 for s in sw if s.after < s.before),
        "max_nodes_ready": max((s.nodes_ready for s in samples), default=0),
    }


def write_report(samples: Sequence[Sample], directory: Path, title: str = "jiriaf demo") -> Path:
    """Write ``report.md``, ``timeline.csv`` and ``timeline.png`` into ``directory``; return report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "timeline.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Sample)])
        writer.writeheader()
        for s in samples:
            writer.writerow(asdict(s))
    t = [s.t for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [s.rate for s in samples], label="arrival rate (set)")
    axes[0].plot(t, [s.processed_rate for s in samples], label="processed rate (measured)")
    axes[0].set_ylabel("events/s")
    axes[0].legend(loc="upper left")
    axes[1].plot(t, [max(s.queue, 1e-2) for s in samples], color="tab:red")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("queue length")
    axes[2].step(t, [s.threads for s in samples], where="post", label="threads in effect")
    axes[2].step(t, [s.recommended for s in samples], where="post", linestyle="--", label="twin recommends")
    axes[2].set_ylabel("threads")
    axes[2].set_xlabel("seconds")
    axes[2].legend(loc="upper left")
    for sw in switches(samples):
        for ax in axes:
            ax.axvline(sw.t, color="grey", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(directory / "timeline.png", dpi=110)
    plt.close(fig)
    head = summary(samples)
    lines = [f"# {title}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in head.items()]
    lines += ["", "## Thread switches", "", "| t (s) | from | to | arrival rate |", "|---|---|---|---|"]
    lines += [f"| {s.t:.0f} | {s.before} | {s.after} | {s.rate:.0f} |" for s in switches(samples)]
    lines += ["", "![timeline](timeline.png)", ""]
    report = directory / "report.md"
    report.write_text("\n".join(lines))
    return report
