"""The JRM's Node: registration (or adoption), labels, taints, conditions computed from the host,
the Lease heartbeat and the remaining-walltime label ``jiriaf.alivetime``."""

from __future__ import annotations

import asyncio
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
import psutil

from jiriaf import __version__
from jiriaf.jrm.settings import JRMSettings, parse_taint
from jiriaf.kube.patching import MERGE, STRATEGIC, ApiError, create, delete, get, patch

log = logging.getLogger(__name__)

KUBELET_VERSION = f"v1.34.0-jiriaf-{__version__}"
WALLTIME_TAINT = {"key": "jiriaf.io/walltime-ending", "value": "true", "effect": "NoSchedule"}
LEASE_NS = "kube-node-lease"


def rfc3339(ts: float | None = None) -> str:
    """Seconds since the epoch as RFC 3339 (second precision, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def micro_time(ts: float | None = None) -> str:
    """Seconds since the epoch as a Kubernetes MicroTime."""
    t = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


@dataclass
class HostPressure:
    """The host facts behind the pressure conditions."""

    memory: bool
    disk: bool
    pid: bool


def host_pressure(workdir: str) -> HostPressure:
    """Memory below 5 % available, disk of the work directory below 5 % free, pids above 90 % of max."""
    vm = psutil.virtual_memory()
    try:
        du = shutil.disk_usage(workdir)
        disk = du.free < 0.05 * du.total
    except OSError:
        disk = False
    try:
        pid_max = int(_read("/proc/sys/kernel/pid_max"))
        pid = len(psutil.pids()) > 0.9 * pid_max
    except (OSError, ValueError):
        pid = False
    return HostPressure(memory=vm.available < 0.05 * vm.total, disk=disk, pid=pid)


@dataclass
class NodeState:
    """What the node reports; the agent changes it, the manager publishes it."""

    ready: bool = True
    reason: str = "KubeletReady"
    message: str = "jiriaf JRM is ready"
    draining: bool = False
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, time)


class NodeManager:
    """Registers the Node, keeps its status, labels and Lease current."""

    def __init__(self, client: httpx2.AsyncClient, settings: JRMSettings, *, started_at: float) -> None:
        self.client = client
        self.settings = settings
        self.name = settings.node_name
        self.started_at = started_at
        self.state = NodeState()
        self.node: dict[str, Any] | None = None
        self.api_errors = 0
        self._published: dict[str, Any] | None = None

    # ------------------------------------------------------------------ walltime
    def deadline(self) -> float | None:
        """Epoch second when the walltime ends, or None without walltime."""
        return self.started_at + self.settings.walltime if self.settings.walltime > 0 else None

    def remaining(self, now: float | None = None) -> int | None:
        """Whole seconds of walltime left (never negative), or None without walltime."""
        end = self.deadline()
        if end is None:
            return None
        return max(0, int(end - (time.time() if now is None else now)))

    # ------------------------------------------------------------------ objects
    def labels(self) -> dict[str, str]:
        labels = {
            "type": "virtual-kubelet",
            "kubernetes.io/role": "agent",
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                platform.machine(), platform.machine()
            ),
            "jiriaf.nodetype": self.settings.nodetype,
            "jiriaf.site": self.settings.site,
            **self.settings.labels,
        }
        remaining = self.remaining()
        if remaining is not None:
            labels["jiriaf.alivetime"] = str(remaining)
        return labels

    def taints(self) -> list[dict[str, str]]:
        taints = []
        base = parse_taint(self.settings.taint) if self.settings.taint else None
        if base:
            taints.append(base)
        if self.state.draining:
            taints.append(dict(WALLTIME_TAINT))
        return taints

    def _condition(self, ctype: str, status: str, reason: str, message: str, now: str) -> dict[str, str]:
        prev = self.state.transitions.get(ctype)
        if prev is None or prev[0] != status:
            self.state.transitions[ctype] = (status, now)
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": self.state.transitions[ctype][1],
        }

    def status(self) -> dict[str, Any]:
        """The Node status: capacity, conditions from the host, addresses, endpoints, info."""
        now = rfc3339()
        p = host_pressure(str(self.settings.pod_root))
        resources = {
            "cpu": self.settings.cpu,
            "memory": self.settings.memory,
            "pods": str(self.settings.pods),
        }
        uname = platform.uname()
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                self._condition(
                    "Ready",
                    "True" if self.state.ready else "False",
                    self.state.reason,
                    self.state.message,
                    now,
                ),
                *(
                    self._condition(ctype, "True" if on else "False", *(yes if on else no), now)
                    for ctype, on, yes, no in (
                        (
                            "MemoryPressure",
                            p.memory,
                            ("KubeletHasInsufficientMemory", "available memory below 5%"),
                            ("KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                        ),
                        (
                            "DiskPressure",
                            p.disk,
                            ("KubeletHasDiskPressure", "work directory below 5% free"),
                            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                        ),
                        (
                            "PIDPressure",
                            p.pid,
                            ("KubeletHasInsufficientPID", "process count above 90% of pid_max"),
                            ("KubeletHasSufficientPID", "kubelet has sufficient PID"),
                        ),
                    )
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.settings.node_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.settings.kubelet_port}},
            "nodeInfo": {
                "machineID": _machine_id(),
                "systemUUID": _machine_id(),
                "bootID": _boot_id(),
                "kernelVersion": uname.release,
                "osImage": _os_image(),
                "containerRuntimeVersion": f"jiriaf-process://{__version__}",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self.labels()["kubernetes.io/arch"],
            },
        }

    # ------------------------------------------------------------------ API
    async def register(self) -> dict[str, Any]:
        """Create the Node, or adopt an existing one of the same name; then publish status and Lease."""
        path = f"/api/v1/nodes/{self.name}"
        existing = await get(self.client, path)
        if existing is None:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.name, "labels": self.labels()},
                "spec": {"taints": self.taints()},
            }
            try:
                self.node = await create(self.client, "/api/v1/nodes", body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                existing = await get(self.client, path)
        if existing is not None:
            self.node = await self._patch_meta(existing)
        await self.publish_status(force=True)
        await self.renew_lease()
        return self.node or {}

    async def _patch_meta(self, current: dict[str, Any] | None = None) -> dict[str, Any]:
        current = current or await get(self.client, f"/api/v1/nodes/{self.name}") or {}
        labels = dict(current.get("metadata", {}).get("labels") or {})
        if "jiriaf.alivetime" in labels and self.remaining() is None:
            labels["jiriaf.alivetime"] = None  # type: ignore[assignment]  # null deletes in a merge patch
        labels.update(self.labels())
        # taints we own are replaced; taints others added (e.g. node lifecycle controller) are kept
        ours = {"virtual-kubelet.io/provider", WALLTIME_TAINT["key"]}
        base = parse_taint(self.settings.taint) if self.settings.taint else None
        if base:
            ours.add(base["key"])
        kept = [t for t in (current.get("spec", {}).get("taints") or []) if t.get("key") not in ours]
        body = {
            "metadata": {"labels": labels},
            "spec": {"taints": kept + self.taints(), "unschedulable": False},
        }
        return await patch(self.client, f"/api/v1/nodes/{self.name}", body, MERGE)

    async def publish_status(self, force: bool = False) -> None:
        """Patch the Node status when it changed (heartbeat times aside) or when ``force``."""
        status = self.status()
        comparable = {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in status["conditions"]
            ],
        }
        if not force and comparable == self._published:
            return
        await patch(self.client, f"/api/v1/nodes/{self.name}/status", {"status": status}, STRATEGIC)
        self._published = comparable

    async def update_labels(self) -> None:
        """Keep ``jiriaf.alivetime`` current."""
        await patch(
            self.client, f"/api/v1/nodes/{self.name}", {"metadata": {"labels": self.labels()}}, STRATEGIC
        )

    async def set_draining(self) -> None:
        """Stop taking new pods: add the walltime taint."""
        self.state.draining = True
        await self._patch_meta()

    async def renew_lease(self) -> None:
        """Create or renew the node's Lease in kube-node-lease."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.settings.lease_duration,
            "renewTime": micro_time(),
        }
        try:
            await patch(self.client, path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = []
            if self.node and self.node.get("metadata", {}).get("uid"):
                owner = [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.name,
                        "uid": self.node["metadata"]["uid"],
                    }
                ]
            await create(
                self.client,
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": LEASE_NS, "ownerReferences": owner},
                    "spec": {**spec, "acquireTime": micro_time()},
                },
            )

    async def heartbeat_loop(self) -> None:
        """Renew the Lease every ``lease_renew_interval``; publish status and labels when due."""
        last_status = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.renew_lease()
                if loop.time() - last_status >= self.settings.status_interval:
                    await self.publish_status(force=loop.time() - last_status > 60)
                    if self.remaining() is not None:
                        await self.update_labels()
                    last_status = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep beating through API hiccups
                self.api_errors += 1
                log.warning("node heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.lease_renew_interval)

    async def mark_not_ready(self, reason: str, message: str) -> None:
        """Report Ready=False with ``reason`` (the JRM is stopping)."""
        self.state.ready = False
        self.state.reason = reason
        self.state.message = message
        await self.publish_status(force=True)

    async def delete(self) -> None:
        """Remove the Node (its Lease goes with it through the owner reference)."""
        await delete(self.client, f"/api/v1/nodes/{self.name}")


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _machine_id() -> str:
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return f"{platform.system()} {platform.release()}"
