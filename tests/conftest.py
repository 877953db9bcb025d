"""Shared fixtures: the real local control plane, brought up once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jiriaf.devcluster.cluster import LocalCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real etcd + kube-apiserver + scheduler + controller-manager + metrics-server on 127.0.0.1.

    Built from the Go module proxy on first use (cached under ~/.cache/jiriaf); stopped by pid at
    the end of the session. Component logs stay in the printed directory.
    """
    directory = Path(os.environ.get("JIRIAF_TEST_CLUSTER_DIR") or tmp_path_factory.mktemp("cluster"))
    lc = LocalCluster(
        directory,
        extra_args={
            "kube-controller-manager": [
                "--horizontal-pod-autoscaler-downscale-stabilization=20s",
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--node-monitor-grace-period=40s",
            ]
        },
        progress=lambda m: print(f"[cluster] {m}"),
    )
    try:
        lc.up()
    except Exception:
        print(f"[cluster] start-up failed; component logs in {lc.log_dir}")
        lc.down()
        raise
    print(f"[cluster] logs in {lc.log_dir}")
    yield lc
    lc.down()


@pytest.fixture(scope="session")
def kubeconfig(cluster: LocalCluster) -> Path:
    """The admin kubeconfig of the session's cluster."""
    return cluster.kubeconfig
