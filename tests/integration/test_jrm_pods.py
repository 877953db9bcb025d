"""The JRM against the real control plane: the paper's pods, exit codes, restarts, init containers,
probes, environment, volumes, deletion, restart safety and walltime."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from lightkube import Client
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Event, Node, Pod

from jiriaf.devcluster.build import kubectl
from support import eventually, not_none

pytestmark = pytest.mark.integration

TOLERATION = {"key": "virtual-kubelet.io/provider", "value": "mock", "effect": "NoSchedule"}


@pytest.fixture()
def node(jrm_factory: Callable[..., Any], client: Client) -> Iterator[Any]:
    jrm = jrm_factory().start()
    jrm.wait_ready(client)
    yield jrm


def apply(client: Client, ns: str, manifest: str | dict[str, Any]) -> list[Any]:
    docs = list(yaml.safe_load_all(manifest)) if isinstance(manifest, str) else [manifest]
    out = []
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = ns
        out.append(client.create(from_dict(doc)))
    return out


def pod_on(node_name: str, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "tolerations": [TOLERATION],
            "containers": containers,
            **spec,
        },
    }


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", script], **extra}


def wait_phase(client: Client, ns: str, name: str, phases: tuple[str, ...], timeout: float = 90) -> Any:
    return eventually(
        lambda: p if not_none((p := client.get(Pod, name, namespace=ns)).status).phase in phases else None,
        timeout=timeout,
        what=f"pod {name} in {phases}",
    )


def cstatus(pod: Any, name: str) -> Any:
    return next(c for c in pod.status.containerStatuses or [] if c.name == name)


def kubectl_run(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------------------------------------- node


def test_node_registers_with_jiriaf_labels_taint_and_lease(node: Any, client: Client) -> None:
    from lightkube.resources.coordination_v1 import Lease

    n = client.get(Node, node.node_name)
    labels = not_none(not_none(n.metadata).labels)
    assert labels["jiriaf.nodetype"] == "cpu" and labels["jiriaf.site"] == "local"
    assert labels["kubernetes.io/role"] == "agent" and labels["type"] == "virtual-kubelet"
    assert labels["kubernetes.io/hostname"] == node.node_name
    assert "jiriaf.alivetime" not in labels  # walltime 0
    # the node lifecycle controller removes its not-ready taint once it sees the node Ready
    eventually(
        lambda: (
            [
                (t.key, t.value, t.effect)
                for t in not_none(not_none(client.get(Node, node.node_name).spec).taints)
            ]
            == [("virtual-kubelet.io/provider", "mock", "NoSchedule")]
        ),
        what="only the JIRIAF taint",
    )
    status = not_none(n.status)
    assert int(not_none(status.allocatable)["pods"]) == 110
    assert not_none(not_none(status.daemonEndpoints).kubeletEndpoint).Port == int(node.env["KUBELET_PORT"])
    conditions = {c.type for c in not_none(status.conditions)}
    assert conditions >= {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    lease = client.get(Lease, node.node_name, namespace="kube-node-lease")
    spec = not_none(lease.spec)
    assert spec.holderIdentity == node.node_name and spec.leaseDurationSeconds == 40
    first = not_none(spec.renewTime)
    eventually(
        lambda: (
            not_none(not_none(client.get(Lease, node.node_name, namespace="kube-node-lease").spec).renewTime)
            > first
        ),
        timeout=30,
        what="lease renewal",
    )


# ---------------------------------------------------------------------------------------------- paper


PAPER_DIRECT_STRESS = """
kind: ConfigMap
apiVersion: v1
metadata:
  name: direct-stress
data:
  stress.sh: |
    #!/bin/bash
    stress --timeout $1 --cpu $2
---
apiVersion: v1
kind: Pod
metadata:
  name: direct-stress
