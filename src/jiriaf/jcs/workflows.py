"""A request's workflow on Kubernetes: its objects pinned to the lease's nodes, applied, deleted.

:func:`render` is pure: it takes the request's manifests (or what ``helm template`` rendered from
its chart), puts every object in the request's namespace, labels it ``jiriaf.io/request=<id>``
(pod templates too, so the monitor finds the pods), and gives every pod spec a required node
affinity on ``kubernetes.io/hostname`` in the lease's nodes plus a toleration of the JRM taint.
:func:`apply` uses server-side apply (field manager ``jiriaf-jcs``), so applying again after a
restart changes nothing and never creates a second copy; :func:`delete` removes what was applied.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import yaml

from jiriaf.errors import UserError
from jiriaf.jcs.schemas import WORKFLOW_KINDS, check_manifest
from jiriaf.kube.patching import ApiError, check
from jiriaf.kube.patching import delete as delete_object
from jiriaf.kube.patching import get as get_object

REQUEST_LABEL = "jiriaf.io/request"  # the request id, for people
WORKFLOW_LABEL = "jiriaf.io/workflow"  # <instance>-r<request id>: what selectors use
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "jiriaf-jcs"
HOSTNAME_KEY = "kubernetes.io/hostname"
JRM_TAINT_KEY = "virtual-kubelet.io/provider"
APPLY = "application/apply-patch+yaml"
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "Job")


def collection_path(kind: str, namespace: str) -> str:
    api_version, plural = WORKFLOW_KINDS[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def object_path(ref: dict[str, str]) -> str:
    return f"{collection_path(ref['kind'], ref['namespace'])}/{ref['name']}"


def object_ref(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj["metadata"]
    return {"kind": obj["kind"], "namespace": meta["namespace"], "name": meta["name"]}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside ``obj`` (a Pod, or a controller's pod template), if any."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.setdefault("spec", {})  # type: ignore[no-any-return]
    if kind in POD_TEMPLATE_KINDS:
        template = obj.setdefault("spec", {}).setdefault("template", {})
        return template.setdefault("spec", {})  # type: ignore[no-any-return]
    return None


def pod_labels(obj: dict[str, Any]) -> dict[str, str] | None:
    """The labels the pods of ``obj`` get (the object's own for a Pod)."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["metadata"].setdefault("labels", {})  # type: ignore[no-any-return]
    if kind in POD_TEMPLATE_KINDS:
        template = obj.setdefault("spec", {}).setdefault("template", {})
        return template.setdefault("metadata", {}).setdefault("labels", {})  # type: ignore[no-any-return]
    return None


def pin_to_nodes(spec: dict[str, Any], nodes: Sequence[str]) -> None:
    """Require ``kubernetes.io/hostname`` in ``nodes`` (ANDed into every existing node selector term)
    and tolerate the JRM taint."""
    expression = {"key": HOSTNAME_KEY, "operator": "In", "values": sorted(nodes)}
    affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        kept = [e for e in term.get("matchExpressions", []) if e.get("key") != HOSTNAME_KEY]
        term["matchExpressions"] = [*kept, expression]
    required["nodeSelectorTerms"] = terms
    tolerations = spec.setdefault("tolerations", [])
    if not any(t.get("key") == JRM_TAINT_KEY for t in tolerations):
        tolerations.append({"key": JRM_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})


def workflow_owner(instance: str, request_id: int) -> str:
    """The ``jiriaf.io/workflow`` label value of a request's objects (unique across JCS databases)."""
    return f"{instance}-r{request_id}"


def selector(owner: str) -> str:
    return quote(f"{WORKFLOW_LABEL}={owner}")


class WorkflowConflict(UserError):
    """An object of the workflow exists already and belongs to something else."""


def render(
    manifests: Iterable[dict[str, Any]], *, owner: str, request_id: int, namespace: str, nodes: Sequence[str]
) -> list[dict[str, Any]]:
    """The objects to apply for a request whose lease holds ``nodes`` (input left unchanged)."""
    if not nodes:
        raise ValueError("a workflow needs the lease's nodes to be pinned to")
    out = []
    for i, original in enumerate(manifests):
        check_manifest(original, f"manifests[{i}]")
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if meta.get("namespace") not in (None, namespace):
            raise ValueError(f"{obj['kind']} {meta['name']} is not in namespace {namespace}")
        meta["namespace"] = namespace
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
            meta.pop(key, None)
        obj.pop("status", None)
        labels = meta.setdefault("labels", {})
        labels[REQUEST_LABEL] = str(request_id)
        labels[WORKFLOW_LABEL] = owner
        labels[MANAGED_BY_LABEL] = MANAGER
        spec = pod_spec(obj)
        if spec is not None:
            pin_to_nodes(spec, nodes)
            spec.pop("nodeName", None)  # scheduling goes through the affinity
            template_labels = pod_labels(obj)
            assert template_labels is not None
            template_labels[REQUEST_LABEL] = str(request_id)
            template_labels[WORKFLOW_LABEL] = owner
        out.append(obj)
    return out


def load_documents(text: str) -> list[dict[str, Any]]:
    """Kubernetes objects from multi-document YAML (empty documents skipped, Lists flattened)."""
    docs: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            docs.extend(d for d in doc.get("items") or [] if d)
        elif isinstance(doc, dict):
            docs.append(doc)
        else:
            raise ValueError("a rendered document is not a Kubernetes object")
    return docs


def local_chart(chart: str, chart_dirs: Sequence[Path]) -> str:
    """The resolved path of a local chart, refused unless it lies in one of ``chart_dirs``."""
    path = Path(chart).expanduser().resolve()
    if not any(path.is_relative_to(d.expanduser().resolve()) for d in chart_dirs):
        allowed = ", ".join(str(d) for d in chart_dirs) or "none configured (--chart-dir)"
        raise UserError(f"chart {chart} is outside the allowed chart directories ({allowed})")
    if not path.is_dir():
        raise UserError(f"chart {chart} is not a directory")
    return str(path)


async def helm_template(
    chart: str,
    *,
    release: str,
    namespace: str,
    values: dict[str, Any],
    version: str | None,
    chart_dirs: Sequence[Path],
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Render a chart with ``helm template``: local charts only from ``chart_dirs``, or ``oci://``."""
    helm = shutil.which("helm")
    if helm is None:
        raise UserError("the workflow is a Helm chart but helm is not installed on the JCS host")
    if not chart.startswith("oci://"):
        chart = local_chart(chart, chart_dirs)
    with tempfile.TemporaryDirectory(prefix="jcs-helm-") as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        argv = [helm, "template", release, chart, "--namespace", namespace, "--values", str(values_file)]
        if version:
            argv += ["--version", version]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HELM_CACHE_HOME": str(Path(tmp) / "cache")},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise UserError(f"helm template {chart} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise UserError(f"helm template {chart} failed: {lines[-1] if lines else proc.returncode}")
    try:
        return load_documents(out.decode())
    except (yaml.YAMLError, ValueError) as exc:
        raise UserError(f"helm template {chart} gave unreadable output: {exc}") from None


def _owner_of(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return ((obj.get("metadata") or {}).get("labels") or {}).get(WORKFLOW_LABEL)


async def apply(client: httpx2.AsyncClient, objects: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Server-side apply every object (ConfigMaps, Secrets and Services first); their refs.

    An object that exists already and is not this workflow's (another request's, or not made by the
    central service) is never taken over: :class:`WorkflowConflict` names it.
    """
    order = {"ConfigMap": 0, "Secret": 0, "Service": 1}
    ordered = sorted(objects, key=lambda o: order.get(o["kind"], 2))
    for obj in ordered:
        existing = await get_object(client, object_path(object_ref(obj)))
        mine = _owner_of(obj)
        if existing is not None and _owner_of(existing) != mine:
            ref = object_ref(obj)
            other = _owner_of(existing)
            raise WorkflowConflict(
                f"{ref['kind']} {ref['name']} already exists in namespace {ref['namespace']} and belongs to "
                + (f"workflow {other}" if other else "something the central service did not create")
            )
    refs = []
    for obj in ordered:
        ref = object_ref(obj)
        path = f"{object_path(ref)}?fieldManager={quote(MANAGER)}&force=true"
        check(await client.patch(path, content=yaml.safe_dump(obj).encode(), headers={"Content-Type": APPLY}))
        refs.append(ref)
    return refs


async def delete(
    client: httpx2.AsyncClient, refs: Iterable[dict[str, str]], owner: str
) -> list[dict[str, str]]:
    """Delete the workflow's objects (their pods go with them); the refs that were still there.
    Objects that no longer carry the workflow's label are left alone."""
    gone = []
    for ref in refs:
        path = object_path(ref)
        existing = await get_object(client, path)
        if existing is None or _owner_of(existing) != owner:
            continue
        try:
            if await delete_object(client, path, {"propagationPolicy": "Background"}):
                gone.append(ref)
        except ApiError as exc:
            if exc.status != 404:
                raise
    return gone


async def list_pods(client: httpx2.AsyncClient, namespace: str, owner: str) -> list[dict[str, Any]]:
    """The pods of a workflow."""
    body = check(await client.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector(owner)}"))
    return list(body.get("items") or [])
