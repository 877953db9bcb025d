"""Prometheus scrape configuration for JIRIAF: every JRM's exporter and every pod's metrics port.

Jobs (see ``docs/metrics.md``):

``jiriaf-jrm``
    ``GET https://<node InternalIP>:<kubelet port>/metrics`` of every JRM node (nodes labelled
    ``type=virtual-kubelet`` by default): the JRM's health and per-container/per-process figures.
``jiriaf-jrm-resource``
    ``/metrics/resource`` of the same nodes: the kubelet-compatible resource metrics.
``jiriaf-pods``
    Every Running pod's declared metrics ports, at ``<pod IP>:<port>``. A container port is a
    metrics port when its name is ``metrics`` or ends in ``-metrics``, or when the pod is annotated
    ``prometheus.io/scrape: "true"`` and ``prometheus.io/port`` names the port's number. The path
    is ``prometheus.io/path`` (default ``/metrics``), the scheme ``prometheus.io/scheme`` (http).
    ``prometheus.io/scrape: "false"`` opts a pod out. Targets come from pods, not Endpoints, so pods
    that share an address (shared mode, different ports) and pods with loopback addresses
    (per-pod mode on one machine, which EndpointSlices reject) are all scraped.

Discovery is either Kubernetes service discovery through the apiserver (Prometheus needs to list
nodes and pods) or files that ``jiriaf monitor file-sd`` keeps current (Prometheus needs no
apiserver access). Both produce the same targets and labels: ``node`` on JRM targets, and
``namespace``, ``pod``, ``container`` and ``node`` on pod targets.

The JRM's kubelet port demands a client that the apiserver authenticates (client certificate or
token) and authorizes for ``nodes/metrics``; the configuration reuses the kubeconfig's credentials
(written next to the configuration, mode 0600). JRM serving certificates are self-signed, so
``insecure_skip_verify`` is set for the JRM jobs unless a CA file is given.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from jiriaf.errors import UserError

Discovery = Literal["kubernetes", "file"]
JRM_JOB = "jiriaf-jrm"
RESOURCE_JOB = "jiriaf-jrm-resource"
PODS_JOB = "jiriaf-pods"
DEFAULT_NODE_SELECTOR = "type=virtual-kubelet"
METRICS_PORT_REGEX = "metrics|.+-metrics"
_LABEL_KEY = r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
SD_FILES = {
    JRM_JOB: "jiriaf-jrm.json",
    RESOURCE_JOB: "jiriaf-jrm-resource.json",
    PODS_JOB: "jiriaf-pods.json",
}


@dataclass(frozen=True)
class ApiAccess:
    """How Prometheus reaches and authenticates to the apiserver (and to the JRMs' kubelet ports)."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token_file: str | None = None
    insecure: bool = False


# ------------------------------------------------------------------------------------ credentials


def _write_secret(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    path.chmod(0o600)
    return str(path.absolute())


def api_access_from_kubeconfig(
    kubeconfig: Path | None, secrets_dir: Path, context: str | None = None
) -> ApiAccess:
    """The kubeconfig's server and credentials, with embedded data written as files into ``secrets_dir``.

    Raises :class:`UserError` for credentials Prometheus cannot use (exec plugins, auth providers,
    basic auth).
    """
    from jiriaf.kube.config import load_single_config

    single = load_single_config(kubeconfig, context)
    cluster, user = single.cluster, single.user

    def file_of(path_value: str | None, data_value: str | None, name: str) -> str | None:
        if data_value:
            return _write_secret(secrets_dir / name, base64.b64decode(data_value))
        if path_value:
            return str(Path(single.abs_file(path_value)).absolute())
        return None

    ca = file_of(cluster.certificate_auth, cluster.certificate_auth_data, "ca.crt")
    cert = key = token = None
    if user is not None:
        if user.exec is not None or user.auth_provider is not None or user.username:
            raise UserError(
                "the kubeconfig's user authenticates with an exec plugin, auth provider or password, "
                "which Prometheus cannot use; use a kubeconfig with a client certificate or a token "
                "(for example of the jiriaf-prometheus ServiceAccount in deploy/prometheus/rbac.yaml)"
            )
        cert = file_of(user.client_cert, user.client_cert_data, "client.crt")
        key = file_of(user.client_key, user.client_key_data, "client.key")
        if user.token:
            token = _write_secret(secrets_dir / "token", user.token.encode())
        elif user.token_file:
            token = str(Path(single.abs_file(user.token_file)).absolute())
    if not (cert and key) and not token:
        raise UserError("the kubeconfig has no client certificate or token for Prometheus to use")
    return ApiAccess(
        server=cluster.server,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        token_file=token,
        insecure=cluster.insecure,
    )


# ---------------------------------------------------------------------------------- configuration


def _tls(access: ApiAccess, *, ca_file: str | None, insecure: bool) -> dict[str, Any]:
    tls: dict[str, Any] = {}
    if ca_file:
        tls["ca_file"] = ca_file
    if insecure:
        tls["insecure_skip_verify"] = True
    if access.cert_file and access.key_file:
        tls["cert_file"] = access.cert_file
        tls["key_file"] = access.key_file
    return tls


def _auth(access: ApiAccess) -> dict[str, Any]:
    return {"authorization": {"credentials_file": access.token_file}} if access.token_file else {}


def _kubernetes_sd(
    access: ApiAccess, role: str, selectors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    sd: dict[str, Any] = {
        "role": role,
        "api_server": access.server,
        "tls_config": _tls(access, ca_file=access.ca_file, insecure=access.insecure),
        **_auth(access),
    }
    if selectors:
        sd["selectors"] = selectors
    return sd


def _jrm_job(
    name: str,
    path: str,
    access: ApiAccess,
    discovery: Discovery,
    node_selector: str,
    kubelet_ca_file: str | None,
    sd_dir: Path | None,
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_name": name,
        "scheme": "https",
        "metrics_path": path,
        "tls_config": _tls(access, ca_file=kubelet_ca_file, insecure=kubelet_ca_file is None),
        **_auth(access),
    }
    if discovery == "kubernetes":
        selectors = [{"role": "node", "label": node_selector}] if node_selector else None
        job["kubernetes_sd_configs"] = [_kubernetes_sd(access, "node", selectors)]
        job["relabel_configs"] = [
            {"source_labels": ["__meta_kubernetes_node_name"], "target_label": "node"},
            {
                "action": "labelmap",
                "regex": "__meta_kubernetes_node_label_jiriaf_(site|nodetype)",
                "replacement": "jiriaf_$1",
            },
        ]
    else:
        assert sd_dir is not None
        job["file_sd_configs"] = [{"files": [str(sd_dir / SD_FILES[name])], "refresh_interval": "30s"}]
    if name == RESOURCE_JOB:
        job["honor_timestamps"] = True  # the kubelet's resource metrics carry their sample times
    return job


def _pods_job(access: ApiAccess, discovery: Discovery, sd_dir: Path | None) -> dict[str, Any]:
    job: dict[str, Any] = {"job_name": PODS_JOB}
    if discovery == "file":
        assert sd_dir is not None
        job["file_sd_configs"] = [{"files": [str(sd_dir / SD_FILES[PODS_JOB])], "refresh_interval": "30s"}]
        return job
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    job["kubernetes_sd_configs"] = [_kubernetes_sd(access, "pod")]
    job["relabel_configs"] = [
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        {"source_labels": [annotation + "scrape"], "regex": "false", "action": "drop"},
        {"source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": ".+", "action": "keep"},
        # the port to keep: the annotated one, unless this port is named metrics / *-metrics
        {
            "source_labels": [annotation + "scrape", annotation + "port"],
            "regex": "true;(.+)",
            "target_label": "__tmp_jiriaf_port",
        },
        {
            "source_labels": [
                "__meta_kubernetes_pod_container_port_name",
                "__meta_kubernetes_pod_container_port_number",
            ],
            "regex": f"(?:{METRICS_PORT_REGEX});(.+)",
            "target_label": "__tmp_jiriaf_port",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_number"],
            "target_label": "__tmp_jiriaf_port",
            "action": "keepequal",
        },
        {"source_labels": [annotation + "path"], "regex": "(.+)", "target_label": "__metrics_path__"},
        {"source_labels": [annotation + "scheme"], "regex": "(https?)", "target_label": "__scheme__"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]
    return job


def prometheus_config(
    access: ApiAccess,
    *,
    discovery: Discovery = "kubernetes",
    scrape_interval: str = "15s",
    node_selector: str = DEFAULT_NODE_SELECTOR,
    kubelet_ca_file: str | None = None,
    sd_dir: Path | None = None,
) -> dict[str, Any]:
    """The scrape configuration (a dict to dump as YAML). ``sd_dir`` is required for file discovery."""
    if discovery == "file" and sd_dir is None:
        raise UserError("file discovery needs a directory for the target files (--sd-dir)")
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            _jrm_job(JRM_JOB, "/metrics", access, discovery, node_selector, kubelet_ca_file, sd_dir),
            _jrm_job(
                RESOURCE_JOB, "/metrics/resource", access, discovery, node_selector, kubelet_ca_file, sd_dir
            ),
            _pods_job(access, discovery, sd_dir),
        ],
    }


def render_yaml(config: Mapping[str, Any]) -> str:
    return "# generated by 'jiriaf monitor prometheus-config'\n" + yaml.safe_dump(
        dict(config), sort_keys=False
    )


# ---------------------------------------------------------------------------------- file discovery


def parse_selector(text: str) -> dict[str, str]:
    """``a=b,c=d`` as a dict (equality terms only); UserError otherwise."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not re.fullmatch(_LABEL_KEY, key) or not re.fullmatch(_LABEL_VALUE, value):
            raise UserError(f"node selector {text!r}: only key=value terms are supported")
        out[key] = value
    return out


def node_target(node: Mapping[str, Any]) -> str | None:
    """``<InternalIP>:<kubelet port>`` of a node (Hostname when it has no InternalIP), or None."""
    status = node.get("status") or {}
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    host = addresses.get("InternalIP") or addresses.get("Hostname")
    if not port or not host:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class PodTarget:
    """One metrics port of one container of a pod."""

    namespace: str
    pod: str
    container: str
    node: str
    address: str
    path: str
    scheme: str


def pod_targets(pod: Mapping[str, Any]) -> list[PodTarget]:
    """A Running pod's metrics ports, by the same rules as the ``jiriaf-pods`` relabelling."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        return []
    annotations = meta.get("annotations") or {}
    scrape = annotations.get("prometheus.io/scrape")
    if scrape == "false":
        return []
    wanted = annotations.get("prometheus.io/port") if scrape == "true" else None
    path = annotations.get("prometheus.io/path") or "/metrics"
    scheme = annotations.get("prometheus.io/scheme")
    scheme = scheme if scheme in ("http", "https") else "http"
    host = f"[{ip}]" if ":" in ip else ip
    targets = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            name = port.get("name") or ""
            named = re.fullmatch(METRICS_PORT_REGEX, name) is not None
            if named or (wanted is not None and str(number) == wanted):
                targets.append(
                    PodTarget(
                        namespace=meta.get("namespace", "default"),
                        pod=meta.get("name", ""),
                        container=container.get("name", ""),
                        node=spec.get("nodeName", ""),
                        address=f"{host}:{number}",
                        path=path,
                        scheme=scheme,
                    )
                )
    return targets


def file_sd_groups(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Target groups for each file of :data:`SD_FILES` (Prometheus' file_sd JSON format)."""
    jrm: list[dict[str, Any]] = []
    for node in nodes:
        target = node_target(node)
        if target is None:
            continue
        meta = node.get("metadata") or {}
        labels = {"node": meta.get("name", "")}
        for key in ("jiriaf.site", "jiriaf.nodetype"):
            value = (meta.get("labels") or {}).get(key)
            if value:
                labels[key.replace(".", "_")] = value
        jrm.append({"targets": [target], "labels": labels})
    pod_groups = [
        {
            "targets": [t.address],
            "labels": {
                "namespace": t.namespace,
                "pod": t.pod,
                "container": t.container,
                "node": t.node,
                "__metrics_path__": t.path,
                "__scheme__": t.scheme,
            },
        }
        for pod in pods
        for t in pod_targets(pod)
    ]
    return {SD_FILES[JRM_JOB]: jrm, SD_FILES[RESOURCE_JOB]: jrm, SD_FILES[PODS_JOB]: pod_groups}


def write_file_sd(directory: Path, groups: Mapping[str, list[dict[str, Any]]]) -> list[Path]:
    """Write each file atomically (Prometheus never reads half a file); return the changed ones."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in groups.items():
        path = directory / name
        text = json.dumps(content, indent=1, sort_keys=True)
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        changed.append(path)
    return changed


def collect_file_sd(kubeconfig: Path | None, node_selector: str) -> dict[str, list[dict[str, Any]]]:
    """List JRM nodes and Running pods through the apiserver and build the target groups."""
    import httpx2

    from jiriaf.kube.raw import raw_client

    params = {"labelSelector": node_selector} if node_selector else {}
    try:
        with raw_client(kubeconfig) as client:
            nodes = client.get("/api/v1/nodes", params=params)
            pods = client.get("/api/v1/pods", params={"fieldSelector": "status.phase=Running"})
    except httpx2.HTTPError as exc:
        raise UserError(f"cannot list nodes and pods: {exc}") from exc
    for resp in (nodes, pods):
        if resp.status_code != 200:
            raise UserError(
                f"cannot list {resp.request.url.path}: HTTP {resp.status_code}: {resp.text[:200]}"
            )
    return file_sd_groups(nodes.json().get("items") or [], pods.json().get("items") or [])
