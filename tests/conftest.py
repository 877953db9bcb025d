"""Shared fixtures: the real local control plane, brought up once per test session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jiriaf.devcluster.cluster import LocalCluster, free_port
from support import eventually


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


@pytest.fixture()
def client(kubeconfig: Path) -> Any:
    """A lightkube client with the admin kubeconfig."""
    from lightkube import Client, KubeConfig

    return Client(KubeConfig.from_file(kubeconfig), field_manager="jiriaf-tests")


@pytest.fixture()
def ns(client: Any) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (so pods are admitted), deleted after."""
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace, ServiceAccount

    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    eventually(lambda: client.get(ServiceAccount, "default", namespace=name), what="default ServiceAccount")
    yield name
    client.delete(Namespace, name)


class JRMProcess:
    """A ``jiriaf jrm run`` process started by a test, stopped by pid at the end."""

    def __init__(
        self, node_name: str, workdir: Path, kubeconfig: Path, log: Path, env: dict[str, str]
    ) -> None:
        self.node_name = node_name
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> JRMProcess:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jiriaf.cli", "jrm", "run", "--log-level", "DEBUG"],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def wait_ready(self, client: Any, timeout: float = 60) -> None:
        from lightkube.resources.core_v1 import Node

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"JRM exited with {self.proc.returncode}; log:\n{self.log.read_text()[-3000:]}"
                )
            node = client.get(Node, self.node_name)
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        eventually(ready, timeout=timeout, what=f"node {self.node_name} Ready")

    def terminate(self, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture()
def jrm_factory(kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., JRMProcess]]:
    """Start JRMs (``jiriaf jrm run`` subprocesses) against the session's cluster."""
    started: list[JRMProcess] = []

    def make(node_name: str | None = None, **settings: str) -> JRMProcess:
        name = node_name or f"jrm-{uuid.uuid4().hex[:6]}"
        workdir = tmp_path / name
        env = {
            **os.environ,
            "NODENAME": name,
            "KUBECONFIG": str(kubeconfig),
            "VKUBELET_POD_IP": "127.0.0.1",
            "KUBELET_PORT": str(free_port()),
            "JIRIAF_WORKDIR": str(workdir),
            "JIRIAF_WALLTIME": "0",
            "JIRIAF_NODETYPE": "cpu",
            "JIRIAF_SITE": "local",
            "JIRIAF_LEASE_RENEW_INTERVAL": "5",
            "JIRIAF_STATUS_INTERVAL": "5",
        }
        env.update(settings)
        jrm = JRMProcess(name, workdir, kubeconfig, tmp_path / f"{name}.log", env)
        started.append(jrm)
        return jrm

    yield make
    from lightkube import Client, KubeConfig
    from lightkube.resources.core_v1 import Node

    client = Client(KubeConfig.from_file(kubeconfig))
    for jrm in started:
        if jrm.proc is not None and jrm.proc.poll() is None:
            jrm.terminate()
        with contextlib.suppress(Exception):
            client.delete(Node, jrm.node_name)
        print(f"[jrm {jrm.node_name}] log: {jrm.log}")
