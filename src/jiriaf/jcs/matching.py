"""The matching service (JMS): which request runs where, as a pure function with no I/O.

Inputs are plain values: the requests waiting for resources (:class:`Demand`), what each site
partition has free (:class:`Pool`), the running pilots that serve no request right now
(:class:`IdlePilot`), and how many nodes each user already holds. The output is one
:class:`Decision` per request, with a sentence explaining it:

* ``reuse``: lease idle pilots that outlive the request's walltime (no batch queue to wait in);
* ``launch``: start a new pilot of ``nodes`` nodes at ``site``/``partition``;
* ``wait``: nothing fits now; the explanation says what is missing and the nearest thing there is;
* ``reject``: the request cannot meet its deadline any more.

Order and fairness: requests are taken by priority (highest first); within a priority the next
request always belongs to the user who holds the fewest nodes so far (counting what this round has
given out), so a user with many requests cannot starve the others; a user's own requests go by
deadline, then submission time. Placement: idle pilots first (smallest sufficient set, at the most
preferred site), else the free pool at the most preferred site that fits with the least left over.

A failure to place a request of some shape stays a failure for the same shape for the rest of the
round (free resources only shrink within a round), which keeps 10,000 x 1,000 fast.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class Verdict(enum.StrEnum):
    REUSE = "reuse"
    LAUNCH = "launch"
    WAIT = "wait"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Demand:
    """A request as the matcher sees it (``deadline`` and ``submitted`` in epoch seconds)."""

    id: int
    user: str
    nodes: int
    cpus_per_node: int
    memory_mb_per_node: int
    node_type: str
    walltime_s: int
    sites: tuple[str, ...] = ()  # preference order; empty: any site
    priority: int = 0
    deadline: float | None = None
    submitted: float = 0.0


@dataclass(frozen=True, slots=True)
class Pool:
    """Free nodes of one partition of a site (all nodes alike)."""

    site: str
    partition: str
    node_type: str
    nodes_free: int
    cpus_per_node: int
    memory_mb_per_node: int
    max_walltime_s: int | None = None  # None: no limit


@dataclass(frozen=True, slots=True)
class IdlePilot:
    """A running pilot whose nodes serve no request; ``remaining_s`` of walltime left."""

    id: str
    site: str
    node_type: str
    nodes: int
    cpus_per_node: int
    memory_mb_per_node: int
    remaining_s: float
    partition: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    pilot_margin_s: int = 120  # walltime added to a new pilot (JRM start-up, drain before the end)
    reuse_margin_s: int = 60  # an idle pilot must outlive the request by this much
    max_new_pilots: int | None = None  # pilots launched per round
    max_nodes_per_user: int | None = None  # nodes one user may hold at once


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: int
    verdict: Verdict
    explanation: str
    site: str = ""
    partition: str = ""
    nodes: int = 0
    pilot_ids: tuple[str, ...] = ()  # reuse: the pilots to lease
    pilot_walltime_s: int = 0  # launch: walltime to ask the batch system for


def format_duration(seconds: float) -> str:
    """``7200`` -> ``2 h``; ``5400`` -> ``1 h 30 min``; ``90`` -> ``1 min 30 s``."""
    s = max(0, math.ceil(seconds))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{v} {u}" for v, u in ((d, "d"), (h, "h"), (m, "min"), (sec, "s")) if v]
    return " ".join(parts[:2]) if parts else "0 s"


def _nodes(n: int, node_type: str) -> str:
    return f"{n} {node_type} node{'s' if n != 1 else ''}"


@dataclass(slots=True)
class _PoolState:
    pool: Pool
    free: int


@dataclass(slots=True)
class _Round:
    """The mutable state of one matching round."""

    policy: Policy
    now: float
    unreachable: Mapping[str, str]
    by_type: dict[str, list[_PoolState]]
    idle_by_type: dict[str, list[IdlePilot]]
    all_sites: tuple[str, ...]
    launches: int = 0
    failed_shapes: dict[tuple[object, ...], str] = field(default_factory=dict)

    def allowed(self, d: Demand, site: str) -> bool:
        return not d.sites or site in d.sites

    def rank(self, d: Demand, site: str) -> int:
        return d.sites.index(site) if d.sites else 0


def match(
    demands: Iterable[Demand],
    pools: Iterable[Pool],
    idle_pilots: Iterable[IdlePilot] = (),
    *,
    now: float,
    usage: Mapping[str, int] | None = None,
    unreachable: Mapping[str, str] | None = None,
    policy: Policy | None = None,
) -> list[Decision]:
    """Decide for every demand; decisions come in the order they were made.

    ``usage`` is the nodes each user holds already; ``unreachable`` names sites that could not be
    scraped (site -> error) so that a wait can say so; their pools must not be passed in ``pools``.
    """
    pol = policy or Policy()
    unreach = dict(unreachable or {})
    by_type: dict[str, list[_PoolState]] = defaultdict(list)
    sites: set[str] = set(unreach)
    for p in pools:
        if p.site in unreach:
            continue
        sites.add(p.site)
        by_type[p.node_type].append(_PoolState(p, p.nodes_free))
    idle_by_type: dict[str, list[IdlePilot]] = defaultdict(list)
    for ip in idle_pilots:
        sites.add(ip.site)
        idle_by_type[ip.node_type].append(ip)
    rnd = _Round(
        policy=pol,
        now=now,
        unreachable=unreach,
        by_type=dict(by_type),
        idle_by_type=dict(idle_by_type),
        all_sites=tuple(sorted(sites)),
    )
    held: dict[str, int] = defaultdict(int, usage or {})
    decisions: list[Decision] = []

    by_priority: dict[int, dict[str, list[Demand]]] = defaultdict(lambda: defaultdict(list))
    for d in demands:
        by_priority[d.priority][d.user].append(d)
    for priority in sorted(by_priority, reverse=True):
        queues = by_priority[priority]
        for q in queues.values():
            q.sort(
                key=lambda d: (math.inf if d.deadline is None else d.deadline, d.submitted, d.id),
                reverse=True,
            )
        heap = [(held[user], user) for user in queues]
        heapq.heapify(heap)
        while heap:
            _, user = heapq.heappop(heap)
            d = queues[user].pop()
            decision = _decide(rnd, d, held[user])
            if decision.verdict in (Verdict.REUSE, Verdict.LAUNCH):
                held[user] += decision.nodes
            decisions.append(decision)
            if queues[user]:
                heapq.heappush(heap, (held[user], user))
    return decisions


def _decide(rnd: _Round, d: Demand, held: int) -> Decision:
    if d.deadline is not None and rnd.now + d.walltime_s > d.deadline:
        late = rnd.now + d.walltime_s - d.deadline
        return Decision(
            d.id,
            Verdict.REJECT,
            f"request {d.id} rejected: started now, its {format_duration(d.walltime_s)} would end "
            f"{format_duration(late)} after its deadline",
        )
    cap = rnd.policy.max_nodes_per_user
    if cap is not None and held + d.nodes > cap:
        return Decision(
            d.id,
            Verdict.WAIT,
            f"request {d.id} waits: user {d.user} holds {held} of at most {cap} nodes and asks for {d.nodes}",
        )
    shape = (d.node_type, d.nodes, d.cpus_per_node, d.memory_mb_per_node, d.walltime_s, d.sites)
    known = rnd.failed_shapes.get(shape)
    if known is not None:
        return Decision(d.id, Verdict.WAIT, f"request {d.id} waits: {known}")

    reuse = _reuse(rnd, d)
    if reuse is not None:
        return reuse
    limit = rnd.policy.max_new_pilots
    launch_possible = limit is None or rnd.launches < limit
    if launch_possible:
        launch = _launch(rnd, d)
        if launch is not None:
            rnd.launches += 1
            return launch
    else:
        # the round's launches are used up: say so, but do not remember the shape as impossible
        fits = _best_pool(rnd, d) is not None
        if fits:
            return Decision(
                d.id,
                Verdict.WAIT,
                f"request {d.id} waits: the limit of {limit} new pilots per round is reached",
            )
    why = _why_not(rnd, d)
    rnd.failed_shapes[shape] = why
    return Decision(d.id, Verdict.WAIT, f"request {d.id} waits: {why}")


def _pilot_fits(rnd: _Round, d: Demand, p: IdlePilot) -> bool:
    return (
        rnd.allowed(d, p.site)
        and p.cpus_per_node >= d.cpus_per_node
        and p.memory_mb_per_node >= d.memory_mb_per_node
        and p.remaining_s >= d.walltime_s + rnd.policy.reuse_margin_s
    )


def _reuse(rnd: _Round, d: Demand) -> Decision | None:
    pilots = rnd.idle_by_type.get(d.node_type)
    if not pilots:
        return None
    by_site: dict[str, list[IdlePilot]] = defaultdict(list)
    for p in pilots:
        if _pilot_fits(rnd, d, p):
            by_site[p.site].append(p)
    for site in sorted(by_site, key=lambda s: (rnd.rank(d, s), s)):
        chosen = _choose_pilots(by_site[site], d.nodes)
        if chosen is None:
            continue
        for p in chosen:
            pilots.remove(p)
        nodes = sum(p.nodes for p in chosen)
        left = min(p.remaining_s for p in chosen)
        ids = tuple(p.id for p in chosen)
        return Decision(
            d.id,
            Verdict.REUSE,
            f"request {d.id} reuses pilot{'s' if len(ids) > 1 else ''} {', '.join(ids)} at {site} "
            f"({_nodes(nodes, d.node_type)}, {format_duration(left)} of walltime left)",
            site=site,
            partition=chosen[0].partition,
            nodes=nodes,
            pilot_ids=ids,
        )
    return None


def _choose_pilots(candidates: Sequence[IdlePilot], need: int) -> list[IdlePilot] | None:
    """The single smallest pilot with enough nodes, else the fewest pilots (largest first)."""
    single = [p for p in candidates if p.nodes >= need]
    if single:
        return [min(single, key=lambda p: (p.nodes, p.remaining_s, p.id))]
    chosen: list[IdlePilot] = []
    total = 0
    for p in sorted(candidates, key=lambda p: (-p.nodes, p.remaining_s, p.id)):
        chosen.append(p)
        total += p.nodes
        if total >= need:
            return chosen
    return None


def _pool_fits(rnd: _Round, d: Demand, ps: _PoolState) -> bool:
    p = ps.pool
    return (
        ps.free >= d.nodes
        and p.cpus_per_node >= d.cpus_per_node
        and p.memory_mb_per_node >= d.memory_mb_per_node
        and (p.max_walltime_s is None or p.max_walltime_s >= d.walltime_s)
        and rnd.allowed(d, p.site)
    )


def _best_pool(rnd: _Round, d: Demand) -> _PoolState | None:
    best: _PoolState | None = None
    best_key: tuple[object, ...] = ()
    for ps in rnd.by_type.get(d.node_type, ()):
        if not _pool_fits(rnd, d, ps):
            continue
        key = (rnd.rank(d, ps.pool.site), ps.free - d.nodes, ps.pool.site, ps.pool.partition)
        if best is None or key < best_key:
            best, best_key = ps, key
    return best


def _launch(rnd: _Round, d: Demand) -> Decision | None:
    ps = _best_pool(rnd, d)
    if ps is None:
        return None
    ps.free -= d.nodes
    wall = d.walltime_s + rnd.policy.pilot_margin_s
    if ps.pool.max_walltime_s is not None:
        wall = min(wall, ps.pool.max_walltime_s)
    where = f"{ps.pool.site}/{ps.pool.partition}" if ps.pool.partition else ps.pool.site
    return Decision(
        d.id,
        Verdict.LAUNCH,
        f"request {d.id} launches a pilot of {_nodes(d.nodes, d.node_type)} for "
        f"{format_duration(wall)} at {where} ({ps.free + d.nodes} free there)",
        site=ps.pool.site,
        partition=ps.pool.partition,
        nodes=d.nodes,
        pilot_walltime_s=wall,
    )


def _subject(d: Demand) -> str:
    if not d.sites:
        return "no site has"
    if len(d.sites) == 1:
        return f"{d.sites[0]} does not have"
    return f"none of {', '.join(d.sites)} has"


def _why_not(rnd: _Round, d: Demand) -> str:
    """What is missing for ``d``, and the nearest thing there is."""
    wanted = f"{_nodes(d.nodes, d.node_type)} for {format_duration(d.walltime_s)}"
    candidates = d.sites or rnd.all_sites
    down = [f"{s} is unreachable ({rnd.unreachable[s]})" for s in candidates if s in rnd.unreachable]
    if all(s in rnd.unreachable for s in candidates):
        where = ", ".join(d.sites) if d.sites else "known"
        return "; ".join([f"no reachable site ({where}) for {wanted}", *down])
    subject = _subject(d)
    pools = [ps for ps in rnd.by_type.get(d.node_type, ()) if rnd.allowed(d, ps.pool.site)]
    if not pools:
        types = sorted(
            {ps.pool.node_type for lst in rnd.by_type.values() for ps in lst if rnd.allowed(d, ps.pool.site)}
        )
        there = f" (only {', '.join(types)})" if types else ""
        return "; ".join([f"{subject} {d.node_type} nodes{there}", *down])
    big = [
        ps
        for ps in pools
        if ps.pool.cpus_per_node >= d.cpus_per_node and ps.pool.memory_mb_per_node >= d.memory_mb_per_node
    ]
    if not big:
        top = max(pools, key=lambda ps: (ps.pool.cpus_per_node, ps.pool.memory_mb_per_node))
        return "; ".join(
            [
                f"{subject} {d.node_type} nodes with {d.cpus_per_node} cpus and {d.memory_mb_per_node} MB",
                f"the largest, at {top.pool.site}, have {top.pool.cpus_per_node} cpus and "
                f"{top.pool.memory_mb_per_node} MB",
                *down,
            ]
        )
    long_enough = [
        ps for ps in big if ps.pool.max_walltime_s is None or ps.pool.max_walltime_s >= d.walltime_s
    ]
    if not long_enough:
        top = max(big, key=lambda ps: ps.pool.max_walltime_s or 0)
        return "; ".join(
            [
                f"{subject} {d.node_type} nodes for {format_duration(d.walltime_s)}",
                f"the longest limit is {format_duration(top.pool.max_walltime_s or 0)} at {top.pool.site}",
                *down,
            ]
        )
    top = max(long_enough, key=lambda ps: (ps.free, -rnd.rank(d, ps.pool.site), ps.pool.site))
    return "; ".join([f"{subject} {wanted}", f"{top.pool.site} has {top.free}", *down])
