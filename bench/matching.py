"""Time of one matching round: 10,000 requests against 1,000 free-resource pools (and idle pilots).

Run: ``python bench/matching.py [--requests 10000] [--pools 1000] [--pilots 200] [--repeat 5]``

The workload is random but seeded: users with skewed request counts, three node types, sizes of
1-8 nodes, walltimes from 10 min to 12 h, a fifth with deadlines, a few priorities, site
preferences on a third of the requests; pools spread over 20 sites with per-partition walltime
limits. The baseline, measured in the same run on the same input, is the first-fit-decreasing loop
of the original JIRIAF ``CentralService`` skeleton (sort by walltime, first pool that fits; no
fairness, preferences, reuse or explanations). Times are the median of ``--repeat`` runs; the
ratio column is time / baseline time, since absolute times depend on the machine. Placement
quality is shown beside it: nodes placed, and Jain's fairness index over the users' placed nodes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

from jiriaf.jcs.matching import Decision, Demand, IdlePilot, Pool, Verdict, match

NOW = 1_700_000_000.0
TYPES = ("cpu", "gpu", "bigmem")


def workload(
    requests: int, pools: int, pilots: int, seed: int
) -> tuple[list[Demand], list[Pool], list[IdlePilot]]:
    rng = random.Random(seed)
    sites = [f"site{i:02d}" for i in range(20)]
    users = [f"user{i:03d}" for i in range(100)]
    weights = [1.0 / (i + 1) for i in range(len(users))]  # a few heavy users, many light ones
    ps = [
        Pool(
            site=rng.choice(sites),
            partition=f"part{i:04d}",
            node_type=rng.choices(TYPES, weights=(6, 2, 1))[0],
            nodes_free=rng.randint(0, 40),
            cpus_per_node=rng.choice((16, 32, 64, 128)),
            memory_mb_per_node=rng.choice((64_000, 256_000, 512_000)),
            max_walltime_s=rng.choice((None, 3600, 4 * 3600, 12 * 3600, 48 * 3600)),
        )
        for i in range(pools)
    ]
    ips = [
        IdlePilot(
            id=f"pilot{i:04d}",
            site=rng.choice(sites),
            node_type=rng.choices(TYPES, weights=(6, 2, 1))[0],
            nodes=rng.randint(1, 4),
            cpus_per_node=rng.choice((32, 64, 128)),
            memory_mb_per_node=rng.choice((64_000, 256_000)),
            remaining_s=rng.uniform(0, 8 * 3600),
        )
        for i in range(pilots)
    ]
    ds = []
    for i in range(requests):
        walltime = rng.choice((600, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600))
        ds.append(
            Demand(
                id=i,
                user=rng.choices(users, weights=weights)[0],
                nodes=rng.choice((1, 1, 1, 2, 2, 4, 8)),
                cpus_per_node=rng.choice((4, 16, 32, 64, 128)),
                memory_mb_per_node=rng.choice((4_000, 32_000, 128_000, 300_000)),
                node_type=rng.choices(TYPES, weights=(6, 2, 1))[0],
                walltime_s=walltime,
                sites=tuple(rng.sample(sites, rng.randint(1, 3))) if rng.random() < 0.33 else (),
                priority=rng.choices((0, 1, 5), weights=(90, 8, 2))[0],
                deadline=NOW + walltime * rng.uniform(0.9, 4) if rng.random() < 0.2 else None,
                submitted=NOW - rng.uniform(0, 86400),
            )
        )
    return ds, ps, ips


def first_fit_decreasing(demands: Sequence[Demand], pools: Sequence[Pool]) -> list[Decision]:
    """The original skeleton's survey(): jobs by walltime descending, first pool that accepts."""
    free = [p.nodes_free for p in pools]
    out = []
    for d in sorted(demands, key=lambda d: d.walltime_s, reverse=True):
        for i, p in enumerate(pools):
            if (
                free[i] >= d.nodes
                and p.node_type == d.node_type
                and p.cpus_per_node >= d.cpus_per_node
                and p.memory_mb_per_node >= d.memory_mb_per_node
                and (p.max_walltime_s is None or p.max_walltime_s >= d.walltime_s)
            ):
                free[i] -= d.nodes
                out.append(
                    Decision(d.id, Verdict.LAUNCH, "", site=p.site, partition=p.partition, nodes=d.nodes)
                )
                break
        else:
            out.append(Decision(d.id, Verdict.WAIT, ""))
    return out


def timed(fn: Callable[[], list[Decision]], repeat: int) -> tuple[float, list[Decision]]:
    times = []
    result: list[Decision] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def jain(values: Sequence[float]) -> float:
    total = sum(values)
    squares = sum(v * v for v in values)
    return (total * total) / (len(values) * squares) if squares else 1.0


def quality(demands: Sequence[Demand], decisions: Sequence[Decision]) -> tuple[int, int, float]:
    user = {d.id: d.user for d in demands}
    per_user: dict[str, float] = defaultdict(float)
    placed = nodes = 0
    for dec in decisions:
        if dec.verdict in (Verdict.LAUNCH, Verdict.REUSE):
            placed += 1
            nodes += dec.nodes
            per_user[user[dec.request_id]] += dec.nodes
    users = {d.user for d in demands}
    return placed, nodes, jain([per_user[u] for u in users])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--pools", type=int, default=1_000)
    ap.add_argument("--pilots", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    sizes = [
        (args.requests // 100, args.pools // 10),
        (args.requests // 10, args.pools),
        (args.requests, args.pools),
    ]
    print(f"matching benchmark: median of {args.repeat} runs, seed {args.seed}, {args.pilots} idle pilots")
    columns = ("requests x pools", "algorithm", "time (ms)", "ratio", "placed", "nodes", "Jain")
    widths = (18, 24, 10, 7, 7, 7, 6)
    header = " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    print(header)
    print("-" * len(header))
    for n_req, n_pool in sizes:
        ds, ps, ips = workload(n_req, n_pool, args.pilots, args.seed)
        t_base, base = timed(partial(first_fit_decreasing, ds, ps), args.repeat)
        t_jms, jms = timed(partial(match, ds, ps, ips, now=NOW), args.repeat)
        t_nop, nop = timed(partial(match, ds, ps, (), now=NOW), args.repeat)
        label = f"{n_req:,} x {n_pool:,}"
        rows = [
            ("first-fit-decreasing", t_base, base),
            ("jms (no idle pilots)", t_nop, nop),
            ("jms", t_jms, jms),
        ]
        for name, t, dec in rows:
            placed, nodes, fair = quality(ds, dec)
            ms = t * 1000
            print(f"{label:>18} {name:>24} {ms:10.1f} {t / t_base:7.2f} {placed:7d} {nodes:7d} {fair:6.3f}")
    ds, ps, ips = workload(args.requests, args.pools, args.pilots, args.seed)
    t, dec = timed(lambda: match(ds, ps, ips, now=NOW), 1)
    waits = sum(1 for d in dec if d.verdict is Verdict.WAIT)
    print(
        f"\nmatching {args.requests:,} requests x {args.pools:,} resources: {t:.3f} s "
        f"({waits:,} wait, each with its explanation)"
    )


if __name__ == "__main__":
    main()
