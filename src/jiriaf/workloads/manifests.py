"""The manifests of ``deploy/`` made to run on a local JRM: interpreter, ports, node, namespace.

Pure logic over YAML documents (dicts); the integration tests, the HPA system test and
``bench/hpa.py`` deploy the very files users deploy, adapted by :func:`for_local_jrm`:

* ``python3`` in a container command becomes the given interpreter (the one with jiriaf installed);
* well-known ports (``ports`` mapping, e.g. ``{8080: 43121}``) are renumbered everywhere they
  appear: ``--port=8080``-style arguments, container ports, Service ports and target ports, and the
  ``prometheus.io/port`` annotation, so that tests never collide with other listeners;
* pods are pinned to ``node_name`` (``kubernetes.io/hostname``) and objects put in ``namespace``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from jiriaf.errors import UserError

Doc = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")


def load_documents(paths: Iterable[Path]) -> list[Doc]:
    """The non-empty YAML documents of ``paths``, in order."""
    docs: list[Doc] = []
    for path in paths:
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read manifests {path}: {exc}") from exc
        docs.extend(d for d in loaded if isinstance(d, dict))
    return docs


def _renumber_text(text: str, ports: Mapping[int, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"(?<=[=:]){old}(?!\d)", str(new), text)
    return text


def _pod_spec(doc: Doc) -> dict[str, Any] | None:
    if doc.get("kind") == "Pod":
        spec = doc.get("spec")
    elif doc.get("kind") in WORKLOAD_KINDS:
        spec = ((doc.get("spec") or {}).get("template") or {}).get("spec")
    else:
        return None
    return spec if isinstance(spec, dict) else None


def _pod_meta(doc: Doc) -> dict[str, Any] | None:
    if doc.get("kind") == "Pod":
        meta = doc.setdefault("metadata", {})
    elif doc.get("kind") in WORKLOAD_KINDS:
        meta = doc.setdefault("spec", {}).setdefault("template", {}).setdefault("metadata", {})
    else:
        return None
    return meta if isinstance(meta, dict) else None


def for_local_jrm(
    docs: Iterable[Doc],
    *,
    python: str,
    namespace: str,
    node_name: str | None = None,
    ports: Mapping[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Doc]:
    """Copies of ``docs`` adapted to a local JRM (see the module docstring).

    ``env`` sets variables in every container that already declares them (e.g. ``WORK_MS``).
    """
    ports = dict(ports or {})
    out: list[Doc] = []
    for original in docs:
        doc = copy.deepcopy(original)
        doc.setdefault("metadata", {})["namespace"] = namespace
        if doc.get("kind") == "RoleBinding":
            for subject in doc.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
        if doc.get("kind") == "Service":
            for port in (doc.get("spec") or {}).get("ports") or []:
                for key in ("port", "targetPort"):
                    if isinstance(port.get(key), int) and port[key] in ports:
                        port[key] = ports[port[key]]
        meta = _pod_meta(doc)
        if meta is not None:
            annotations = meta.get("annotations") or {}
            if "prometheus.io/port" in annotations and annotations["prometheus.io/port"].isdigit():
                old = int(annotations["prometheus.io/port"])
                annotations["prometheus.io/port"] = str(ports.get(old, old))
        spec = _pod_spec(doc)
        if spec is not None:
            if node_name:
                spec.setdefault("nodeSelector", {})["kubernetes.io/hostname"] = node_name
            for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                _adapt_container(container, python, ports, env or {})
        out.append(doc)
    return out


def _adapt_container(
    container: dict[str, Any], python: str, ports: Mapping[int, int], env: Mapping[str, str]
) -> None:
    command = container.get("command") or []
    if command and command[0] in ("python3", "python"):
        container["command"] = [python, *command[1:]]
    container["args"] = [_renumber_text(str(a), ports) for a in container.get("args") or []]
    for port in container.get("ports") or []:
        if port.get("containerPort") in ports:
            port["containerPort"] = ports[port["containerPort"]]
    for var in container.get("env") or []:
        if var.get("name") in env:
            var["value"] = env[var["name"]]
            var.pop("valueFrom", None)


def find(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    """The document of ``kind`` named ``name`` (KeyError when absent)."""
    for doc in docs:
        if doc.get("kind") == kind and (doc.get("metadata") or {}).get("name") == name:
            return doc
    raise KeyError(f"{kind}/{name}")
