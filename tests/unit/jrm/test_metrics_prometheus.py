"""jiriaf.monitor.prometheus: scrape configuration, credentials from a kubeconfig, file discovery
targets (the same pod-port rules as the Kubernetes relabelling), and the CLI's errors."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from jiriaf.errors import UserError
from jiriaf.monitor.commands import app
from jiriaf.monitor.prometheus import (
    JRM_JOB,
    PODS_JOB,
    RESOURCE_JOB,
    SD_FILES,
    ApiAccess,
    api_access_from_kubeconfig,
    file_sd_groups,
    node_target,
    parse_selector,
    pod_targets,
    prometheus_config,
    render_yaml,
    write_file_sd,
)

pytestmark = pytest.mark.unit

ACCESS = ApiAccess("https://127.0.0.1:6443", ca_file="/s/ca.crt", cert_file="/s/c.crt", key_file="/s/c.key")


def jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["job_name"]: j for j in config["scrape_configs"]}


# -------------------------------------------------------------------------------------------- config


def test_kubernetes_discovery_config() -> None:
    config = prometheus_config(ACCESS, scrape_interval="5s")
    assert config["global"]["scrape_interval"] == "5s"
    j = jobs(config)
    assert set(j) == {JRM_JOB, RESOURCE_JOB, PODS_JOB}
    jrm = j[JRM_JOB]
    assert jrm["scheme"] == "https" and jrm["metrics_path"] == "/metrics"
    assert jrm["tls_config"] == {
        "insecure_skip_verify": True,
        "cert_file": "/s/c.crt",
        "key_file": "/s/c.key",
    }
    (sd,) = jrm["kubernetes_sd_configs"]
    assert sd["role"] == "node" and sd["api_server"] == ACCESS.server
    assert sd["selectors"] == [{"role": "node", "label": "type=virtual-kubelet"}]
    assert sd["tls_config"] == {"ca_file": "/s/ca.crt", "cert_file": "/s/c.crt", "key_file": "/s/c.key"}
    assert {"source_labels": ["__meta_kubernetes_node_name"], "target_label": "node"} in jrm[
        "relabel_configs"
    ]
    assert (
        j[RESOURCE_JOB]["metrics_path"] == "/metrics/resource" and j[RESOURCE_JOB]["honor_timestamps"] is True
    )
    pods = j[PODS_JOB]
    assert pods["kubernetes_sd_configs"][0]["role"] == "pod"
    actions = [r.get("action", "replace") for r in pods["relabel_configs"]]
    assert actions[:3] == ["keep", "drop", "keep"] and "keepequal" in actions
    targets = {r.get("target_label") for r in pods["relabel_configs"]}
    assert {"namespace", "pod", "container", "node", "__metrics_path__", "__scheme__"} <= targets
    yaml.safe_load(render_yaml(config))


def test_token_access_and_kubelet_ca_and_no_selector() -> None:
    access = ApiAccess("https://api:6443", token_file="/s/token", insecure=True)
    j = jobs(prometheus_config(access, node_selector="", kubelet_ca_file="/s/kubelet-ca.crt"))
    jrm = j[JRM_JOB]
    assert jrm["authorization"] == {"credentials_file": "/s/token"}
    assert jrm["tls_config"] == {"ca_file": "/s/kubelet-ca.crt"}
    sd = jrm["kubernetes_sd_configs"][0]
    assert "selectors" not in sd and sd["tls_config"] == {"insecure_skip_verify": True}
    assert sd["authorization"] == {"credentials_file": "/s/token"}


def test_file_discovery_config(tmp_path: Path) -> None:
    j = jobs(prometheus_config(ACCESS, discovery="file", sd_dir=tmp_path))
    for name, job in j.items():
        assert job["file_sd_configs"] == [
            {"files": [str(tmp_path / SD_FILES[name])], "refresh_interval": "30s"}
        ]
        assert "kubernetes_sd_configs" not in job
    assert j[JRM_JOB]["tls_config"]["cert_file"] == "/s/c.crt"
    with pytest.raises(UserError, match="--sd-dir"):
        prometheus_config(ACCESS, discovery="file")


# ------------------------------------------------------------------------------------------- targets


def pod(
    name: str,
    containers: list[dict[str, Any]],
    *,
    ip: str | None = "127.0.0.1",
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "annotations": annotations or {}},
        "spec": {"nodeName": "jrm-1", "containers": containers},
        "status": {"phase": phase, "podIP": ip},
    }


def ports(*items: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"name": n, "containerPort": p} for n, p in items]


def addresses(p: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(t.container, t.address, t.path, t.scheme) for t in pod_targets(p)]


def test_named_metrics_ports_are_targets() -> None:
    p = pod(
        "a",
        [
            {"name": "app", "ports": ports(("http", 8080), ("metrics", 9100))},
            {"name": "side", "ports": ports(("envoy-metrics", 9901), ("metricsx", 9902))},
            {"name": "bare"},
        ],
    )
    assert addresses(p) == [
        ("app", "127.0.0.1:9100", "/metrics", "http"),
        ("side", "127.0.0.1:9901", "/metrics", "http"),
    ]
    (t, _) = pod_targets(p)
    assert (t.namespace, t.pod, t.node) == ("ns", "a", "jrm-1")


def test_annotated_port_path_and_scheme() -> None:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/stats",
        "prometheus.io/scheme": "https",
    }
    p = pod("a", [{"name": "app", "ports": ports(("http", 8080), ("grpc", 9000))}], annotations=annotations)
    assert addresses(p) == [("app", "127.0.0.1:8080", "/stats", "https")]
    undeclared = {**annotations, "prometheus.io/port": "7000"}
    assert (
        addresses(pod("b", [{"name": "app", "ports": ports(("http", 8080))}], annotations=undeclared)) == []
    )


def test_pods_that_are_skipped() -> None:
    c = [{"name": "app", "ports": ports(("metrics", 9100))}]
    assert pod_targets(pod("a", c, annotations={"prometheus.io/scrape": "false"})) == []
    assert pod_targets(pod("a", c, phase="Pending")) == []
    assert pod_targets(pod("a", c, ip=None)) == []
    port_only = pod(
        "a", [{"name": "app", "ports": ports(("http", 80))}], annotations={"prometheus.io/port": "80"}
    )
    assert pod_targets(port_only) == []  # a port annotation without scrape=true


def test_shared_address_pods_are_told_apart_by_port_and_ipv6_is_bracketed() -> None:
    a = pod("a", [{"name": "c", "ports": ports(("metrics", 9100))}])
    b = pod("b", [{"name": "c", "ports": ports(("metrics", 9101))}])
    assert [t.address for t in pod_targets(a) + pod_targets(b)] == ["127.0.0.1:9100", "127.0.0.1:9101"]
    v6 = pod("c", [{"name": "c", "ports": ports(("metrics", 9100))}], ip="fd00::5")
    assert pod_targets(v6)[0].address == "[fd00::5]:9100"


def node(
    name: str, addresses: list[dict[str, str]], port: int | None = 10250, **labels: str
) -> dict[str, Any]:
    status: dict[str, Any] = {"addresses": addresses}
    if port:
        status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": port}}
    return {"metadata": {"name": name, "labels": labels}, "status": status}


def test_node_targets() -> None:
    assert (
        node_target(
            node("n", [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "10.0.0.5"}])
        )
        == "10.0.0.5:10250"
    )
    assert node_target(node("n", [{"type": "Hostname", "address": "h"}])) == "h:10250"
    assert node_target(node("n", [{"type": "InternalIP", "address": "fd00::1"}])) == "[fd00::1]:10250"
    assert node_target(node("n", [{"type": "InternalIP", "address": "10.0.0.5"}], port=None)) is None
    assert node_target({"metadata": {"name": "n"}}) is None


def test_file_sd_groups_and_atomic_writes(tmp_path: Path) -> None:
    nodes = [
        node(
            "jrm-1",
            [{"type": "InternalIP", "address": "127.0.0.1"}],
            30001,
            **{"jiriaf.site": "perlmutter", "jiriaf.nodetype": "cpu"},
        ),
        node("broken", []),
    ]
    pods = [pod("a", [{"name": "c", "ports": ports(("metrics", 9100))}])]
    groups = file_sd_groups(nodes, pods)
    assert groups[SD_FILES[JRM_JOB]] == [
        {
            "targets": ["127.0.0.1:30001"],
            "labels": {"node": "jrm-1", "jiriaf_site": "perlmutter", "jiriaf_nodetype": "cpu"},
        }
    ]
    assert groups[SD_FILES[RESOURCE_JOB]] == groups[SD_FILES[JRM_JOB]]
    assert groups[SD_FILES[PODS_JOB]] == [
        {
            "targets": ["127.0.0.1:9100"],
            "labels": {
                "namespace": "ns",
                "pod": "a",
                "container": "c",
                "node": "jrm-1",
                "__metrics_path__": "/metrics",
                "__scheme__": "http",
            },
        }
    ]
    changed = write_file_sd(tmp_path / "t", groups)
    assert sorted(p.name for p in changed) == sorted(SD_FILES.values())
    assert json.loads((tmp_path / "t" / SD_FILES[PODS_JOB]).read_text()) == groups[SD_FILES[PODS_JOB]]
    assert write_file_sd(tmp_path / "t", groups) == []  # unchanged files are not rewritten
    assert not list((tmp_path / "t").glob(".*.tmp"))


def test_parse_selector() -> None:
    assert parse_selector("type=virtual-kubelet, jiriaf.site=x") == {
        "type": "virtual-kubelet",
        "jiriaf.site": "x",
    }
    assert parse_selector("") == {}
    for bad in ("type!=x", "type", "a==b"):
        with pytest.raises(UserError, match="key=value"):
            parse_selector(bad)


# ---------------------------------------------------------------------------------------- kubeconfig


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": cluster
                or {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(b"CA").decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_credentials_are_written_as_private_files(tmp_path: Path) -> None:
    b64 = base64.b64encode
    path = kubeconfig(
        tmp_path, {"client-certificate-data": b64(b"CERT").decode(), "client-key-data": b64(b"KEY").decode()}
    )
    access = api_access_from_kubeconfig(path, tmp_path / "secrets")
    assert access.server == "https://127.0.0.1:6443"
    assert Path(access.ca_file or "").read_bytes() == b"CA"
    assert Path(access.cert_file or "").read_bytes() == b"CERT"
    key = Path(access.key_file or "")
    assert key.read_bytes() == b"KEY" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert access.token_file is None


def test_token_and_file_references(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("CA")
    path = kubeconfig(
        tmp_path, {"token": "s3cret"}, {"server": "https://api:6443", "certificate-authority": "ca.pem"}
    )
    access = api_access_from_kubeconfig(path, tmp_path / "secrets")
    assert access.ca_file == str(tmp_path / "ca.pem")
    assert Path(access.token_file or "").read_text() == "s3cret"
    assert access.cert_file is None


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x"}}, "exec plugin"),
        ({"username": "a", "password": "b"}, "password"),
        ({}, "no client certificate or token"),
    ],
)
def test_unusable_credentials(tmp_path: Path, user: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        api_access_from_kubeconfig(kubeconfig(tmp_path, user), tmp_path / "secrets")


# ----------------------------------------------------------------------------------------------- cli


def test_cli_writes_a_config_and_rejects_bad_options(tmp_path: Path) -> None:
    b64 = base64.b64encode
    path = kubeconfig(
        tmp_path, {"client-certificate-data": b64(b"C").decode(), "client-key-data": b64(b"K").decode()}
    )
    out = tmp_path / "p" / "prometheus.yml"
    runner = CliRunner()
    result = runner.invoke(
        app, ["prometheus-config", "--kubeconfig", str(path), "-o", str(out), "--discovery", "file"]
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [
        str(tmp_path / "p" / "targets" / SD_FILES[JRM_JOB])
    ]
    assert (tmp_path / "p" / "secrets" / "client.key").exists()
    bad = runner.invoke(
        app, ["prometheus-config", "--kubeconfig", str(path), "-o", str(out), "--discovery", "consul"]
    )
    assert isinstance(bad.exception, UserError) and "--discovery" in str(bad.exception)
    bad = runner.invoke(
        app, ["prometheus-config", "--kubeconfig", str(path), "-o", str(out), "--scrape-interval", "5 s"]
    )
    assert isinstance(bad.exception, UserError) and "duration" in str(bad.exception)
    missing = runner.invoke(
        app, ["prometheus-config", "--kubeconfig", str(tmp_path / "nope"), "-o", str(out)]
    )
    assert isinstance(missing.exception, UserError) and "does not exist" in str(missing.exception)
    bad = runner.invoke(app, ["file-sd", "--once", "--node-selector", "a!=b", "--dir", str(tmp_path / "t")])
    assert isinstance(bad.exception, UserError)
