"""The local control plane is real: apiserver storage, scheduler binding, controller-manager."""

from __future__ import annotations

import uuid

import pytest
from lightkube import Client
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import (
    Container,
    NodeCondition,
    NodeSpec,
    NodeStatus,
    PodSpec,
    PodTemplateSpec,
    Taint,
    Toleration,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, Pod
from lightkube.resources.core_v1 import NodeStatus as NodeStatusResource
from lightkube.types import PatchType

from support import eventually, not_none

pytestmark = pytest.mark.integration


def test_namespace_and_configmap_are_stored(client: Client, ns: str) -> None:
    client.create(ConfigMap(metadata=ObjectMeta(name="cfg", namespace=ns), data={"k": "v"}))
    got = client.get(ConfigMap, "cfg", namespace=ns)
    assert got.data == {"k": "v"}
    assert got.metadata is not None and got.metadata.uid  # assigned by the real apiserver
    assert not_none(client.get(Namespace, ns).status).phase == "Active"


def test_scheduler_binds_pod_to_registered_node(client: Client, ns: str) -> None:
    node_name = f"fake-{uuid.uuid4().hex[:6]}"
    client.create(
        Node(
            metadata=ObjectMeta(name=node_name, labels={"jiriaf.test": "bind"}),
            spec=NodeSpec(taints=[Taint(key="jiriaf.test/only", value="yes", effect="NoSchedule")]),
        )
    )
    try:
        status = NodeStatus(
            capacity={"cpu": "4", "memory": "8Gi", "pods": "10"},
            allocatable={"cpu": "4", "memory": "8Gi", "pods": "10"},
            conditions=[NodeCondition(type="Ready", status="True", reason="KubeletReady")],
        )
        client.patch(NodeStatusResource, node_name, {"status": status.to_dict()}, patch_type=PatchType.MERGE)
        client.create(
            Pod(
                metadata=ObjectMeta(name="p", namespace=ns),
                spec=PodSpec(
                    containers=[Container(name="c", image="none")],
                    nodeSelector={"jiriaf.test": "bind"},
                    tolerations=[Toleration(key="jiriaf.test/only", operator="Exists", effect="NoSchedule")],
                ),
            )
        )
        pod = eventually(
            lambda: p if not_none((p := client.get(Pod, "p", namespace=ns)).spec).nodeName else None,
            what="the scheduler to bind the pod",
        )
        assert not_none(pod.spec).nodeName == node_name
        scheduled = [c for c in not_none(pod.status).conditions or [] if c.type == "PodScheduled"]
        assert scheduled and scheduled[0].status == "True"
    finally:
        client.delete(Node, node_name)


def test_controller_manager_creates_replicaset_and_pods(client: Client, ns: str) -> None:
    labels = {"app": "web"}
    client.create(
        Deployment(
            metadata=ObjectMeta(name="web", namespace=ns),
            spec=DeploymentSpec(
                replicas=3,
                selector=LabelSelector(matchLabels=labels),
                template=PodTemplateSpec(
                    metadata=ObjectMeta(labels=labels),
                    spec=PodSpec(containers=[Container(name="c", image="none")]),
                ),
            ),
        )
    )
    rs = eventually(lambda: list(client.list(ReplicaSet, namespace=ns)), what="a ReplicaSet")
    assert not_none(not_none(rs[0].metadata).ownerReferences)[0].name == "web"
    pods = eventually(
        lambda: ps if len(ps := list(client.list(Pod, namespace=ns, labels=dict(labels)))) == 3 else None,
        what="three pods",
    )
    assert {not_none(not_none(p.metadata).ownerReferences)[0].kind for p in pods} == {"ReplicaSet"}
