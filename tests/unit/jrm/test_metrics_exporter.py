"""jiriaf.jrm.exporter: the families of /metrics/resource, /metrics and /stats/summary, rendered
and parsed back as a scraper parses them."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jiriaf.jrm.exporter import (
    CONTENT_TYPE,
    Health,
    SummaryContext,
    hardware_families,
    health_families,
    render_families,
    resource_families,
    stats_summary,
)
from jiriaf.jrm.metrics import (
    MIN_CPU_SECONDS,
    ContainerRef,
    ContainerUsage,
    Counters,
    NodeUsage,
    ProcessReading,
    Sample,
)

pytestmark = pytest.mark.unit

T = 1_700_000_000.25


def reading(pid: int, name: str, pgid: int, cpu: float) -> ProcessReading:
    return ProcessReading(
        pid=pid,
        ppid=1,
        pgid=pgid,
        start_ticks=pid,
        name=name,
        started_at=T - 100,
        cpu_user=cpu,
        cpu_system=cpu / 10,
        rss=2_000_000,
        pss=1_000_000,
        threads=2,
        open_fds=4,
        read_bytes=10,
        write_bytes=20,
        ctx_voluntary=3,
        ctx_involuntary=1,
    )


def container(
    pod: str, name: str, pgid: int, procs: list[ProcessReading], cpu: float, ns: str = "ns"
) -> ContainerUsage:
    return ContainerUsage(
        ref=ContainerRef(ns, pod, f"uid-{pod}", name, f"uid-{pod}/{name}", started_at=T - 50, pgid=pgid),
        timestamp=T,
        counters=Counters(cpu_user=cpu, cpu_system=0.0, read_bytes=10, write_bytes=20, ctx_voluntary=3),
        rss=sum(p.rss for p in procs),
        pss=sum(p.pss for p in procs),
        working_set=sum(p.rss for p in procs),
        threads=sum(p.threads for p in procs),
        open_fds=sum(p.open_fds for p in procs),
        processes=tuple(procs),
        cpu_rate=0.5,
    )


def sample() -> Sample:
    c1 = container("web", "app", 100, [reading(100, "sh", 100, 0.0), reading(101, "server", 100, 4.0)], 4.4)
    c2 = container("web", "side", 200, [reading(200, "sleep", 200, 0.0)], 0.0)
    c3 = container("job", "main", 300, [reading(300, "stress", 300, 9.0)], 9.9, ns="other")
    node = NodeUsage(
        timestamp=T,
        cpu_seconds=20.0,
        working_set=50_000_000,
        rss=60_000_000,
        start_time=T - 500,
        cpu_rate=1.5,
    )
    return Sample(timestamp=T, duration=0.01, node=node, containers=(c1, c2, c3), process_count=4)


def parse(families: list[Any]) -> tuple[dict[str, list[Any]], str]:
    text = render_families(families).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}, text


def test_resource_metrics_as_metrics_server_reads_them() -> None:
    parsed, text = parse(resource_families(sample()))
    cpu = {
        (s.labels["namespace"], s.labels["pod"], s.labels["container"]): s
        for s in parsed["container_cpu_usage_seconds"]
    }
    assert set(cpu) == {("ns", "web", "app"), ("ns", "web", "side"), ("other", "job", "main")}
    assert cpu[("ns", "web", "app")].value == pytest.approx(4.4)
    assert cpu[("ns", "web", "side")].value == pytest.approx(
        MIN_CPU_SECONDS
    )  # never 0: metrics-server would drop the pod
    assert all(s.timestamp == pytest.approx(T) for s in cpu.values())
    assert "container_cpu_usage_seconds_total{" in text
    assert f" {int(T * 1000)}\n" in text  # sample times in milliseconds, as the kubelet sends them
    mem = {s.labels["container"]: s.value for s in parsed["container_memory_working_set_bytes"]}
    assert mem == {"app": 4_000_000, "side": 2_000_000, "main": 2_000_000}
    starts = {s.labels["container"]: s.value for s in parsed["container_start_time_seconds"]}
    assert starts["app"] == pytest.approx(T - 50)
    (node_cpu,) = parsed["node_cpu_usage_seconds"]
    (node_mem,) = parsed["node_memory_working_set_bytes"]
    assert node_cpu.value == 20.0 and node_mem.value == 50_000_000 and node_cpu.timestamp == pytest.approx(T)
    pods = {(s.labels["namespace"], s.labels["pod"]): s.value for s in parsed["pod_cpu_usage_seconds"]}
    assert pods[("ns", "web")] == pytest.approx(4.4 + MIN_CPU_SECONDS)
    assert [s.value for s in parsed["resource_scrape_error"]] == [0]
    assert "0.0.4" in CONTENT_TYPE


def test_resource_metrics_of_an_empty_node_have_the_node_only() -> None:
    node = NodeUsage(timestamp=T, cpu_seconds=1.0, working_set=1, rss=1, start_time=T)
    parsed, _ = parse(resource_families(Sample(timestamp=T, duration=0, node=node, containers=())))
    assert parsed["container_cpu_usage_seconds"] == [] and len(parsed["node_cpu_usage_seconds"]) == 1


def test_hardware_metrics_tell_processes_apart_within_and_across_containers() -> None:
    parsed, _ = parse(hardware_families(sample()))
    procs = parsed["jiriaf_process_cpu_seconds"]
    user = {
        (s.labels["pod"], s.labels["container"], s.labels["pid"], s.labels["name"]): s.value
        for s in procs
        if s.labels["mode"] == "user"
    }
    assert user == {
        ("web", "app", "100", "sh"): 0.0,
        ("web", "app", "101", "server"): 4.0,
        ("web", "side", "200", "sleep"): 0.0,
        ("job", "main", "300", "stress"): 9.0,
    }
    assert {s.labels["pgid"] for s in procs} == {"100", "200", "300"}
    ccpu = {
        (s.labels["container"], s.labels["mode"]): s.value for s in parsed["jiriaf_container_cpu_seconds"]
    }
    assert ccpu[("app", "user")] == pytest.approx(4.4) and ccpu[("app", "system")] == 0.0
    nprocs = {s.labels["container"]: s.value for s in parsed["jiriaf_container_processes"]}
    assert nprocs == {"app": 2, "side": 1, "main": 1}
    for name in (
        "jiriaf_container_memory_rss_bytes",
        "jiriaf_container_memory_working_set_bytes",
        "jiriaf_container_threads",
        "jiriaf_container_open_fds",
        "jiriaf_container_read_bytes",
        "jiriaf_container_write_bytes",
        "jiriaf_container_context_switches",
        "jiriaf_container_start_time_seconds",
        "jiriaf_process_memory_rss_bytes",
        "jiriaf_process_memory_pss_bytes",
        "jiriaf_container_memory_pss_bytes",
        "jiriaf_process_threads",
        "jiriaf_process_open_fds",
        "jiriaf_process_read_bytes",
        "jiriaf_process_write_bytes",
        "jiriaf_process_context_switches",
        "jiriaf_process_start_time_seconds",
    ):
        assert parsed[name], name
    assert all(
        set(s.labels) >= {"namespace", "pod", "container", "pgid"} for s in parsed["jiriaf_container_threads"]
    )
    assert [s.value for s in parsed["jiriaf_node_cpu_seconds"]] == [20.0]
    assert all(s.timestamp is None for s in procs)  # Prometheus stamps /metrics itself


def test_health_metrics() -> None:
    h = Health(
        address_mode="per-pod",
        start_time=T,
        pods_by_phase={"Running": 3, "Failed": 1, "Weird": 2},
        containers_started=7,
        container_failures=2,
        container_restarts=1,
        api_errors=4,
        watch_relists=5,
        status_patches=9,
        sample_duration=0.02,
        sample_timestamp=T,
        sampled_processes=11,
    )
    parsed, _ = parse(health_families(h))
    phases = {s.labels["phase"]: s.value for s in parsed["jiriaf_jrm_pods"]}
    assert phases == {"Pending": 0, "Running": 3, "Succeeded": 0, "Failed": 1, "Unknown": 0, "Weird": 2}
    values = {name: parsed[name][0].value for name in parsed if name != "jiriaf_jrm_pods"}
    assert values["jiriaf_jrm_container_starts"] == 7
    assert values["jiriaf_jrm_container_failures"] == 2
    assert values["jiriaf_jrm_container_restarts"] == 1
    assert values["jiriaf_jrm_api_errors"] == 4
    assert values["jiriaf_jrm_watch_relists"] == 5
    assert values["jiriaf_jrm_status_patches"] == 9
    assert values["jiriaf_jrm_sampled_processes"] == 11
    from jiriaf import __version__

    assert parsed["jiriaf_jrm_info"][0].labels == {"version": __version__, "address_mode": "per-pod"}
    bare, _ = parse(health_families(Health("shared", T)))
    assert "jiriaf_jrm_sample_duration_seconds" not in bare  # before the first sample


def test_stats_summary() -> None:
    ctx = SummaryContext(
        node_name="n1",
        memory_capacity=100_000_000,
        pod_start_times={"uid-web": T - 60},
        fs={"capacityBytes": 10, "availableBytes": 4, "usedBytes": 6},
        rlimit={"maxpid": 100, "curproc": 7},
    )
    s = stats_summary(sample(), ctx)
    node = s["node"]
    assert node["nodeName"] == "n1"
    assert (
        node["cpu"]["usageCoreNanoSeconds"] == 20_000_000_000
        and node["cpu"]["usageNanoCores"] == 1_500_000_000
    )
    assert node["memory"]["workingSetBytes"] == 50_000_000 and node["memory"]["availableBytes"] == 50_000_000
    assert node["fs"]["usedBytes"] == 6 and node["rlimit"]["curproc"] == 7
    assert node["cpu"]["time"].endswith("Z")
    pods = {p["podRef"]["name"]: p for p in s["pods"]}
    web = pods["web"]
    assert web["podRef"] == {"name": "web", "namespace": "ns", "uid": "uid-web"}
    assert [c["name"] for c in web["containers"]] == ["app", "side"]
    assert web["cpu"]["usageNanoCores"] == 1_000_000_000  # two containers at 0.5 cores
    assert web["memory"]["workingSetBytes"] == 6_000_000 and web["process_stats"] == {"process_count": 3}
    assert web["startTime"] != pods["job"]["startTime"]  # from the controller, else the first container


def test_stats_summary_without_rates_or_context() -> None:
    node = NodeUsage(timestamp=T, cpu_seconds=1.0, working_set=1, rss=1, start_time=T)
    c = container("p", "c", 1, [reading(1, "x", 1, 1.0)], 1.0)
    c = ContainerUsage(**{**c.__dict__, "cpu_rate": None})
    s = stats_summary(Sample(T, 0, node, (c,)), SummaryContext(node_name="n"))
    assert "usageNanoCores" not in s["node"]["cpu"] and "usageNanoCores" not in s["pods"][0]["cpu"]
    assert "fs" not in s["node"] and "availableBytes" not in s["node"]["memory"]
