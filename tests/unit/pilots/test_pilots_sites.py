"""The sites file: valid files load, every kind of mistake is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jiriaf.errors import UserError
from jiriaf.pilots.sites import load_sites, local_site, parse_sites, split_host_port

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]

MINIMAL = """
sites:
  ci:
    control_plane:
      kubeconfig: /k
"""


def error_of(text: str) -> str:
    with pytest.raises(UserError) as exc:
        parse_sites(text, "sites.yaml")
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_example_file_loads_with_every_section() -> None:
    sites = load_sites(REPO / "deploy" / "sites" / "example-sites.yaml")
    assert set(sites.sites) == {"perlmutter", "farm", "local"}  # the static site is not a pilot site
    nersc = sites.get("perlmutter")
    assert nersc.executor == "slurm"  # from the central service's kind
    assert nersc.launch_method == "srun"
    assert nersc.node_prefix == "nersc"
    assert nersc.control_plane.ssh is not None
    assert nersc.control_plane.ssh.gateway == "jiriaf-cp.example.org"
    assert nersc.batch.qos == "debug"
    farm = sites.get("farm")
    assert farm.environment.container is not None
    assert farm.environment.container.runtime == "apptainer"
    assert farm.jrm.kubelet_ports == (20000, 20999)
    assert sites.get("local").launch_method == "local"


def test_minimal_site_gets_defaults() -> None:
    site = parse_sites(MINIMAL).get("ci")
    assert site.name == "ci"
    assert site.executor == "slurm"
    assert site.walltime_margin == 60
    assert site.jrm.template == "{prefix}-{pilot}-{task}"
    assert site.control_plane.mode == "direct"
    assert site.control_plane.node_ip == "auto"


def test_unknown_site_lists_known_ones() -> None:
    with pytest.raises(UserError, match="known: ci"):
        parse_sites(MINIMAL).get("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL.replace("kubeconfig: /k", "kubeconfig: /k\n      colour: red"),
            "sites.ci.control_plane.colour",
        ),
        ("sites:\n  ci:\n    executor: slurm\n", "sites.ci.control_plane: Field required"),
        (MINIMAL + "    executor: condor\n", "unknown executor 'condor'"),
        (MINIMAL.replace("kubeconfig: /k", "kubeconfig: /k\n      mode: ssh"), "mode 'ssh' needs an 'ssh'"),
        (
            MINIMAL.replace("kubeconfig: /k", "kubeconfig: /k\n      ssh: {gateway: g}"),
            "an 'ssh' section needs mode: ssh",
        ),
        (
            MINIMAL.replace("kubeconfig: /k", "kubeconfig: /k\n      mode: ssh\n      ssh: {port: 22}"),
            "sites.ci.control_plane.ssh.gateway: Field required",
        ),
        (
            MINIMAL.replace(
                "kubeconfig: /k", "kubeconfig: /k\n      mode: ssh\n      ssh: {gateway: g, apiserver: nope}"
            ),
            "is not host:port",
        ),
        (
            MINIMAL.replace(
                "kubeconfig: /k", "kubeconfig: /k\n      mode: ssh\n      ssh: {gateway: g, remote_bind: x}"
            ),
            "sites.ci.control_plane.ssh.remote_bind",
        ),
        (
            MINIMAL.replace("kubeconfig: /k", "kubeconfig: /k\n      node_ip: here"),
            "does not appear to be an IP",
        ),
        (MINIMAL + "    jrm: {template: '{prefix}-{pilot}'}\n", "must contain {task}"),
        (MINIMAL + "    jrm: {template: '{prefix}-{task}'}\n", "must contain {pilot} or {job}"),
        (MINIMAL + "    jrm: {template: '{host}-{pilot}-{task}'}\n", "unknown field(s) ['host']"),
        (MINIMAL + "    jrm: {prefix: Upper}\n", "not a lowercase DNS label"),
        (MINIMAL + "    jrm: {kubelet_ports: [80, 90]}\n", "1024 <= low <= high"),
        (MINIMAL + "    launch: {jrms_per_node: 0}\n", "sites.ci.launch.jrms_per_node"),
        (MINIMAL + "    launch: {method: aprun}\n", "sites.ci.launch.method"),
        (MINIMAL + "    executor: pbs\n    batch: {qos: debug}\n", "batch.qos is a SLURM option"),
        (MINIMAL + "    environment: {container: {runtime: docker, image: x}}\n", "container.runtime"),
        (MINIMAL + "    walltime_margin: -1\n", "sites.ci.walltime_margin"),
        (MINIMAL.replace("  ci:", "  Bad_Name:"), "is not a site name"),
        (MINIMAL + "    name: other\n", "has name 'other'"),
        ("sites: [1, 2]\n", "sites: Input should be a valid dictionary"),
        ("just text\n", "top-level 'sites' key"),
        ("sites:\n  ci: [unclosed\n", "sites.yaml line"),
    ],
)
def test_mistakes_are_one_line_naming_the_field(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith("sites.yaml")
    assert expected in message


def test_many_errors_are_summarised() -> None:
    text = "sites:\n" + "".join(f"  s{i}:\n    executor: nope\n" for i in range(5))
    message = error_of(text)
    assert "(and " in message and "more)" in message


def test_central_service_keys_are_left_to_it() -> None:
    text = MINIMAL + "    kind: local\n    node_type: gpu\n    max_nodes: 3\n    nodes: 2\n    env: {A: b}\n"
    site = parse_sites(text).get("ci")
    assert site.executor == "local"  # kind gives the executor when none is set
    explicit = parse_sites(text + "    executor: slurm\n").get("ci")
    assert explicit.executor == "slurm"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_sites(tmp_path / "none.yaml")
    with pytest.raises(UserError, match="cannot be read"):
        load_sites(tmp_path)  # a directory


def test_local_site_for_the_demo() -> None:
    site = local_site("/k", walltime_margin=10)
    assert site.executor == "local"
    assert site.launch_method == "local"
    assert site.control_plane.node_ip == "127.0.0.1"
    assert site.walltime_margin == 10
    with pytest.raises(UserError, match="local site: walltime_margin"):
        local_site("/k", walltime_margin=-5)


@pytest.mark.parametrize(
    ("text", "expected"), [("h:1", ("h", 1)), ("[::1]:6443", ("::1", 6443)), ("a.b:65535", ("a.b", 65535))]
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["h", ":1", "h:", "h:0", "h:70000", "h:x"])
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        split_host_port(text)
