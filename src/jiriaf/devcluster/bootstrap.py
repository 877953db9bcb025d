"""Objects the local control plane needs beyond what the apiserver creates itself.

metrics-server runs as the user ``system:metrics-server`` (client certificate) with the RBAC it
needs, and is reached through an ``APIService`` whose Service is an ExternalName pointing at
127.0.0.1 (no kube-proxy and no loopback Endpoints needed).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.codecs import load_all_yaml

METRICS_USER = "system:metrics-server"


def bootstrap_manifests(metrics_port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The manifests, as dicts, for metrics-server's RBAC, Service and APIService."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    "rbac.authorization.k8s.io/aggregate-to-view": "true",
                    "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                },
            },
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:metrics-server"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:metrics-server",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": METRICS_USER}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "metrics-server:system:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": METRICS_USER}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-server-auth-reader", "namespace": "kube-system"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": METRICS_USER}],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics-server", "namespace": "kube-system"},
            "spec": {
                "type": "ExternalName",
                "externalName": "127.0.0.1",
                "ports": [{"name": "https", "port": metrics_port, "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": metrics_port},
                "caBundle": base64.b64encode(ca_bundle).decode(),
            },
        },
    ]


def apply_bootstrap_objects(kubeconfig: Path, metrics_port: int, ca_cert: Path) -> None:
    """Server-side apply of :func:`bootstrap_manifests` (idempotent)."""
    client = Client(KubeConfig.from_file(kubeconfig), field_manager="jiriaf-devcluster")
    try:
        import yaml

        text = yaml.safe_dump_all(bootstrap_manifests(metrics_port, ca_cert.read_bytes()))
        for obj in load_all_yaml(text):
            client.apply(obj, force=True)
    finally:
        client.close()