spec:
  containers:
    - name: direct-stress
      image: direct-stress
      command: ["bash", "/stress/stress.sh"]
      args: ["300", "2"]
      volumeMounts:
        - name: direct-stress
          mountPath: /stress
  volumes:
    - name: direct-stress
      configMap:
        name: direct-stress
  nodeSelector:
    kubernetes.io/role: agent
  tolerations:
    - key: "virtual-kubelet.io/provider"
      value: "mock"
      effect: "NoSchedule"
"""


def _pids_of(workdir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cwd", "environ"]):
        try:
            if str(workdir) in (proc.info.get("cwd") or "") or any(
                str(workdir) in v for v in (proc.info.get("environ") or {}).values()
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_paper_direct_stress_runs_unchanged_and_delete_ends_process_tree(
    node: Any, client: Client, ns: str, kubeconfig: Path
) -> None:
    apply(client, ns, PAPER_DIRECT_STRESS)
    pod = wait_phase(client, ns, "direct-stress", ("Running",))
    assert pod.spec.nodeName == node.node_name  # the scheduler chose the only agent node (role=agent)
    c = cstatus(pod, "direct-stress")
    assert c.state.running is not None and c.ready
    ready = {x.type: x.status for x in pod.status.conditions}
    assert ready == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    } | {
        k: v for k, v in ready.items() if k not in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    }
    script = node.workdir / ns / "direct-stress" / "containers" / "direct-stress" / "stress" / "stress.sh"
    assert script.exists()
    # stress forks two CPU hogs; they are the container's process tree
    procs = eventually(
        lambda: ps if len(ps := [p for p in _pids_of(node.workdir) if p.name() == "stress"]) >= 3 else None,
        what="stress and its two hogs",
    )
    logs = eventually(
        lambda: (
            r
            if (r := kubectl_run(kubeconfig, "logs", "-n", ns, "direct-stress")).returncode == 0
            and "dispatching hogs: 2 cpu" in r.stdout
            else None
        ),
        what="kubectl logs",
    )
    assert "stress: info" in logs.stdout
    res = kubectl_run(kubeconfig, "delete", "pod", "-n", ns, "direct-stress", "--wait=true", timeout=120)
    assert res.returncode == 0, res.stderr
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []


def test_paper_node_affinity_on_alivetime(jrm_factory: Callable[..., Any], client: Client, ns: str) -> None:
    jrm = jrm_factory(JIRIAF_WALLTIME="3600", JIRIAF_SITE="nersc").start()
    jrm.wait_ready(client)
    alive = int(not_none(not_none(client.get(Node, jrm.node_name).metadata).labels)["jiriaf.alivetime"])
    assert 3500 < alive <= 3600
    pod = pod_on(jrm.node_name, "affine", [sh("c", "echo placed; sleep 1")], restartPolicy="Never")
    del pod["spec"]["nodeSelector"]
    pod["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "jiriaf.nodetype", "operator": "In", "values": ["cpu"]},
                            {"key": "jiriaf.site", "operator": "In", "values": ["nersc"]},
                            {"key": "jiriaf.alivetime", "operator": "Gt", "values": ["10"]},
                        ]
                    }
                ]
            }
        }
    }
    apply(client, ns, pod)
    done = wait_phase(client, ns, "affine", ("Succeeded",))
    assert done.spec.nodeName == jrm.node_name


# ---------------------------------------------------------------------------------------------- exits


def test_exit_codes_and_reasons(node: Any, client: Client, ns: str) -> None:
    apply(client, ns, pod_on(node.node_name, "ok", [sh("c", "echo fine")], restartPolicy="Never"))
    apply(
        client, ns, pod_on(node.node_name, "bad", [sh("c", "echo oops >&2; exit 3")], restartPolicy="Never")
    )
    ok = wait_phase(client, ns, "ok", ("Succeeded", "Failed"))
    bad = wait_phase(client, ns, "bad", ("Succeeded", "Failed"))
    assert ok.status.phase == "Succeeded"
    t = cstatus(ok, "c").state.terminated
    assert (t.exitCode, t.reason) == (0, "Completed") and t.startedAt and t.finishedAt
    assert bad.status.phase == "Failed"
    t = cstatus(bad, "c").state.terminated
    assert (t.exitCode, t.reason) == (3, "Error")


def test_crash_loop_back_off_and_restart_count(node: Any, client: Client, ns: str) -> None:
    apply(client, ns, pod_on(node.node_name, "loop", [sh("c", "exit 7")]))  # restartPolicy Always
    pod = eventually(
        lambda: (
            (p := client.get(Pod, "loop", namespace=ns))
            and not_none(p.status).containerStatuses
            and cstatus(p, "c").restartCount >= 1
            and cstatus(p, "c").state.waiting is not None
            and p
        ),
        timeout=90,
        what="a restarted container in back-off",
    )
    c = cstatus(pod, "c")
    assert c.state.waiting.reason == "CrashLoopBackOff"
    assert c.lastState.terminated.exitCode == 7
    assert pod.status.phase == "Running"
    events = [e for e in client.list(Event, namespace=ns) if e.involvedObject.name == "loop"]
    assert any(e.reason == "BackOff" for e in events)


def test_on_failure_restarts_until_success(node: Any, client: Client, ns: str) -> None:
    script = "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; [ $n -ge 1 ]"
    pod = pod_on(
        node.node_name,
        "retry",
        [sh("c", script, volumeMounts=[{"name": "d", "mountPath": "/data"}])],
        restartPolicy="OnFailure",
        volumes=[{"name": "d", "emptyDir": {}}],
    )
    apply(client, ns, pod)
    done = wait_phase(client, ns, "retry", ("Succeeded",), timeout=120)
    c = cstatus(done, "c")
    assert c.restartCount == 1 and c.state.terminated.exitCode == 0


def test_init_containers_run_in_order_before_app(node: Any, client: Client, ns: str) -> None:
    mount = [{"name": "d", "mountPath": "/work"}]
    pod = pod_on(
        node.node_name,
        "init",
        [sh("app", "cat /work/order", volumeMounts=mount)],
        initContainers=[
            sh("first", "echo first >> /work/order", volumeMounts=mount),
            sh("second", "echo second >> /work/order", volumeMounts=mount),
        ],
        restartPolicy="Never",
        volumes=[{"name": "d", "emptyDir": {}}],
    )
    apply(client, ns, pod)
    done = wait_phase(client, ns, "init", ("Succeeded", "Failed"))
    assert done.status.phase == "Succeeded"
    assert [c.state.terminated.reason for c in done.status.initContainerStatuses] == [
        "Completed",
        "Completed",
    ]
    order = node.workdir / ns / "init" / "containers" / "app" / "stdout"  # the app container printed it
    assert order.read_text().split() == ["first", "second"]
    init_cond = next(c for c in done.status.conditions if c.type == "Initialized")
    assert init_cond.status == "True"


def test_failed_init_container_with_never_fails_pod(node: Any, client: Client, ns: str) -> None:
    pod = pod_on(
        node.node_name,
        "initfail",
        [sh("app", "echo never")],
        initContainers=[sh("setup", "exit 4")],
        restartPolicy="Never",
    )
    apply(client, ns, pod)
    done = wait_phase(client, ns, "initfail", ("Failed",))
    assert done.status.initContainerStatuses[0].state.terminated.exitCode == 4
    assert cstatus(done, "app").state.waiting is not None  # never started


def test_active_deadline_seconds(node: Any, client: Client, ns: str) -> None:
    apply(
        client,
        ns,
        pod_on(
            node.node_name, "late", [sh("c", "sleep 300")], activeDeadlineSeconds=3, restartPolicy="Never"
        ),
    )
    done = wait_phase(client, ns, "late", ("Failed",))
    assert done.status.reason == "DeadlineExceeded"


# ---------------------------------------------------------------------------------------------- probes


def test_probes_exec_http_tcp(node: Any, client: Client, ns: str) -> None:
    from jiriaf.devcluster.cluster import free_port

    port = free_port()
    server = {
        "name": "web",
        "image": "python",
        "command": ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        "ports": [{"containerPort": port, "name": "http"}],
        "startupProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 2},
    }
    bad = sh(
        "bad",
        "sleep 300",
        livenessProbe={
            "exec": {"command": ["sh", "-c", "exit 1"]},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
    )
    apply(client, ns, pod_on(node.node_name, "probed", [server, bad]))
    pod = eventually(
        lambda: (
            not_none((p := client.get(Pod, "probed", namespace=ns)).status).containerStatuses
            and cstatus(p, "web").ready
            and cstatus(p, "bad").restartCount >= 1
            and p
        ),
        timeout=90,
        what="web ready and bad restarted by its liveness probe",
    )
    assert cstatus(pod, "web").started is True
    events = [e for e in client.list(Event, namespace=ns) if e.involvedObject.name == "probed"]
    assert any(e.reason == "Unhealthy" for e in events)


# ---------------------------------------------------------------------------------------------- env, volumes


ENV_MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello, MODE: fast, "bad-key": skipped}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: s3cret, TOKEN: abc}
"""


