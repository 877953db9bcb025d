"""The JRM's one settings model: every setting has a CLI flag and an environment variable.

The original JIRIAF variables keep working (``NODENAME``, ``KUBECONFIG``, ``VKUBELET_POD_IP``,
``KUBELET_PORT``, ``JIRIAF_WALLTIME``, ``JIRIAF_NODETYPE``, ``JIRIAF_SITE``), so the paper's
``start.sh``-style invocation runs unchanged; every other setting is ``JIRIAF_<NAME>``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

import psutil
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_TAINT = "virtual-kubelet.io/provider=mock:NoSchedule"


def _default_cpu() -> str:
    return str(os.cpu_count() or 1)


def _default_memory() -> str:
    return f"{psutil.virtual_memory().total // (1024 * 1024)}Mi"


class JRMSettings(BaseSettings):
    """Settings of one JRM (one virtual node)."""

    model_config = SettingsConfigDict(env_prefix="JIRIAF_", populate_by_name=True, extra="forbid")

    node_name: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0].lower(),
        validation_alias=AliasChoices("node_name", "NODENAME", "JIRIAF_NODE_NAME"),
        description="Name of the Kubernetes Node.",
    )
    kubeconfig: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("kubeconfig", "KUBECONFIG", "JIRIAF_KUBECONFIG"),
        description="Kubeconfig of the control plane (default: in-cluster or ~/.kube/config).",
    )
    node_ip: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("node_ip", "VKUBELET_POD_IP", "JIRIAF_NODE_IP"),
        description="Address of the node (InternalIP) and, in shared mode, of its pods.",
    )
    kubelet_port: int = Field(
        default=10250,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("kubelet_port", "KUBELET_PORT", "JIRIAF_KUBELET_PORT"),
        description="Port of the kubelet HTTPS API (logs, metrics).",
    )
    kubelet_bind: str | None = Field(
        default=None,
        description="Address the kubelet API listens on (default: the node address).",
    )
    walltime: int = Field(
        default=0,
        ge=0,
        validation_alias=AliasChoices("walltime", "JIRIAF_WALLTIME"),
        description="Seconds this node lives (0: no limit).",
    )
    walltime_margin: int = Field(
        default=30,
        ge=0,
        description="Seconds before the walltime ends when the node stops taking pods.",
    )
    idle_timeout: float = Field(
        default=0.0,
        ge=0,
        description="Stop after this many seconds without active pods (0: never) [env JIRIAF_IDLE_TIMEOUT].",
    )
    nodetype: str = Field(default="cpu", validation_alias=AliasChoices("nodetype", "JIRIAF_NODETYPE"))
    site: str = Field(default="local", validation_alias=AliasChoices("site", "JIRIAF_SITE"))
    workdir: Path | None = Field(default=None, description="Where pods live (default ~/jiriaf-jrm/<node>).")
    cpu: str = Field(default_factory=_default_cpu, description="CPU capacity reported (default: host).")
    memory: str = Field(default_factory=_default_memory, description="Memory capacity (default: host).")
    pods: int = Field(default=110, ge=1, description="Pod capacity.")
    taint: str = Field(default=DEFAULT_TAINT, description="Taint key=value:Effect of the node ('' for none).")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra node labels.")
    allowed_host_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Prefixes that hostPath volumes may point into.",
    )
    on_exit: Literal["notready", "delete"] = Field(
        default="notready",
        description="What happens to the Node when the JRM ends.",
    )
    lease_duration: int = Field(default=40, ge=5, description="Lease duration in seconds.")
    lease_renew_interval: float = Field(default=10.0, gt=0, description="Seconds between Lease renewals.")
    status_interval: float = Field(default=10.0, gt=0, description="Seconds between node status checks.")
    resync_period: float = Field(default=300.0, gt=0, description="Seconds between full pod relists.")
    allow_anonymous: bool = Field(default=False, description="Let anonymous requests reach the kubelet API.")
    client_ca_file: Path | None = Field(default=None, description="CA of kubelet API clients.")
    tls_cert_file: Path | None = Field(default=None)
    tls_private_key_file: Path | None = Field(default=None)
    address_mode: Literal["shared", "per-pod"] = Field(
        default="shared",
        description="Pod addresses: 'shared' (every pod gets the node address) or 'per-pod' (one "
        "address per pod from pod_cidr).",
    )
    pod_cidr: str | None = Field(
        default=None,
        description="Range of per-pod addresses (default: a /16 in 127.0.0.0/8 derived from the node name).",
    )
    metrics_interval: float = Field(
        default=5.0, gt=0, description="Seconds between samples of the containers' resource usage."
    )

    @field_validator("node_name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
            raise ValueError(f"{value!r} is not a valid node name (lowercase DNS subdomain)")
        return value

    @field_validator("allowed_host_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in value.replace(",", ":").split(":") if p]
        return value

    @field_validator("taint")
    @classmethod
    def _taint_form(cls, value: str) -> str:
        if value and parse_taint(value) is None:
            raise ValueError(
                f"taint {value!r} is not key[=value]:Effect with Effect NoSchedule, "
                "PreferNoSchedule or NoExecute"
            )
        return value

    @field_validator("pod_cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from jiriaf.jrm.addresses import parse_cidr

        return str(parse_cidr(value))

    @model_validator(mode="after")
    def _cidr_holds_pods(self) -> JRMSettings:
        if self.address_mode == "per-pod":
            from jiriaf.jrm.addresses import default_pod_cidr, parse_cidr, usable_count

            network = parse_cidr(self.pod_cidr or default_pod_cidr(self.node_name))
            if usable_count(network) < self.pods:
                raise ValueError(
                    f"pod_cidr {network} holds {usable_count(network)} addresses, fewer than the "
                    f"pod capacity {self.pods}"
                )
        return self

    @property
    def pod_root(self) -> Path:
        """The work directory: pods live in ``<pod_root>/<namespace>/<pod>``."""
        return (self.workdir or Path.home() / "jiriaf-jrm" / self.node_name).expanduser().absolute()


def parse_taint(text: str) -> dict[str, str] | None:
    """``key=value:Effect`` (or ``key:Effect``) as a Taint dict; None when malformed."""
    if ":" not in text:
        return None
    kv, effect = text.rsplit(":", 1)
    if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not kv:
        return None
    key, _, value = kv.partition("=")
    taint = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return taint
