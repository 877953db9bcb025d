"""jiriaf.jcs.facilities: parsing sinfo/squeue output, time limits, site files (own and shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jiriaf.errors import UserError
from jiriaf.jcs.facilities import (
    Capacity,
    SiteConfig,
    load_sites_file,
    local_capacity,
    parse_sinfo,
    parse_slurm_time,
    parse_squeue_pending,
    static_capacity,
)

pytestmark = pytest.mark.unit

SINFO = """\
debug*|up|30:00|1|idle|8|1024|(null)
regular|up|1-00:00:00|3|idle|128|512000|cpu,milan
regular|up|1-00:00:00|2|mixed|128|512000|cpu,milan
regular|up|1-00:00:00|1|idle*|128|512000|cpu,milan
regular|up|1-00:00:00|4|allocated|128|512000|cpu,milan
gpu|up|12:00:00|2|idle|64|256000|gpu,a100
gpu|up|12:00:00|1|drained|64|256000|gpu,a100
old|down|infinite|5|idle|16|32000|(null)
cloud|up|infinite|2|idle~|4+|8000|(null)
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30:00", 1800),
        ("1-00:00:00", 86400),
        ("12:00:00", 43200),
        ("45", 2700),
        ("2-01:02:03", 2 * 86400 + 3723),
        ("infinite", None),
        ("UNLIMITED", None),
        ("n/a", None),
    ],
)
def test_slurm_time_limits(text: str, seconds: int | None) -> None:
    assert parse_slurm_time(text) == seconds


def test_sinfo_groups_partitions_and_counts_idle_nodes() -> None:
    caps = parse_sinfo(SINFO, default_type="cpu", node_types={"gpu": "gpu"}, pending={"regular": 7})
    assert caps == [
        Capacity("cloud", "cpu", 2, 2, 4, 8000, None, 0),
        Capacity("debug", "cpu", 1, 1, 8, 1024, 1800, 0),
        Capacity("gpu", "gpu", 3, 2, 64, 256000, 43200, 0),
        Capacity("regular", "cpu", 10, 3, 128, 512000, 86400, 7),
    ]


def test_sinfo_node_type_from_a_feature_and_partition_filter() -> None:
    caps = parse_sinfo(
        SINFO, node_types={"a100": "gpu-a100", "milan": "cpu-milan"}, partitions=["gpu", "regular"]
    )
    assert [(c.partition, c.node_type) for c in caps] == [("gpu", "gpu-a100"), ("regular", "cpu-milan")]


def test_sinfo_with_a_wrong_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 8 fields"):
        parse_sinfo("debug up 30:00 1 idle\n")


def test_squeue_pending_per_partition() -> None:
    assert parse_squeue_pending("debug\nregular\nregular,debug\n\n") == {"debug": 2, "regular": 2}


def test_local_and_static_capacity() -> None:
    local = local_capacity(
        SiteConfig(name="h", kind="local", max_nodes=3, cpus_per_node=4, memory_mb_per_node=100)
    )
    assert (local.nodes_total, local.nodes_free, local.cpus_per_node, local.memory_mb_per_node) == (
        3,
        3,
        4,
        100,
    )
    static = static_capacity(
        SiteConfig(
            name="s", kind="static", nodes=5, cpus_per_node=2, memory_mb_per_node=10, max_walltime="2h"
        )
    )
    assert (static.nodes_free, static.max_walltime_s) == (5, 7200)


def test_sites_file_of_the_facility_manager(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"sites": {"a": {"kind": "static", "nodes": 1}, "b": {"kind": "local"}}}))
    assert [(s.name, s.kind) for s in load_sites_file(path)] == [("a", "static"), ("b", "local")]
    path.write_text(yaml.safe_dump({"sites": [{"name": "a", "kind": "slurm", "partitons": ["x"]}]}))
    with pytest.raises(UserError, match=r"site a: partitons: Extra inputs are not permitted"):
        load_sites_file(path)
    path.write_text(yaml.safe_dump({"sites": {"a": {"kind": "pbs"}}}))
    with pytest.raises(UserError, match=r"site a: kind: Input should be 'slurm', 'local' or 'static'"):
        load_sites_file(path)
    path.write_text("sites: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_sites_file(path)


def test_the_shared_sites_file_of_the_pilot_launcher(tmp_path: Path) -> None:
    """The pilots' keys give defaults (kind from executor, partition, node type, walltime limit);
    sites of batch systems the manager cannot scrape are pilot-only; static sites are scrape-only."""
    path = tmp_path / "sites.yaml"
    doc = {
        "sites": {
            "perlmutter": {
                "executor": "slurm",
                "batch": {"partition": "regular", "max_walltime": 43200, "account": "m1"},
                "control_plane": {"kubeconfig": "~/.kube/jrm", "mode": "direct"},
                "jrm": {"nodetype": "cpu-milan"},
                "env": {"SLURM_CONF": "/etc/slurm/pm.conf"},
            },
            "here": {"kind": "local", "max_nodes": 2, "control_plane": {"kubeconfig": "k"}},
            "polaris": {"executor": "pbs", "control_plane": {"kubeconfig": "k"}},
            "lab": {"kind": "static", "nodes": 4, "cpus_per_node": 16, "memory_mb_per_node": 64000},
        }
    }
    path.write_text(yaml.safe_dump(doc))
    sites = {s.name: s for s in load_sites_file(path)}
    assert sorted(sites) == ["here", "lab", "perlmutter"]
    pm = sites["perlmutter"]
    assert (pm.kind, pm.partitions, pm.node_type, pm.max_walltime, pm.env) == (
        "slurm",
        ["regular"],
        "cpu-milan",
        43200,
        {"SLURM_CONF": "/etc/slurm/pm.conf"},
    )
    assert (sites["here"].kind, sites["here"].max_nodes) == ("local", 2)