def test_env_value_from_and_env_from(node: Any, client: Client, ns: str) -> None:
    apply(client, ns, ENV_MANIFEST)
    script = (
        "echo NAME=$MY_NAME NS=$MY_NS NODE=$MY_NODE IP=$MY_IP G=$GREETING P=$PASS "
        "CPU=$CPU_LIMIT MODE=$CFG_MODE TOKEN=$TOKEN OPT=${OPT:-unset} COMBO=$COMBO; pwd"
    )
    container = sh(
        "c",
        script,
        workingDir="/tmp",
        env=[
            {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {
                "name": "CPU_LIMIT",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
            },
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": True}},
            },
            {"name": "COMBO", "value": "$(GREETING)-$(MY_NAME)"},
        ],
        envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "sec"}}],
        resources={"limits": {"cpu": "500m"}},
    )
    apply(client, ns, pod_on(node.node_name, "envy", [container], restartPolicy="Never"))
    wait_phase(client, ns, "envy", ("Succeeded",))
    out = (node.workdir / ns / "envy" / "containers" / "c" / "stdout").read_text()
    assert (
        f"NAME=envy NS={ns} NODE={node.node_name} IP=127.0.0.1 G=hello P=s3cret CPU=500 MODE=fast "
        f"TOKEN=abc OPT=unset COMBO=hello-envy" in out
    )
    assert "KUBECONFIG" not in (node.workdir / ns / "envy" / "containers" / "c" / "stdout").read_text()


