"""What users send to and get from the central service: request specs, control calls, and the
read-only views of requests, sites, pilots, status samples and events.

Validation happens here, field by field, so a malformed request is refused with the field named
(FastAPI answers 422 with the field's location; the CLI prints the same location).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
USER_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$"
MAX_WALLTIME_S = 30 * 86400

# kind -> (apiVersion, plural): what a workflow may create; all namespaced, none cluster-wide
WORKFLOW_KINDS: dict[str, tuple[str, str]] = {
    "Pod": ("v1", "pods"),
    "Service": ("v1", "services"),
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Job": ("batch/v1", "jobs"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "horizontalpodautoscalers"),
}

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Seconds from ``3600``, ``"3600"``, ``"1:00:00"``, ``"1-00:00:00"``, ``"90m"``, ``"1h30m"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is seconds or text such as 2h, 90m, 01:30:00")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){1,2}", text):
            days, _, clock = text.rpartition("-")
            parts = [int(p) for p in clock.split(":")]
            while len(parts) < 3:
                parts.insert(0, 0)
            h, m, s = parts
            if m >= 60 or s >= 60:
                raise ValueError(f"{value!r}: minutes and seconds must be below 60")
            seconds = (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s
        elif re.fullmatch(r"(\d+(\.\d+)?\s*(d|h|min|m|s)\s*)+", text):
            seconds = sum(
                float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|s)", text)
            )
        else:
            raise ValueError(f"{value!r} is not a duration (seconds, or e.g. 2h, 90m, 01:30:00, 1-00:00:00)")
    else:
        raise ValueError("a duration is seconds or text such as 2h, 90m, 01:30:00")
    return round(seconds)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvAction(_Strict):
    """Set one environment variable of a Deployment's container to the call's value (pods roll)."""

    name: str = Field(pattern=PARAM_NAME)
    kind: Literal["env"]
    deployment: str = Field(pattern=DNS_LABEL)
    container: str | None = Field(default=None, pattern=DNS_LABEL)
    env: str = Field(pattern=ENV_NAME)
    param: str = Field(default="value", pattern=PARAM_NAME, description="Key of the value in the call body.")


class ArgsAction(_Strict):
    """Replace a container's args; ``{value}`` in them stands for the call's value."""

    name: str = Field(pattern=PARAM_NAME)
    kind: Literal["args"]
    deployment: str = Field(pattern=DNS_LABEL)
    container: str | None = Field(default=None, pattern=DNS_LABEL)
    args: list[str] = Field(min_length=1)
    param: str = Field(default="value", pattern=PARAM_NAME)


class HttpAction(_Strict):
    """An HTTP call to the workflow itself: to its pods, to one of its Services, or to a ``url`` whose
    host is one of them. Any other host is refused when the action runs."""

    name: str = Field(pattern=PARAM_NAME)
    kind: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+(/\S*)?$")
    service: str | None = Field(default=None, pattern=DNS_LABEL)
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str = Field(default="/", pattern=r"^/\S*$")
    param: str = Field(default="value", pattern=PARAM_NAME)

    @model_validator(mode="after")
    def _target(self) -> HttpAction:
        if self.url is None and self.port is None and self.service is None:
            raise ValueError("an http action needs a url, a service or a port of the workflow's pods")
        if self.url is not None and (self.service is not None or self.port is not None):
            raise ValueError("give either url, or service/port, not both")
        return self


ActionSpec = Annotated[EnvAction | ArgsAction | HttpAction, Field(discriminator="kind")]


class HelmChart(_Strict):
    chart: str = Field(
        min_length=1, description="Chart directory (under the JCS's chart dirs), or oci:// ref."
    )
    version: str | None = None
    values: dict[str, Any] = Field(default_factory=dict)


class WorkflowSpec(_Strict):
    """Exactly one of: Kubernetes ``manifests`` (namespaced objects), or a ``helm`` chart."""

    manifests: list[dict[str, Any]] | None = None
    helm: HelmChart | None = None

    @model_validator(mode="after")
    def _one(self) -> WorkflowSpec:
        if (self.manifests is None) == (self.helm is None):
            raise ValueError("give exactly one of manifests or helm")
        if self.manifests is not None:
            if not self.manifests:
                raise ValueError("manifests is empty")
            seen: set[tuple[str, str]] = set()
            for i, obj in enumerate(self.manifests):
                check_manifest(obj, f"manifests[{i}]")
                key = (obj["kind"], obj["metadata"]["name"])
                if key in seen:
                    raise ValueError(f"manifests[{i}]: {key[0]} {key[1]!r} appears twice")
                seen.add(key)
        return self


def check_manifest(obj: Any, where: str) -> None:
    """Refuse objects a workflow may not create, with the place named."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not an object")
    kind = obj.get("kind")
    if kind not in WORKFLOW_KINDS:
        raise ValueError(
            f"{where}: kind {kind!r} is not allowed (allowed: {', '.join(sorted(WORKFLOW_KINDS))})"
        )
    api_version, _ = WORKFLOW_KINDS[kind]
    if obj.get("apiVersion") != api_version:
        raise ValueError(f"{where}: {kind} needs apiVersion {api_version!r}, not {obj.get('apiVersion')!r}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ValueError(f"{where}: metadata.name is missing")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", meta["name"]):
        raise ValueError(f"{where}: metadata.name {meta['name']!r} is not a valid Kubernetes name")


