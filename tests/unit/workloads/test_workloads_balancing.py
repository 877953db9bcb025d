"""Backends from EndpointSlices and the balancer's choices (pure logic)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from multidict import CIMultiDict

from jiriaf.workloads.balancing import Backend, Balancer, backends_from_pods, endpoint_ready, ready_backends
from jiriaf.workloads.loadbalancer import forwarded_headers

pytestmark = pytest.mark.unit


def eps(
    *endpoints: tuple[list[str], bool | None], ports: list[dict[str, Any]] | None = None, kind: str = "IPv4"
) -> dict[str, Any]:
    out = []
    for addresses, ready in endpoints:
        ep: dict[str, Any] = {"addresses": addresses}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        out.append(ep)
    return {
        "addressType": kind,
        "endpoints": out,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def test_endpoint_ready_semantics() -> None:
    assert endpoint_ready({})
    assert endpoint_ready({"conditions": {}})
    assert endpoint_ready({"conditions": {"ready": True}})
    assert not endpoint_ready({"conditions": {"ready": False}})
    assert not endpoint_ready({"conditions": {"ready": False, "serving": True, "terminating": True}})


def test_ready_backends_reads_ready_addresses_with_the_slice_port() -> None:
    slices = [
        eps((["127.0.0.3"], True), (["127.0.0.2"], None), (["127.0.0.9"], False)),
        eps((["127.0.0.4", "127.0.0.5"], True)),
    ]
    assert ready_backends(slices, "http") == [
        Backend("127.0.0.2", 8080),
        Backend("127.0.0.3", 8080),
        Backend("127.0.0.4", 8080),
        Backend("127.0.0.5", 8080),
    ]


def test_ready_backends_deduplicates_and_skips_fqdn_and_portless_slices() -> None:
    slices = [
        eps((["127.0.0.2"], True)),
        eps((["127.0.0.2"], True)),
        eps((["web.example"], True), kind="FQDN"),
        eps((["127.0.0.7"], True), ports=[]),
        {"addressType": "IPv4"},
    ]
    assert ready_backends(slices) == [Backend("127.0.0.2", 8080)]


def test_port_selection_by_name() -> None:
    two_ports = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
    slices = [eps((["127.0.0.2"], True), ports=two_ports)]
    assert ready_backends(slices, "metrics") == [Backend("127.0.0.2", 9090)]
    assert ready_backends(slices, "http") == [Backend("127.0.0.2", 8080)]
    assert ready_backends(slices, "other") == []
    # without a name: the only port, or the unnamed one, or the first
    assert ready_backends(slices) == [Backend("127.0.0.2", 8080)]
    unnamed: list[dict[str, Any]] = [{"name": "metrics", "port": 9090}, {"port": 7000}]
    assert ready_backends([eps((["127.0.0.2"], True), ports=unnamed)]) == [Backend("127.0.0.2", 7000)]
    assert ready_backends([eps((["127.0.0.2"], True), ports=[{"port": 7000}])], "") == [
        Backend("127.0.0.2", 7000)
    ]
    bad: list[dict[str, Any]] = [{"name": "http", "port": 0}, {"name": "x", "port": "80"}]
    assert ready_backends([eps((["127.0.0.2"], True), ports=bad)], "http") == []


def test_ipv6_backend_url() -> None:
    b = ready_backends([eps((["::1"], True), kind="IPv6")])[0]
    assert b.url == "http://[::1]:8080"
    assert str(b) == "[::1]:8080"
    assert Backend("127.0.0.2", 80).url == "http://127.0.0.2:80"


B = [Backend(f"127.0.0.{i}", 8080) for i in range(2, 7)]


def test_round_robin_cycles_in_order() -> None:
    bal = Balancer("round-robin", B[:3])
    picks = []
    for _ in range(7):
        b = bal.acquire()
        assert b is not None
        picks.append(b)
        bal.release(b)
    assert picks == [B[0], B[1], B[2], B[0], B[1], B[2], B[0]]
    assert bal.picked == {B[0]: 3, B[1]: 2, B[2]: 2}


def test_round_robin_spreads_evenly_after_scale_up_and_continues_after_scale_down() -> None:
    bal = Balancer("round-robin", B[:1])
    assert bal.acquire() == B[0]
    assert bal.update(B[:4]) is True
    counts: Counter[Backend] = Counter()
    for _ in range(40):
        b = bal.acquire()
        assert b is not None
        counts[b] += 1
        bal.release(b)
    assert set(counts) == set(B[:4]) and set(counts.values()) == {10}
    # remove the backend that is due next: round-robin continues with the following one
    due = B[(bal._next) % 4]
    remaining = [b for b in B[:4] if b != due]
    bal.update(remaining)
    nxt = bal.acquire()
    assert nxt is not None and nxt != due
    assert nxt == min((b for b in remaining if b > due), default=remaining[0])


def test_update_reports_changes_only() -> None:
    bal = Balancer("round-robin", B[:2])
    assert bal.update(list(reversed(B[:2]))) is False
    assert bal.update(B[:2] + B[:2]) is False
    assert bal.update(B[:3]) is True
    assert bal.backends == B[:3]


def test_least_connections_prefers_idle_backends() -> None:
    bal = Balancer("least-connections", B[:3])
    first = [bal.acquire() for _ in range(3)]
    assert sorted(b for b in first if b is not None) == B[:3]  # one each
    bal.release(B[1])
    assert bal.acquire() == B[1]  # the only one with nothing in flight
    bal.release(B[0])
    bal.release(B[2])
    assert bal.in_flight == {B[0]: 0, B[1]: 1, B[2]: 0}
    # ties go round-robin: both idle backends get picked before either twice
    a = bal.acquire()
    b = bal.acquire()
    assert {a, b} == {B[0], B[2]}


def test_in_flight_survives_scale_down_until_released() -> None:
    bal = Balancer("least-connections", B[:2])
    b0 = bal.acquire()
    assert b0 == B[0]
    bal.update([B[1]])
    assert bal.in_flight[B[0]] == 1  # still counted while its request runs
    assert bal.acquire() == B[1]  # but never picked again
    bal.release(B[0])
    assert B[0] not in bal.in_flight
    bal.update(B[:2])
    assert bal.in_flight[B[0]] == 0


def test_no_backends_and_exclusions() -> None:
    bal = Balancer("round-robin")
    assert bal.acquire() is None
    bal.update(B[:2])
    assert bal.acquire(exclude=[B[0]]) == B[1]
    assert bal.acquire(exclude=B[:2]) is None
    with pytest.raises(ValueError, match="unknown policy"):
        Balancer("random")  # type: ignore[arg-type]


def test_forwarded_headers_drop_hop_by_hop_and_add_forwarded_for() -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        [
            ("Host", "lb"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Accept", "text/plain"),
            ("X-Forwarded-For", "10.0.0.1"),
        ]
    )
    out = forwarded_headers(headers, "127.0.0.9")
    assert dict(out) == {"Accept": "text/plain", "X-Forwarded-For": "10.0.0.1, 127.0.0.9"}
    assert dict(forwarded_headers(CIMultiDict([("Accept", "*/*")]), None)) == {"Accept": "*/*"}


# ------------------------------------------------------------------------------ endpoints from pods


def service(
    selector: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "selector": {"app": "web"} if selector is None else selector,
            "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}],
            **spec,
        },
    }


def pod(
    ip: str | None,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    deleting: bool = False,
    container_ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{ip}", "labels": {"app": "web"} if labels is None else labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "ports": container_ports or []}]},
        "status": status,
    }


def test_pods_source_follows_selector_readiness_and_lifecycle() -> None:
    pods = [
        pod("127.1.0.2"),
        pod("127.1.0.3"),
        pod("127.1.0.4", ready=False),
        pod("127.1.0.5", labels={"app": "other"}),
        pod("127.1.0.6", deleting=True),
        pod("127.1.0.7", phase="Succeeded"),
        pod(None),
    ]
    assert backends_from_pods(service(), pods) == [Backend("127.1.0.2", 8080), Backend("127.1.0.3", 8080)]
    publish = service(publishNotReadyAddresses=True)
    assert Backend("127.1.0.4", 8080) in backends_from_pods(publish, pods)
    assert Backend("127.1.0.6", 8080) not in backends_from_pods(publish, pods)


def test_pods_source_needs_a_service_with_a_selector_and_port() -> None:
    pods = [pod("127.1.0.2")]
    assert backends_from_pods(None, pods) == []
    assert backends_from_pods(service(selector={}), pods) == []
    assert backends_from_pods(service(ports=[]), pods) == []
    assert backends_from_pods(service(), pods, port_name="metrics") == []


def test_pods_source_resolves_target_ports() -> None:
    named = service(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    with_port = pod("127.1.0.2", container_ports=[{"name": "web", "containerPort": 9000}])
    udp_only = pod("127.1.0.3", container_ports=[{"name": "web", "containerPort": 9001, "protocol": "UDP"}])
    without = pod("127.1.0.4")
    assert backends_from_pods(named, [with_port, udp_only, without]) == [Backend("127.1.0.2", 9000)]
    no_target = service(ports=[{"port": 7000}])
    assert backends_from_pods(no_target, [without]) == [Backend("127.1.0.4", 7000)]
    text_number = service(ports=[{"port": 80, "targetPort": "8081"}])
    assert backends_from_pods(text_number, [without]) == [Backend("127.1.0.4", 8081)]
    two = service(ports=[{"name": "http", "port": 80, "targetPort": 8080}, {"name": "m", "port": 9090}])
    assert backends_from_pods(two, [without], "m") == [Backend("127.1.0.4", 9090)]
    assert backends_from_pods(two, [without]) == [Backend("127.1.0.4", 8080)]
