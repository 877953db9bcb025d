"""The sites file: one entry per facility, saying how pilots reach it and how JRMs start there.

A sites file is YAML with a top-level ``sites`` mapping (see ``deploy/sites/example-sites.yaml``).
Every model forbids unknown keys, so a typo is an error naming the field, not a silent default.
:func:`load_sites` turns YAML and validation problems into one-line :class:`UserError` messages
such as ``sites.yaml: sites.perlmutter.control_plane.ssh.gateway: Field required``.

The central service (``jiriaf.jcs.facilities``) reads the same file: the keys it owns
(:data:`CENTRAL_SERVICE_KEYS`) are accepted and left to it, ``kind`` gives the default executor,
and ``kind: static`` sites (no batch system) are not pilot sites.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jiriaf.errors import UserError

# PSI/J executors whose batch systems pilots can use (names as psij.JobExecutor.get_instance takes them)
EXECUTORS = ("slurm", "pbs", "pbspro", "pbs_classic", "torque", "lsf", "flux", "cobalt", "local")
LAUNCH_METHODS = ("srun", "mpiexec", "jsrun", "flux", "local")
DEFAULT_LAUNCH = {
    "slurm": "srun",
    "pbs": "mpiexec",
    "pbspro": "mpiexec",
    "pbs_classic": "mpiexec",
    "torque": "mpiexec",
    "cobalt": "mpiexec",
    "lsf": "jsrun",
    "flux": "flux",
    "local": "local",
}
# keys of a site that belong to the central service's view of it (jiriaf.jcs.facilities.SiteConfig)
CENTRAL_SERVICE_KEYS = frozenset(
    {
        "kind",
        "node_type",
        "enabled",
        "partitions",
        "node_types",
        "command_prefix",
        "env",
        "max_nodes",
        "nodes",
        "cpus_per_node",
        "memory_mb_per_node",
        "max_walltime",
        "partition",
    }
)
NAME_FIELDS = frozenset({"site", "prefix", "pilot", "job", "task"})
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SITE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")


def default_sites_path() -> Path:
    """``$JIRIAF_SITES`` or ``$XDG_CONFIG_HOME/jiriaf/sites.yaml``."""
    explicit = os.environ.get("JIRIAF_SITES")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jiriaf" / "sites.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchDefaults(_Model):
    """Batch-system options every pilot of the site gets unless the request overrides them."""

    partition: str | None = Field(default=None, description="Partition or queue (PSI/J queue_name).")
    qos: str | None = Field(default=None, description="SLURM quality of service.")
    account: str | None = Field(default=None, description="Account or project charged.")
    constraint: str | None = Field(default=None, description="SLURM node feature constraint.")
    reservation: str | None = Field(default=None, description="Advance reservation.")
    max_walltime: int | None = Field(default=None, gt=0, description="Longest walltime allowed (s).")
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="More options of the batch system by long name (e.g. SLURM 'licenses': 'scratch').",
    )


class SSHTunnel(_Model):
    """SSH tunnels from each JRM to a gateway that reaches the apiserver (and that the control plane
    reaches the JRM's kubelet through)."""

    gateway: str = Field(description="Host the compute nodes can ssh to.")
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = Field(default=None, description="Private key on the compute nodes.")
    known_hosts: str | None = Field(
        default=None,
        description="known_hosts file (default ~/.ssh/known_hosts); host keys are always checked.",
    )
    jump: str | None = Field(default=None, description="[user@]host[:port] to hop through first.")
    apiserver: str | None = Field(
        default=None,
        description="host:port of the apiserver as the gateway sees it (default: from the kubeconfig).",
    )
    remote_bind: str = Field(
        default="127.0.0.1", description="Gateway address the reverse (kubelet) forwards listen on."
    )
    advertise_address: str = Field(
        default="127.0.0.1",
        description="Node InternalIP: where the control plane reaches the reverse-forwarded kubelet port.",
    )
    kubelet_bind: str = Field(
        default="127.0.0.1", description="Address the JRM's kubelet API listens on, on the compute node."
    )
    keepalive: float = Field(default=10.0, gt=0, description="Seconds between SSH keep-alives.")

    @field_validator("remote_bind", "advertise_address", "kubelet_bind")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("apiserver")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value


class ControlPlane(_Model):
    """How the JRMs on the site's compute nodes reach the Kubernetes control plane."""

    kubeconfig: str = Field(
        description="Kubeconfig path on the compute nodes (least privilege: rbac/jrm.yaml)."
    )
    mode: Literal["direct", "ssh"] = "direct"
    ssh: SSHTunnel | None = None
    node_ip: str = Field(
        default="auto",
        description="Direct mode: the node address the control plane reaches ('auto': the host's address).",
    )

    @model_validator(mode="after")
    def _ssh_when_tunnelled(self) -> ControlPlane:
        if self.mode == "ssh" and self.ssh is None:
            raise ValueError("mode 'ssh' needs an 'ssh' section (gateway, identity_file, ...)")
        if self.mode == "direct" and self.ssh is not None:
            raise ValueError("an 'ssh' section needs mode: ssh")
        if self.node_ip != "auto":
            ipaddress.ip_address(self.node_ip)
        return self


class Container(_Model):
    """A container image the JRM runs in on the compute nodes."""

    runtime: Literal["shifter", "apptainer", "singularity"]
    image: str
    options: list[str] = Field(default_factory=list, description="Extra arguments of the runtime.")


class JRMEnvironment(_Model):
    """How to prepare the JRM's environment on a node (applied in this order)."""

    modules: list[str] = Field(default_factory=list, description="Environment modules to load.")
    venv: str | None = Field(default=None, description="Virtualenv to activate (path on the nodes).")
    setup: list[str] = Field(default_factory=list, description="More shell lines run before the JRMs.")
    container: Container | None = None
    python: str | None = Field(
        default=None,
        description="Python on the nodes (default: python3 when modules/venv/container are set, "
        "else the launcher's own interpreter).",
    )
    workdir: str | None = Field(default=None, description="Root of the JRM work directories on the nodes.")
    env: dict[str, str] = Field(
        default_factory=dict, description="More JRM settings as environment variables."
    )


class JRMNodes(_Model):
    """Names, labels and ports of the JRM nodes."""

    prefix: str | None = Field(default=None, description="Node name prefix (default: the site name).")
    template: str = Field(
        default="{prefix}-{pilot}-{task}",
        description="Node name; fields {site} {prefix} {pilot} {job} {task}; must contain {task}.",
    )
    nodetype: str = Field(default="cpu", description="Value of the jiriaf.nodetype label.")
    labels: dict[str, str] = Field(default_factory=dict)
    kubelet_ports: tuple[int, int] = Field(
        default=(10250, 11249), description="Range the JRMs take their kubelet API port from."
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not _LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a lowercase DNS label (a-z, 0-9, '-')")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        fields = template_fields(value)
        unknown = fields - NAME_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; use {sorted(NAME_FIELDS)}")
        if "task" not in fields:
            raise ValueError("must contain {task} so the JRMs of one pilot get different names")
        if not fields & {"pilot", "job"}:
            raise ValueError("must contain {pilot} or {job} so pilots get different names")
        return value

    @field_validator("kubelet_ports")
    @classmethod
    def _ports(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError("must be [low, high] with 1024 <= low <= high <= 65535")
        return value


class Launch(_Model):
    """How the batch job starts one JRM task per slot."""

    method: Literal["srun", "mpiexec", "jsrun", "flux", "local"] | None = Field(
        default=None, description="Task launcher (default: srun for SLURM, local for the local executor...)."
    )
    jrms_per_node: int = Field(default=1, ge=1, le=64)
    options: list[str] = Field(default_factory=list, description="Extra arguments of the task launcher.")


class Site(_Model):
    """One facility."""

    name: str
    executor: str = Field(default="slurm", description="PSI/J executor: slurm, pbs, lsf, flux, local...")
    batch: BatchDefaults = Field(default_factory=BatchDefaults)
    control_plane: ControlPlane
    environment: JRMEnvironment = Field(default_factory=JRMEnvironment)
    jrm: JRMNodes = Field(default_factory=JRMNodes)
    launch: Launch = Field(default_factory=Launch)
    walltime_margin: int = Field(
        default=60, ge=0, description="Seconds the JRMs end before the job's walltime, to drain."
    )

    @model_validator(mode="before")
    @classmethod
    def _central_service_keys(cls, data: Any) -> Any:
        """Leave the central service's keys to it; its ``kind`` is the default executor."""
        if not isinstance(data, dict):
            return data
        kind = data.get("kind")
        data = {k: v for k, v in data.items() if k not in CENTRAL_SERVICE_KEYS}
        if "executor" not in data and kind in EXECUTORS:
            data["executor"] = kind
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SITE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a site name (lowercase letters, digits, '-', at most 32)")
        return value

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        if value not in EXECUTORS:
            raise ValueError(f"unknown executor {value!r}; use one of {', '.join(EXECUTORS)}")
        return value

    @model_validator(mode="after")
    def _slurm_only_options(self) -> Site:
        if self.executor != "slurm":
            used = [k for k in ("qos", "constraint") if getattr(self.batch, k)]
            if used:
                raise ValueError(
                    f"batch.{used[0]} is a SLURM option; for executor {self.executor} put it in batch.extra"
                )
        return self

    @property
    def node_prefix(self) -> str:
        return self.jrm.prefix or self.name

    @property
    def launch_method(self) -> str:
        return self.launch.method or DEFAULT_LAUNCH[self.executor]


class SitesFile(_Model):
    """The whole file."""

    sites: dict[str, Site]

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sites"), dict):
            sites = {}
            for key, value in data["sites"].items():
                if isinstance(value, dict) and value.get("kind") == "static":
                    continue  # an allocation the central service knows; no batch system to submit to
                if isinstance(value, dict):
                    if "name" in value and value["name"] != key:
                        raise ValueError(f"site {key!r} has name {value['name']!r}; leave 'name' out")
                    value = {**value, "name": key}
                sites[key] = value
            data = {**data, "sites": sites}
        return data

    def get(self, name: str) -> Site:
        """The site called ``name``, or a UserError listing the known ones."""
        site = self.sites.get(name)
        if site is None:
            known = ", ".join(sorted(self.sites)) or "none"
            raise UserError(f"no site {name!r} in the sites file (known: {known})")
        return site


def template_fields(template: str) -> set[str]:
    """The ``{field}`` names a node-name template uses."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from exc


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as a pair; ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def format_validation_error(exc: ValidationError, source: str, limit: int = 3) -> str:
    """One line naming each bad field (at most ``limit``) and what is wrong with it."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc or 'top level'}: {msg}")
    more = len(exc.errors()) - limit
    return f"{source}: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_sites(text: str, source: str = "sites file") -> SitesFile:
    """Parse and validate the YAML text of a sites file."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}{where}: not valid YAML ({problem})") from exc
    if not isinstance(data, dict) or "sites" not in data:
        raise UserError(f"{source}: expected a mapping with a top-level 'sites' key")
    try:
        return SitesFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from exc
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from exc


def load_sites(path: Path | None = None) -> SitesFile:
    """Read the sites file at ``path`` (default :func:`default_sites_path`)."""
    file = path or default_sites_path()
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise UserError(f"sites file {file} does not exist (pass --sites or set JIRIAF_SITES)") from None
    except OSError as exc:
        raise UserError(f"sites file {file} cannot be read: {exc.strerror}") from exc
    return parse_sites(text, file.name)


def local_site(kubeconfig: str, *, name: str = "local", node_ip: str = "127.0.0.1", **changes: Any) -> Site:
    """A site that runs pilots on this machine through PSI/J's local executor (the demo's site)."""
    data: dict[str, Any] = {
        "name": name,
        "executor": "local",
        "control_plane": {"kubeconfig": kubeconfig, "node_ip": node_ip},
        **changes,
    }
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, "local site")) from exc