class RequestSpec(_Strict):
    """A workflow request as a user files it."""

    name: str = Field(pattern=DNS_LABEL, max_length=40)
    namespace: str = Field(default="default", pattern=DNS_LABEL)
    nodes: int = Field(default=1, ge=1, le=10_000)
    cpus_per_node: int = Field(default=1, ge=1, le=100_000)
    memory_mb_per_node: int = Field(default=1024, ge=1, le=100_000_000)
    node_type: str = Field(default="cpu", pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")
    sites: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,63}$")]] = Field(
        default_factory=list
    )
    walltime: int = Field(description="Seconds, or text such as 2h, 90m, 01:30:00.")
    deadline: datetime | None = None
    priority: int = Field(default=0, ge=-100, le=100)
    workflow: WorkflowSpec
    actions: list[ActionSpec] = Field(default_factory=list)
    metrics: dict[Annotated[str, Field(pattern=PARAM_NAME)], Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="Name -> PromQL; $namespace, $pods, $request are substituted."
    )
    activity_query: str | None = Field(default=None, min_length=1, description="PromQL; > 0 means active.")
    inactivity_timeout: int | None = Field(default=None, description="End the workflow when idle this long.")
    idle_cpu_cores: float = Field(default=0.01, ge=0)

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, value: object) -> int:
        seconds = parse_duration(value)
        if not 60 <= seconds <= MAX_WALLTIME_S:
            raise ValueError(f"walltime must be between 1 min and 30 d, not {seconds} s")
        return seconds

    @field_validator("inactivity_timeout", mode="before")
    @classmethod
    def _inactivity(cls, value: object) -> int | None:
        if value is None:
            return None
        seconds = parse_duration(value)
        if seconds < 10:
            raise ValueError("inactivity_timeout must be at least 10 s")
        return seconds

    @field_validator("deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a site appears twice")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RequestSpec:
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            raise ValueError("actions: two actions have the same name")
        builtin = {"scale", "resources", "stop"} & set(names)
        if builtin:
            raise ValueError(f"actions: {', '.join(sorted(builtin))} is a built-in action name")
        for obj in self.workflow.manifests or []:
            ns = obj["metadata"].get("namespace")
            if ns is not None and ns != self.namespace:
                raise ValueError(
                    f"workflow: {obj['kind']} {obj['metadata']['name']!r} is in namespace {ns!r}, "
                    f"the request's is {self.namespace!r}"
                )
        return self


class ActionCall(BaseModel):
    """``POST /api/v1/workflows/{id}/actions``: ``action`` names a built-in action (scale, resources,
    stop, set-threads) or one declared in the request; its parameters are further keys."""

    model_config = ConfigDict(extra="allow")

    action: str = Field(pattern=PARAM_NAME)
    reason: str = Field(default="", max_length=2000)
    source: str = Field(default="", max_length=200)

    def param(self, key: str) -> Any:
        extra = self.model_extra or {}
        return extra.get(key)


class ActionResult(BaseModel):
    action: str
    workflow: int
    ok: bool
    message: str
    event_id: int | None = None


class LeaseView(BaseModel):
    id: int
    pilot_id: str
    state: str
    nodes: list[str]
    remaining_s: float | None


class RequestView(BaseModel):
    id: int
    user: str
    name: str
    namespace: str
    state: str
    outcome: str | None
    reason: str
    nodes: int
    cpus_per_node: int
    memory_mb_per_node: int
    node_type: str
    sites: list[str]
    walltime_s: int
    deadline: datetime | None
    priority: int
    attempts: int
    workflow: dict[str, Any]
    actions: list[dict[str, Any]]
    metrics: dict[str, str]
    inactivity_timeout_s: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    leases: list[LeaseView] = Field(default_factory=list)


class ResourceView(BaseModel):
    partition: str
    node_type: str
    nodes_total: int
    nodes_free: int
    cpus_per_node: int
    memory_mb_per_node: int
    max_walltime_s: int | None
    queued_jobs: int
    scraped_at: datetime


class SiteView(BaseModel):
    name: str
    kind: str
    enabled: bool
    state: str
    last_error: str
    last_scrape_at: datetime | None
    resources: list[ResourceView]


class PilotView(BaseModel):
    id: str
    site: str
    partition: str
    node_type: str
    nodes: int
    state: str
    native_id: str
    node_names: list[str]
    walltime_s: int
    expires_at: datetime | None
    remaining_s: float | None
    leased_to: int | None
    last_error: str


class StatusView(BaseModel):
    at: datetime
    phase: str
    pods_total: int
    pods_pending: int
    pods_running: int
    pods_succeeded: int
    pods_failed: int
    restarts: int
    cpu_cores: float | None
    memory_bytes: float | None
    metrics: dict[str, Any]
    message: str


class EventView(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    subject_kind: str
    subject_id: str
    request_id: int | None
    message: str
    data: dict[str, Any]


class WhoAmI(BaseModel):
    user: str
    admin: bool
