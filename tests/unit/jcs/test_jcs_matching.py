"""jiriaf.jcs.matching: placement, reuse of idle pilots, fairness, priorities, deadlines, explanations."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from jiriaf.jcs.matching import Decision, Demand, IdlePilot, Policy, Pool, Verdict, format_duration, match

pytestmark = pytest.mark.unit

NOW = 1_000_000.0


def demand(id: int, user: str = "alice", nodes: int = 1, **kw: object) -> Demand:
    base: dict[str, object] = dict(
        cpus_per_node=4, memory_mb_per_node=1000, node_type="cpu", walltime_s=3600, submitted=NOW - 100 + id
    )
    base.update(kw)
    return Demand(id=id, user=user, nodes=nodes, **base)  # type: ignore[arg-type]


def pool(site: str, free: int, partition: str = "p", **kw: object) -> Pool:
    base: dict[str, object] = dict(
        node_type="cpu", cpus_per_node=64, memory_mb_per_node=128000, max_walltime_s=None
    )
    base.update(kw)
    return Pool(site=site, partition=partition, nodes_free=free, **base)  # type: ignore[arg-type]


def pilot(
    id: str, site: str = "perlmutter", nodes: int = 1, remaining: float = 7200, **kw: object
) -> IdlePilot:
    base: dict[str, object] = dict(node_type="cpu", cpus_per_node=64, memory_mb_per_node=128000)
    base.update(kw)
    return IdlePilot(id=id, site=site, nodes=nodes, remaining_s=remaining, **base)  # type: ignore[arg-type]


def by_id(decisions: list[Decision]) -> dict[int, Decision]:
    return {d.request_id: d for d in decisions}


# ----------------------------------------------------------------------------- explanations


def test_the_issue_example_sentence() -> None:
    d = match([demand(7, nodes=4, walltime_s=7200)], [pool("perlmutter", 3)], now=NOW)
    assert d == [
        Decision(7, Verdict.WAIT, "request 7 waits: no site has 4 cpu nodes for 2 h; perlmutter has 3")
    ]


def test_wait_names_the_walltime_limit() -> None:
    [d] = match([demand(1, walltime_s=7200)], [pool("ornl", 5, max_walltime_s=1800)], now=NOW)
    assert d.verdict is Verdict.WAIT
    assert d.explanation == (
        "request 1 waits: no site has cpu nodes for 2 h; the longest limit is 30 min at ornl"
    )


def test_wait_names_the_largest_node() -> None:
    [d] = match(
        [demand(2, cpus_per_node=128)], [pool("a", 5, cpus_per_node=32, memory_mb_per_node=64000)], now=NOW
    )
    assert d.explanation == (
        "request 2 waits: no site has cpu nodes with 128 cpus and 1000 MB; "
        "the largest, at a, have 32 cpus and 64000 MB"
    )


def test_wait_names_the_node_types_there_are() -> None:
    [d] = match([demand(3, node_type="gpu")], [pool("a", 5), pool("b", 2, node_type="bigmem")], now=NOW)
    assert d.explanation == "request 3 waits: no site has gpu nodes (only bigmem, cpu)"


def test_wait_names_unreachable_sites() -> None:
    [d] = match(
        [demand(4, nodes=2, sites=("perlmutter", "ornl"))],
        [pool("ornl", 1)],
        now=NOW,
        unreachable={"perlmutter": "sinfo: connection refused"},
    )
    assert d.explanation == (
        "request 4 waits: none of perlmutter, ornl has 2 cpu nodes for 1 h; ornl has 1; "
        "perlmutter is unreachable (sinfo: connection refused)"
    )


def test_all_sites_unreachable() -> None:
    [d] = match([demand(5, sites=("perlmutter",))], [], now=NOW, unreachable={"perlmutter": "timed out"})
    assert d.explanation == (
        "request 5 waits: no reachable site (perlmutter) for 1 cpu node for 1 h; "
        "perlmutter is unreachable (timed out)"
    )


def test_pools_of_unreachable_sites_are_never_used() -> None:
    [d] = match([demand(1)], [pool("perlmutter", 10)], now=NOW, unreachable={"perlmutter": "down"})
    assert d.verdict is Verdict.WAIT


def test_single_preferred_site_sentence() -> None:
    [d] = match([demand(6, nodes=3, sites=("ornl",))], [pool("ornl", 2), pool("other", 10)], now=NOW)
    assert d.explanation == "request 6 waits: ornl does not have 3 cpu nodes for 1 h; ornl has 2"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (90, "1 min 30 s"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
        (90061, "1 d 1 h"),
        (0.2, "1 s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ----------------------------------------------------------------------------- placement


def test_launch_best_fit_and_walltime_margin() -> None:
    [d] = match(
        [demand(1, nodes=2)], [pool("a", 10), pool("b", 3)], now=NOW, policy=Policy(pilot_margin_s=120)
    )
    assert (d.verdict, d.site, d.nodes, d.pilot_walltime_s) == (Verdict.LAUNCH, "b", 2, 3720)
    assert d.explanation == "request 1 launches a pilot of 2 cpu nodes for 1 h 2 min at b/p (3 free there)"


def test_pilot_walltime_is_capped_by_the_partition_limit() -> None:
    [d] = match([demand(1, walltime_s=3600)], [pool("a", 1, max_walltime_s=3660)], now=NOW)
    assert d.pilot_walltime_s == 3660


def test_site_preference_beats_best_fit() -> None:
    [d] = match([demand(1, sites=("big", "small"))], [pool("small", 1), pool("big", 100)], now=NOW)
    assert d.site == "big"


def test_sites_outside_the_preference_are_not_used() -> None:
    [d] = match([demand(1, sites=("x",))], [pool("y", 100)], now=NOW)
    assert d.verdict is Verdict.WAIT


def test_free_nodes_are_consumed_within_a_round() -> None:
    ds = match([demand(1, nodes=2), demand(2, nodes=2)], [pool("a", 3)], now=NOW)
    assert [d.verdict for d in ds] == [Verdict.LAUNCH, Verdict.WAIT]
    assert ds[1].explanation == "request 2 waits: no site has 2 cpu nodes for 1 h; a has 1"


def test_smaller_request_still_fits_after_a_bigger_one_failed() -> None:
    ds = by_id(match([demand(1, nodes=5), demand(2, nodes=1, submitted=NOW)], [pool("a", 3)], now=NOW))
    assert ds[1].verdict is Verdict.WAIT
    assert ds[2].verdict is Verdict.LAUNCH


def test_cpu_memory_and_type_must_fit() -> None:
    pools = [pool("a", 5, cpus_per_node=8, memory_mb_per_node=16000, node_type="cpu")]
    ok = demand(1, cpus_per_node=8, memory_mb_per_node=16000)
    too_many_cpus = demand(2, cpus_per_node=9)
    too_much_memory = demand(3, memory_mb_per_node=16001)
    other_type = demand(4, node_type="gpu")
    ds = by_id(match([ok, too_many_cpus, too_much_memory, other_type], pools, now=NOW))
    assert [ds[i].verdict for i in (1, 2, 3, 4)] == [Verdict.LAUNCH, Verdict.WAIT, Verdict.WAIT, Verdict.WAIT]


# ----------------------------------------------------------------------------- reuse of idle pilots


def test_idle_pilot_is_reused_before_launching() -> None:
    [d] = match([demand(1)], [pool("a", 10)], [pilot("p1", remaining=7200)], now=NOW)
    assert (d.verdict, d.pilot_ids, d.site, d.nodes) == (Verdict.REUSE, ("p1",), "perlmutter", 1)
    assert d.explanation == "request 1 reuses pilot p1 at perlmutter (1 cpu node, 2 h of walltime left)"


def test_pilot_without_enough_walltime_is_not_reused() -> None:
    policy = Policy(reuse_margin_s=60)
    [d] = match(
        [demand(1, walltime_s=3600)], [pool("a", 10)], [pilot("p1", remaining=3650)], now=NOW, policy=policy
    )
    assert d.verdict is Verdict.LAUNCH
    [d] = match([demand(1, walltime_s=3600)], [], [pilot("p1", remaining=3660)], now=NOW, policy=policy)
    assert d.verdict is Verdict.REUSE


def test_smallest_sufficient_pilot_is_chosen() -> None:
    pilots = [pilot("big", nodes=4), pilot("exact", nodes=2), pilot("small", nodes=1)]
    [d] = match([demand(1, nodes=2)], [], pilots, now=NOW)
    assert d.pilot_ids == ("exact",)


def test_pilots_at_one_site_are_combined() -> None:
    pilots = [pilot("p1", nodes=1), pilot("p2", nodes=2), pilot("q", site="other", nodes=1)]
    [d] = match([demand(1, nodes=3)], [], pilots, now=NOW)
    assert (d.verdict, sorted(d.pilot_ids), d.nodes) == (Verdict.REUSE, ["p1", "p2"], 3)


def test_a_pilot_is_leased_once() -> None:
    ds = match([demand(1), demand(2)], [], [pilot("p1")], now=NOW)
    assert [d.verdict for d in ds] == [Verdict.REUSE, Verdict.WAIT]


def test_idle_pilot_of_wrong_shape_is_not_reused() -> None:
    pilots = [pilot("small", cpus_per_node=2), pilot("gpu", node_type="gpu"), pilot("far", site="x")]
    [d] = match([demand(1, cpus_per_node=4, sites=("perlmutter",))], [], pilots, now=NOW)
    assert d.verdict is Verdict.WAIT


# ----------------------------------------------------------------------------- fairness, priority, deadlines


def test_fair_share_between_users() -> None:
    alice = [demand(i, "alice", submitted=NOW - 1000 + i) for i in range(1, 6)]
    bob = [demand(10, "bob", submitted=NOW)]  # submitted last
    ds = by_id(match([*alice, *bob], [pool("a", 3)], now=NOW))
    assert ds[10].verdict is Verdict.LAUNCH
    assert Counter(ds[i].verdict for i in range(1, 6)) == {Verdict.LAUNCH: 2, Verdict.WAIT: 3}


def test_existing_usage_counts_in_fair_share() -> None:
    ds = by_id(match([demand(1, "alice"), demand(2, "bob")], [pool("a", 1)], now=NOW, usage={"bob": 4}))
    assert ds[1].verdict is Verdict.LAUNCH
    assert ds[2].verdict is Verdict.WAIT


def test_priority_beats_fair_share() -> None:
    ds = by_id(
        match(
            [demand(1, "alice", priority=5), demand(2, "bob")], [pool("a", 1)], now=NOW, usage={"alice": 100}
        )
    )
    assert ds[1].verdict is Verdict.LAUNCH
    assert ds[2].verdict is Verdict.WAIT


def test_a_users_requests_go_by_deadline_then_submission() -> None:
    early = demand(1, deadline=NOW + 4000, submitted=NOW)
    late = demand(2, deadline=NOW + 9000, submitted=NOW - 50)
    none = demand(3, submitted=NOW - 100)
    ds = match([none, late, early], [pool("a", 1)], now=NOW)
    assert ds[0].request_id == 1 and ds[0].verdict is Verdict.LAUNCH


def test_request_that_cannot_meet_its_deadline_is_rejected() -> None:
    [d] = match([demand(1, walltime_s=3600, deadline=NOW + 1800)], [pool("a", 9)], now=NOW)
    assert d.verdict is Verdict.REJECT
    assert d.explanation == "request 1 rejected: started now, its 1 h would end 30 min after its deadline"


def test_launch_limit_per_round() -> None:
    ds = match([demand(i) for i in range(1, 4)], [pool("a", 10)], now=NOW, policy=Policy(max_new_pilots=2))
    assert [d.verdict for d in ds] == [Verdict.LAUNCH, Verdict.LAUNCH, Verdict.WAIT]
    assert ds[2].explanation == "request 3 waits: the limit of 2 new pilots per round is reached"


def test_launch_limit_still_allows_reuse() -> None:
    ds = match(
        [demand(1), demand(2)], [pool("a", 10)], [pilot("p")], now=NOW, policy=Policy(max_new_pilots=0)
    )
    assert [d.verdict for d in ds] == [Verdict.REUSE, Verdict.WAIT]
    assert "waits: no site has" not in ds[1].explanation


def test_nodes_per_user_cap() -> None:
    ds = match(
        [demand(1, nodes=2), demand(2, nodes=2)],
        [pool("a", 10)],
        now=NOW,
        policy=Policy(max_nodes_per_user=3),
    )
    assert [d.verdict for d in ds] == [Verdict.LAUNCH, Verdict.WAIT]
    assert ds[1].explanation == "request 2 waits: user alice holds 2 of at most 3 nodes and asks for 2"


# ----------------------------------------------------------------------------- invariants on random inputs


@pytest.mark.parametrize("seed", range(20))
def test_random_rounds_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    types = ["cpu", "gpu", "bigmem"]
    sites = [f"s{i}" for i in range(5)]
    pools = [
        pool(
            rng.choice(sites),
            rng.randint(0, 6),
            partition=f"p{i}",
            node_type=rng.choice(types),
            cpus_per_node=rng.choice([8, 32, 64]),
            memory_mb_per_node=rng.choice([8000, 64000]),
            max_walltime_s=rng.choice([None, 1800, 7200]),
        )
        for i in range(15)
    ]
    pilots = [
        pilot(
            f"pl{i}",
            site=rng.choice(sites),
            nodes=rng.randint(1, 3),
            remaining=rng.uniform(0, 9000),
            node_type=rng.choice(types),
        )
        for i in range(6)
    ]
    demands = [
        demand(
            i,
            user=rng.choice(["a", "b", "c"]),
            nodes=rng.randint(1, 4),
            cpus_per_node=rng.choice([4, 16, 64]),
            memory_mb_per_node=rng.choice([1000, 32000]),
            node_type=rng.choice(types),
            walltime_s=rng.choice([600, 3600, 7000]),
            sites=tuple(rng.sample(sites, rng.randint(0, 2))),
            priority=rng.choice([0, 0, 1]),
            deadline=rng.choice([None, NOW + 5000]),
        )
        for i in range(40)
    ]
    decisions = match(demands, pools, pilots, now=NOW)
    assert sorted(d.request_id for d in decisions) == list(range(40))
    assert decisions == match(demands, pools, pilots, now=NOW)  # deterministic
    req = {d.id: d for d in demands}
    used: dict[tuple[str, str], int] = defaultdict(int)
    leased: list[str] = []
    pilot_by_id = {p.id: p for p in pilots}
    for dec in decisions:
        d = req[dec.request_id]
        assert dec.explanation.startswith(f"request {d.id} ")
        if d.sites and dec.verdict in (Verdict.REUSE, Verdict.LAUNCH):
            assert dec.site in d.sites
        if dec.verdict is Verdict.LAUNCH:
            used[(dec.site, dec.partition)] += dec.nodes
            [p] = [p for p in pools if (p.site, p.partition) == (dec.site, dec.partition)]
            assert p.node_type == d.node_type and p.cpus_per_node >= d.cpus_per_node
            assert p.memory_mb_per_node >= d.memory_mb_per_node
            assert p.max_walltime_s is None or p.max_walltime_s >= d.walltime_s
            assert dec.nodes == d.nodes and dec.pilot_walltime_s >= min(
                d.walltime_s, p.max_walltime_s or 10**9
            )
        elif dec.verdict is Verdict.REUSE:
            leased.extend(dec.pilot_ids)
            chosen = [pilot_by_id[i] for i in dec.pilot_ids]
            assert sum(p.nodes for p in chosen) >= d.nodes
            assert all(p.remaining_s >= d.walltime_s + 60 and p.node_type == d.node_type for p in chosen)
        elif dec.verdict is Verdict.REJECT:
            assert d.deadline is not None and NOW + d.walltime_s > d.deadline
    for p in pools:
        assert used[(p.site, p.partition)] <= p.nodes_free
    assert len(leased) == len(set(leased))
