"""jiriaf.jrm.addresses: shared and per-pod pod addresses, allocation, persistence, settings."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from jiriaf.jrm.addresses import (
    STATE_FILE,
    AddressesExhausted,
    AddressPool,
    PodAddresses,
    default_pod_cidr,
    is_bindable,
    is_loopback,
    parse_cidr,
    usable_count,
)
from jiriaf.jrm.settings import JRMSettings

pytestmark = pytest.mark.unit


def pod(uid: str, ip: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": f"p-{uid}", "uid": uid}}
    if ip:
        out["status"] = {"podIP": ip}
    return out


# ------------------------------------------------------------------------------------------- cidr


def test_default_cidr_is_a_stable_slash16_in_loopback_outside_127_0() -> None:
    cidr = default_pod_cidr("node-a")
    assert cidr == default_pod_cidr("node-a")
    net = ipaddress.ip_network(cidr)
    assert isinstance(net, ipaddress.IPv4Network)  # as subnet_of of 127.0.0.0/8 requires
    assert net.prefixlen == 16 and net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
    assert not net.overlaps(ipaddress.ip_network("127.0.0.0/16"))
    assert (
        len({default_pod_cidr(f"n{i}") for i in range(20)}) > 10
    )  # different nodes, mostly different ranges


def test_parse_cidr_ignores_host_bits_and_names_bad_input() -> None:
    assert str(parse_cidr(" 10.1.2.3/24 ")) == "10.1.2.0/24"
    assert str(parse_cidr("fd00::1/120")) == "fd00::/120"
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_cidr("10.1.2/33")


@pytest.mark.parametrize(("cidr", "count"), [("10.0.0.0/24", 254), ("10.0.0.0/31", 2), ("10.0.0.7/32", 1)])
def test_usable_count(cidr: str, count: int) -> None:
    assert usable_count(parse_cidr(cidr)) == count


def test_is_loopback() -> None:
    assert is_loopback(parse_cidr("127.5.0.0/16"))
    assert not is_loopback(parse_cidr("10.5.0.0/16"))


# ------------------------------------------------------------------------------------------- pool


def test_pool_hands_out_host_addresses_in_order_and_keeps_them_per_uid() -> None:
    pool = AddressPool(parse_cidr("10.0.0.0/29"))
    got = [pool.allocate(u) for u in "abcdef"]
    assert got == [f"10.0.0.{i}" for i in range(1, 7)]  # not .0 (network) nor .7 (broadcast)
    assert pool.allocate("c") == "10.0.0.3"
    with pytest.raises(AddressesExhausted):
        pool.allocate("g")


def test_pool_skips_reserved_and_continues_after_the_last_allocation() -> None:
    pool = AddressPool(parse_cidr("10.0.0.0/29"), reserved=["10.0.0.2"])
    assert pool.allocate("a") == "10.0.0.1"
    assert pool.allocate("b") == "10.0.0.3"
    pool.release("a")
    assert pool.allocate("c") == "10.0.0.4"  # not the just-freed .1
    assert [pool.allocate(u) for u in "de"] == ["10.0.0.5", "10.0.0.6"]
    assert pool.allocate("g") == "10.0.0.1"  # wrapped around to the free one
    with pytest.raises(AddressesExhausted):
        pool.allocate("h")


def test_pool_releases_uids_that_are_no_longer_live_before_allocating() -> None:
    pool = AddressPool(parse_cidr("10.0.0.0/30"))  # two addresses
    pool.allocate("a")
    pool.allocate("b")
    assert pool.allocate("c", live={"b", "c"}) == "10.0.0.1"
    assert set(pool.allocations) == {"b", "c"}


def test_pool_prefers_an_address_the_pod_already_had_when_it_is_free_and_inside() -> None:
    pool = AddressPool(parse_cidr("10.0.0.0/24"), reserved=["10.0.0.9"])
    assert pool.allocate("a", prefer="10.0.0.50") == "10.0.0.50"
    assert pool.allocate("b", prefer="10.0.0.50") == "10.0.0.1"  # taken
    assert pool.allocate("c", prefer="10.0.0.9") == "10.0.0.2"  # reserved
    assert pool.allocate("d", prefer="10.9.0.5") == "10.0.0.3"  # outside
    assert pool.allocate("e", prefer="10.0.0.255") == "10.0.0.4"  # broadcast
    assert pool.allocate("f", prefer="not-an-ip") == "10.0.0.5"


def test_pool_small_and_ipv6_networks() -> None:
    assert AddressPool(parse_cidr("10.0.0.4/31")).allocate("a") == "10.0.0.4"
    single = AddressPool(parse_cidr("10.0.0.7/32"))
    assert single.allocate("a") == "10.0.0.7"
    with pytest.raises(AddressesExhausted):
        single.allocate("b")
    v6 = AddressPool(parse_cidr("fd00::/120"))
    assert v6.allocate("a") == "fd00::1"
    assert v6.first_address() == "fd00::1"


def test_pool_json_round_trip_drops_what_no_longer_fits() -> None:
    pool = AddressPool(parse_cidr("10.0.0.0/24"))
    pool.allocate("a")
    pool.allocate("b")
    other = AddressPool(parse_cidr("10.0.0.0/24"))
    other.load_json(pool.to_json())
    assert other.allocations == pool.allocations and other.cursor == pool.cursor
    smaller = AddressPool(parse_cidr("10.0.0.0/31"), reserved=["10.0.0.1"])
    smaller.load_json(
        {"cidr": "10.0.0.0/24", "cursor": 77, "allocations": {"a": "10.0.0.1", "b": "10.0.0.2"}}
    )
    assert smaller.allocations == {} and smaller.cursor == 1
    dup = AddressPool(parse_cidr("10.0.0.0/24"))
    dup.load_json({"allocations": {"a": "10.0.0.5", "b": "10.0.0.5", 3: "10.0.0.6"}})
    assert dup.allocations == {"a": "10.0.0.5"}
    dup.load_json({"allocations": "garbage"})
    assert dup.allocations == {"a": "10.0.0.5"}


# -------------------------------------------------------------------------------------- pod addresses


def test_shared_mode_gives_every_pod_the_node_address(tmp_path: Path) -> None:
    addrs = PodAddresses("shared", "10.1.1.1", state_dir=tmp_path)
    assert addrs.pool is None and addrs.cidr is None
    assert addrs.address_for(pod("a")) == addrs.address_for(pod("b")) == "10.1.1.1"
    assert not (tmp_path / STATE_FILE).exists()
    assert addrs.startup_report() == []


def test_per_pod_addresses_survive_a_restart(tmp_path: Path) -> None:
    first = PodAddresses("per-pod", "127.0.0.1", "127.50.0.0/24", state_dir=tmp_path)
    a = first.address_for(pod("a"))
    b = first.address_for(pod("b"))
    assert a == "127.50.0.1" and b == "127.50.0.2"
    stored = json.loads((tmp_path / STATE_FILE).read_text())
    assert stored["allocations"] == {"a": a, "b": b}
    again = PodAddresses("per-pod", "127.0.0.1", "127.50.0.0/24", state_dir=tmp_path)
    assert again.address_for(pod("b")) == b
    assert again.address_for(pod("c")) == "127.50.0.3"
    again.release("a")
    assert "a" not in json.loads((tmp_path / STATE_FILE).read_text())["allocations"]


def test_per_pod_reuses_the_reported_pod_ip_when_the_file_was_lost(tmp_path: Path) -> None:
    addrs = PodAddresses("per-pod", "127.0.0.1", "127.50.0.0/24", state_dir=tmp_path)
    assert addrs.address_for(pod("a", ip="127.50.0.77")) == "127.50.0.77"


def test_per_pod_never_gives_the_node_address(tmp_path: Path) -> None:
    addrs = PodAddresses("per-pod", "10.0.0.1", "10.0.0.0/30", state_dir=tmp_path)
    assert addrs.address_for(pod("a")) == "10.0.0.2"


def test_per_pod_default_cidr_from_node_name(tmp_path: Path) -> None:
    addrs = PodAddresses("per-pod", "127.0.0.1", None, state_dir=tmp_path, node_name="jrm-x")
    assert addrs.cidr == default_pod_cidr("jrm-x")
    assert ipaddress.ip_address(addrs.address_for(pod("a"))) in ipaddress.ip_network(addrs.cidr)


def test_per_pod_exhausted_falls_back_to_the_node_address_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    addrs = PodAddresses("per-pod", "10.9.9.9", "10.0.0.0/32", state_dir=tmp_path)
    assert addrs.address_for(pod("a")) == "10.0.0.0"
    with caplog.at_level(logging.ERROR):
        assert addrs.address_for(pod("b")) == "10.9.9.9"
        assert addrs.address_for(pod("c")) == "10.9.9.9"
    assert len([r for r in caplog.records if "node address" in r.message]) == 1


def test_pod_without_uid_gets_the_node_address(tmp_path: Path) -> None:
    addrs = PodAddresses("per-pod", "127.0.0.1", "127.50.0.0/24", state_dir=tmp_path)
    assert addrs.address_for({"metadata": {"name": "x"}}) == "127.0.0.1"


def test_unreadable_state_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        addrs = PodAddresses("per-pod", "127.0.0.1", "127.50.0.0/24", state_dir=tmp_path)
    assert addrs.address_for(pod("a")) == "127.50.0.1"
    assert any("unreadable" in r.message for r in caplog.records)


def test_loopback_addresses_bind_and_the_report_warns_about_endpoint_slices(tmp_path: Path) -> None:
    assert is_bindable("127.50.0.1")
    addrs = PodAddresses("per-pod", "127.0.0.1", "127.50.0.0/24", state_dir=tmp_path)
    report = addrs.startup_report()
    assert len(report) == 1 and "EndpointSlices" in report[0]


def test_report_warns_when_the_range_is_not_local(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to this host, so nothing can bind it (no traffic sent)
    assert not is_bindable("192.0.2.1")
    report = PodAddresses("per-pod", "127.0.0.1", "192.0.2.0/24", state_dir=tmp_path).startup_report()
    assert len(report) == 1 and "ip route add local 192.0.2.0/24 dev lo" in report[0]


# ------------------------------------------------------------------------------------------- settings


def test_settings_validate_the_cidr_and_its_size(tmp_path: Path) -> None:
    ok = JRMSettings(node_name="n", workdir=tmp_path, address_mode="per-pod", pod_cidr="10.1.2.3/24")
    assert ok.pod_cidr == "10.1.2.0/24"
    assert JRMSettings(node_name="n", workdir=tmp_path, pod_cidr=" ").pod_cidr is None
    with pytest.raises(ValidationError, match="fewer than the pod capacity 110"):
        JRMSettings(node_name="n", workdir=tmp_path, address_mode="per-pod", pod_cidr="10.1.2.0/28")
    assert JRMSettings(node_name="n", address_mode="per-pod", pod_cidr="10.1.2.0/28", pods=14).pods == 14
    with pytest.raises(ValidationError, match="not a CIDR"):
        JRMSettings(node_name="n", pod_cidr="10.1.2.0/99")
    with pytest.raises(ValidationError):
        JRMSettings(node_name="n", address_mode="bridge")  # type: ignore[arg-type]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIRIAF_ADDRESS_MODE", "per-pod")
    monkeypatch.setenv("JIRIAF_POD_CIDR", "127.60.0.0/16")
    monkeypatch.setenv("JIRIAF_METRICS_INTERVAL", "2.5")
    s = JRMSettings(node_name="n")
    assert (s.address_mode, s.pod_cidr, s.metrics_interval) == ("per-pod", "127.60.0.0/16", 2.5)
