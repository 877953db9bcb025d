"""Pure parts of a pilot task: the tunnelled kubeconfig, the apiserver address, the node address,
the tunnel configuration and the single-host SLURM configuration."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from jiriaf.devcluster.slurm import SlurmConfig, render_slurm_conf
from jiriaf.errors import UserError
from jiriaf.pilots.jrm_task import apiserver_of, node_address, tunnel_kubeconfig
from jiriaf.pilots.tunnels import TunnelConfig, local_port_free

pytestmark = pytest.mark.unit


def kubeconfig(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://other:1"}},
            {"name": "main", "cluster": {"server": server, "certificate-authority-data": "Q0E="}},
        ],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "main", "user": "u"}}],
        "current-context": "c",
    }


def test_apiserver_of_the_current_context() -> None:
    assert apiserver_of(kubeconfig("https://cp.example.org:6443")) == ("cp.example.org", 6443)
    assert apiserver_of(kubeconfig("https://cp.example.org")) == ("cp.example.org", 443)
    with pytest.raises(UserError, match="no server"):
        apiserver_of(kubeconfig(""))
    with pytest.raises(UserError, match="no cluster"):
        apiserver_of({"clusters": [], "contexts": []})


def test_tunnel_kubeconfig_points_at_the_local_port_only() -> None:
    original = kubeconfig("https://cp.example.org:6443")
    tunnelled = tunnel_kubeconfig(original, 40123)
    main = next(c for c in tunnelled["clusters"] if c["name"] == "main")["cluster"]
    assert main["server"] == "https://127.0.0.1:40123"
    assert main["tls-server-name"] == "cp.example.org"  # the certificate's name, for clients that use it
    assert main["certificate-authority-data"] == "Q0E="
    other = next(c for c in tunnelled["clusters"] if c["name"] == "other")["cluster"]
    assert other["server"] == "https://other:1"
    assert tunnelled["users"] == original["users"]
    assert original["clusters"][1]["cluster"]["server"] == "https://cp.example.org:6443"  # not modified
    local = tunnel_kubeconfig(kubeconfig("https://127.0.0.1:6443"), 5)
    assert "tls-server-name" not in local["clusters"][1]["cluster"]


def test_node_address() -> None:
    assert node_address("10.1.2.3") == "10.1.2.3"
    auto = node_address("auto")
    socket.inet_aton(auto)  # an IPv4 address of this host


def test_local_port_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not local_port_free("127.0.0.1", port)
    assert local_port_free("127.0.0.1", port)


def test_tunnel_config_from_site_section() -> None:
    cfg = TunnelConfig.from_site({"gateway": "g", "port": 2222, "apiserver": "h:1", "advertise_address": "x"})
    assert cfg.gateway == "g" and cfg.port == 2222
    assert cfg.remote_bind == "127.0.0.1" and cfg.kubelet_bind == "127.0.0.1"


def test_slurm_conf_keeps_everything_in_its_directory(tmp_path: Path) -> None:
    cfg = SlurmConfig(directory=tmp_path, user="alice", ctld_port=7001, slurmd_port=7002, cpus=8)
    text = render_slurm_conf(cfg)
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith(("NodeName", "Part"))
    )
    assert settings["SlurmctldPort"] == "7001" and settings["SlurmdPort"] == "7002"
    assert settings["SlurmUser"] == "alice"
    assert settings["AuthInfo"] == f"socket={tmp_path / 'munge' / 'munge.socket.2'}"
    assert settings["ProctrackType"] == "proctrack/linuxproc" and settings["TaskPlugin"] == "task/none"
    assert settings["JobCompType"] == "jobcomp/filetxt"
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile", "SlurmdLogFile", "JobCompLoc"):
        assert settings[key].startswith(str(tmp_path)), key
    assert "NodeName=localhost NodeAddr=127.0.0.1 CPUs=8" in text
    assert "PartitionName=debug Nodes=ALL Default=YES" in text