def test_missing_configmap_is_create_container_config_error(node: Any, client: Client, ns: str) -> None:
    c = sh("c", "true", env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}])
    apply(client, ns, pod_on(node.node_name, "cfgerr", [c], restartPolicy="Never"))
    pod = eventually(
        lambda: (
            not_none((p := client.get(Pod, "cfgerr", namespace=ns)).status).containerStatuses
            and cstatus(p, "c").state.waiting
            and p
        ),
        what="a waiting container",
    )
    w = cstatus(pod, "c").state.waiting
    assert w.reason == "CreateContainerConfigError" and "nope" in w.message
    eventually(
        lambda: any(
            e.reason == "Failed" and "nope" in not_none(e.message) for e in client.list(Event, namespace=ns)
        ),
        what="a Failed event",
    )


VOLUMES = """
apiVersion: v1
kind: ConfigMap
metadata: {name: files}
data: {a.txt: alpha, b.txt: beta}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {key: k3y}
"""


def test_every_volume_type(node: Any, client: Client, ns: str, tmp_path: Path) -> None:
    apply(client, ns, VOLUMES)
    script = (
        "cat /cm/a.txt /cm-items/renamed /sec/key /proj/a.txt /proj/name /dw/labels /one/a.txt; "
        "echo; stat -c %a /sec/key; echo shared > /scratch/x; ls /host; stat -c ro%a /cm/a.txt"
    )
    mounts = [
        {"name": "cm", "mountPath": "/cm", "readOnly": True},
        {"name": "cm-items", "mountPath": "/cm-items"},
        {"name": "sec", "mountPath": "/sec"},
        {"name": "proj", "mountPath": "/proj"},
        {"name": "dw", "mountPath": "/dw"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "cm", "mountPath": "/one/a.txt", "subPath": "a.txt", "readOnly": True},
        {"name": "host", "mountPath": "/host"},
    ]
    (tmp_path / "hostdir").mkdir()
    (tmp_path / "hostdir" / "from-host").write_text("h")
    c1 = sh("c", script, volumeMounts=mounts)
    c2 = sh("peer", "sleep 2; cat /s/x", volumeMounts=[{"name": "scratch", "mountPath": "/s"}])
    vols = [
        {"name": "cm", "configMap": {"name": "files"}},
        {"name": "cm-items", "configMap": {"name": "files", "items": [{"key": "b.txt", "path": "renamed"}]}},
        {"name": "sec", "secret": {"secretName": "keys"}},
        {
            "name": "proj",
            "projected": {
                "sources": [
                    {"configMap": {"name": "files", "items": [{"key": "a.txt", "path": "a.txt"}]}},
                    {
                        "downwardAPI": {
                            "items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]
                        }
                    },
                ]
            },
        },
        {
            "name": "dw",
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
        {"name": "scratch", "emptyDir": {}},
        {"name": "host", "hostPath": {"path": str(tmp_path / "hostdir")}},
    ]
    pod = pod_on(node.node_name, "vols", [c1, c2], restartPolicy="Never", volumes=vols)
    pod["metadata"]["labels"] = {"app": "vols"}
    node.terminate()  # restart the JRM allowing the hostPath prefix
    jrm2 = type(node)(
        node.node_name,
        node.workdir,
        node.kubeconfig,
        node.log,
        {**node.env, "JIRIAF_ALLOWED_HOST_PATHS": str(tmp_path)},
    ).start()
    jrm2.wait_ready(client)
    try:
        apply(client, ns, pod)
        done = wait_phase(client, ns, "vols", ("Succeeded", "Failed"))
        cdir = node.workdir / ns / "vols" / "containers"
        assert done.status.phase == "Succeeded", (cdir / "c" / "stderr").read_text()
        text = (cdir / "c" / "stdout").read_text()
        assert (
            "alpha" in text and "beta" in text and "k3y" in text and "vols" in text and 'app="vols"' in text
        )
        assert "600" in text.split() and "from-host" in text.split()
        assert "ro444" in text.split()  # a readOnly mount has no write bits (root ignores them, users do not)
        assert (cdir / "peer" / "stdout").read_text().strip() == "shared"  # emptyDir shared by containers
    finally:
        jrm2.terminate()


def _hostile_cases(allowed: Path, outside: Path) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Hostile volume specs. Some the apiserver itself refuses; the rest must be refused by the JRM."""
    m = [{"name": "v", "mountPath": "/m"}]

    def cm_items(path: str) -> dict[str, Any]:
        return {"name": "v", "configMap": {"name": "files", "items": [{"key": "a.txt", "path": path}]}}

    return [
        ("dotdot-item", cm_items("../../x"), m),
        ("abs-item", cm_items("/etc/x"), m),
        ("inner-dotdot-item", cm_items("a/../../../b"), m),
        (
            "secret-item-dotdot",
            {"name": "v", "secret": {"secretName": "keys", "items": [{"key": "key", "path": "../k"}]}},
            m,
        ),
        (
            "downward-dotdot",
            {
                "name": "v",
                "downwardAPI": {"items": [{"path": "../../n", "fieldRef": {"fieldPath": "metadata.name"}}]},
            },
            m,
        ),
        (
            "projected-abs",
            {
                "name": "v",
                "projected": {
                    "sources": [
                        {"configMap": {"name": "files", "items": [{"key": "a.txt", "path": "/tmp/evil"}]}}
                    ]
                },
            },
            m,
        ),
        (
            "subpath-escape",
            {"name": "v", "emptyDir": {}},
            [{"name": "v", "mountPath": "/m", "subPath": "../../.."}],
        ),
        ("subpath-abs", {"name": "v", "emptyDir": {}}, [{"name": "v", "mountPath": "/m", "subPath": "/etc"}]),
        ("dotdot-mount", {"name": "v", "emptyDir": {}}, [{"name": "v", "mountPath": "/../../../outside"}]),
        ("root-mount", {"name": "v", "emptyDir": {}}, [{"name": "v", "mountPath": "/"}]),
        ("mount-over-pgid", {"name": "v", "emptyDir": {}}, [{"name": "v", "mountPath": "/pgid"}]),
        ("mount-over-stdout", {"name": "v", "emptyDir": {}}, [{"name": "v", "mountPath": "/stdout"}]),
        (
            "nested-mounts",
            {"name": "v", "emptyDir": {}},
            [{"name": "v", "mountPath": "/m"}, {"name": "v", "mountPath": "/m/inner"}],
        ),
        ("hostpath-not-allowed", {"name": "v", "hostPath": {"path": str(outside)}}, m),
        ("hostpath-dotdot", {"name": "v", "hostPath": {"path": f"{allowed}/../outside"}}, m),
        ("hostpath-symlink-out", {"name": "v", "hostPath": {"path": str(allowed / "link-out")}}, m),
        (
            "hostpath-subpath-symlink",
            {"name": "v", "hostPath": {"path": str(allowed)}},
            [{"name": "v", "mountPath": "/m", "subPath": "link-out"}],
        ),
        ("planted-volume-symlink", {"name": "v", "configMap": {"name": "files"}}, m),
        ("planted-pod-dir-symlink", {"name": "v", "configMap": {"name": "files"}}, m),
        ("planted-container-symlink", {"name": "v", "emptyDir": {}}, m),
    ]


def test_hostile_volume_specs_are_rejected_and_nothing_escapes(
    jrm_factory: Callable[..., Any], client: Client, ns: str, tmp_path: Path
) -> None:
    from lightkube import ApiError

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link-out").symlink_to(outside)
    node = jrm_factory(JIRIAF_ALLOWED_HOST_PATHS=str(allowed)).start()
    node.wait_ready(client)
    apply(client, ns, VOLUMES)
    # symlinks planted in the pod directory before the pod arrives, pointing outside it
    pods_root = node.workdir / ns
    (pods_root / "planted-volume-symlink" / "volumes" / "configmap").mkdir(parents=True)
    (pods_root / "planted-volume-symlink" / "volumes" / "configmap" / "v").symlink_to(outside)
    (pods_root / "planted-pod-dir-symlink").symlink_to(outside)
    (pods_root / "planted-container-symlink" / "containers").mkdir(parents=True)
    (pods_root / "planted-container-symlink" / "containers" / "c").symlink_to(outside)

    def snapshot() -> set[Path]:
        return {
            p for p in tmp_path.rglob("*") if not str(p).startswith(str(node.workdir)) and p.suffix != ".log"
        }

    before = snapshot()
    by_api, by_jrm = [], []
    for name, vol, mounts in _hostile_cases(allowed, outside):
        try:
            apply(
                client,
                ns,
                pod_on(
                    node.node_name,
                    name,
                    [sh("c", "touch /m/pwned; echo ran", volumeMounts=mounts)],
                    restartPolicy="Never",
                    volumes=[vol],
                ),
            )
            by_jrm.append(name)
        except ApiError as exc:
            assert exc.status.code == 422, exc  # refused at the door by the apiserver's validation
            by_api.append(name)
    for name in by_jrm:

        def rejected(n: str = name) -> Any:
            return (
                not_none((p := client.get(Pod, n, namespace=ns)).status).containerStatuses
                and cstatus(p, "c").state.waiting
                and cstatus(p, "c").state.waiting.reason == "CreateContainerConfigError"
                and p
            )

        pod = eventually(rejected, what=f"{name} rejected by the JRM")
        assert cstatus(pod, "c").state.waiting.message
    print(f"refused by the apiserver: {by_api}\nrefused by the JRM: {by_jrm}")
    assert len(by_jrm) >= 10
    events = [e for e in client.list(Event, namespace=ns) if e.reason == "Failed"]
    assert {e.involvedObject.name for e in events} >= set(by_jrm)
    assert snapshot() == before  # nothing written outside the pod directories
    assert list(outside.iterdir()) == []
    assert not list(node.workdir.rglob("pwned")) and not Path("/tmp/evil").exists()
    assert not any((pods_root / n / "containers" / "c" / "stdout").exists() for n in by_jrm)  # never started


# ---------------------------------------------------------------------------------------------- lifecycle


def test_kill9_and_restart_adopts_without_duplicates(node: Any, client: Client, ns: str) -> None:
    apply(
        client, ns, pod_on(node.node_name, "long", [sh("c", "echo start; sleep 300")], restartPolicy="Never")
    )
    apply(client, ns, pod_on(node.node_name, "short", [sh("c", "sleep 6; exit 5")], restartPolicy="Never"))
    wait_phase(client, ns, "long", ("Running",))
    wait_phase(client, ns, "short", ("Running",))
    pgid_file = node.workdir / ns / "long" / "containers" / "c" / "pgid"
    pgid = int(pgid_file.read_text())
    node.kill9()
    time.sleep(8)  # "short" ends while no JRM runs
    jrm2 = type(node)(node.node_name, node.workdir, node.kubeconfig, node.log, node.env).start()
    try:
        short = wait_phase(client, ns, "short", ("Failed",))
        assert cstatus(short, "c").state.terminated.exitCode == 5  # true exit code, learned after the fact
        long = client.get(Pod, "long", namespace=ns)
        c = cstatus(long, "c")
        assert not_none(long.status).phase == "Running" and c.restartCount == 0
        assert int(pgid_file.read_text()) == pgid  # adopted, not restarted
        sleepers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"][-2:] == ["sleep", "300"] or p.info["cmdline"] == ["sleep", "300"]
        ]
        assert (
            len(
                [
                    p
                    for p in sleepers
                    if psutil.Process(p.pid)
                    .environ()
                    .get("JIRIAF_CONTAINER", "")
                    .startswith(not_none(not_none(long.metadata).uid))
                ]
            )
            == 1
        )
        stdout = (node.workdir / ns / "long" / "containers" / "c" / "stdout").read_text()
        assert stdout.count("start") == 1
    finally:
        assert jrm2.terminate() == 0


def test_walltime_drains_and_exits_cleanly(jrm_factory: Callable[..., Any], client: Client, ns: str) -> None:
    jrm = jrm_factory(JIRIAF_WALLTIME="20", JIRIAF_WALLTIME_MARGIN="8").start()
    jrm.wait_ready(client)
    script = "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.2; done"
    apply(client, ns, pod_on(jrm.node_name, "worker", [sh("c", script)], terminationGracePeriodSeconds=5))
    wait_phase(client, ns, "worker", ("Running",))
    eventually(
        lambda: any(
            t.key == "jiriaf.io/walltime-ending"
            for t in not_none(client.get(Node, jrm.node_name).spec).taints or []
        ),
        timeout=30,
        what="the walltime taint",
    )
    assert jrm.proc.wait(timeout=60) == 0
    n = client.get(Node, jrm.node_name)
    ready = next(c for c in not_none(not_none(n.status).conditions) if c.type == "Ready")
    assert ready.status == "False" and ready.reason == "WalltimeExpired"
    pod = client.get(Pod, "worker", namespace=ns)
    assert not_none(pod.status).phase == "Failed"
    t = cstatus(pod, "c").state.terminated
    assert t.exitCode == 0  # it handled SIGTERM within the grace period
    assert "got TERM" in (jrm.workdir / ns / "worker" / "containers" / "c" / "stdout").read_text()
