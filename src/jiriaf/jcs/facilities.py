"""The facility manager (JFM): what each site has free, scraped periodically into ``resources``.

Three kinds of site:

* ``slurm``: ``sinfo`` gives idle nodes, CPUs, memory and the time limit per partition, ``squeue``
  the pending jobs per partition; both run locally or behind ``command_prefix`` (e.g. an ``ssh``
  command to a login node), with the site's ``env`` (e.g. ``SLURM_CONF``);
* ``local``: this host, able to run ``max_nodes`` JRMs, each with the host's CPUs and memory;
* ``static``: a fixed allocation written in the configuration.

A site whose scrape fails is marked ``unreachable`` with the error, its resources are removed, and
the matcher does not use it until a scrape succeeds again. Parsing is pure and unit-tested; only
:func:`run_command` and :class:`FacilityManager` do I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import psutil
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from jiriaf.errors import UserError
from jiriaf.jcs import trail
from jiriaf.jcs.db import Database
from jiriaf.jcs.models import Resource, Site, SiteState, utcnow
from jiriaf.jcs.schemas import parse_duration

log = logging.getLogger(__name__)

SINFO_FORMAT = "%P|%a|%l|%D|%T|%c|%m|%f"
SINFO_ARGS = ("sinfo", "--noheader", f"--format={SINFO_FORMAT}")
SQUEUE_ARGS = ("squeue", "--noheader", "--states=PENDING", "--format=%P")


# the pilot launcher's keys of a site in the shared sites file (``jiriaf.pilots.sites``)
PILOT_KEYS = frozenset(
    {"executor", "batch", "control_plane", "environment", "jrm", "launch", "walltime_margin"}
)


class SiteConfig(BaseModel):
    """How the facility manager sees one site (unknown keys are errors; the pilot launcher's keys of
    the shared sites file are read by it, see :func:`parse_sites`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,63}$")
    kind: Literal["slurm", "local", "static"]
    node_type: str = "cpu"
    enabled: bool = True
    # slurm
    partitions: list[str] = Field(default_factory=list, description="Only these partitions (default: all).")
    node_types: dict[str, str] = Field(
        default_factory=dict, description="Partition or node feature -> node type."
    )
    command_prefix: list[str] = Field(default_factory=list, description="E.g. ['ssh', 'login.example'].")
    env: dict[str, str] = Field(default_factory=dict)
    # local and static
    max_nodes: int = Field(default=1, ge=0, description="local: JRMs this host may run at once.")
    nodes: int = Field(default=0, ge=0, description="static: nodes of the allocation.")
    cpus_per_node: int = Field(default=0, ge=0)
    memory_mb_per_node: int = Field(default=0, ge=0)
    max_walltime: int | None = Field(default=None, description="Longest pilot (seconds or e.g. 12h).")
    partition: str = Field(default="", description="local/static: the partition name pilots are given.")

    @field_validator("max_walltime", mode="before")
    @classmethod
    def _walltime(cls, value: object) -> int | None:
        return None if value is None else parse_duration(value)


def load_sites_file(path: Path) -> list[SiteConfig]:
    """Sites from YAML: ``sites:`` as a list of site mappings, or as a mapping name -> site."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read sites file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"sites file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_sites(doc, str(path))


def _from_pilot_keys(body: dict[str, Any]) -> dict[str, Any]:
    """A site entry of the shared sites file with the pilot launcher's keys turned into defaults:
    ``kind`` from ``executor``, partitions, node type and walltime limit from ``batch``/``jrm``."""
    out = {k: v for k, v in body.items() if k not in PILOT_KEYS}
    executor = body.get("executor")
    if "kind" not in out and executor is not None:
        out["kind"] = "slurm" if executor == "slurm" else "local" if executor == "local" else executor
    batch = body.get("batch") or {}
    jrm = body.get("jrm") or {}
    if isinstance(batch, dict):
        if batch.get("partition") and out.get("kind") == "slurm":
            out.setdefault("partitions", [batch["partition"]])
        elif batch.get("partition"):
            out.setdefault("partition", batch["partition"])
        if batch.get("max_walltime"):
            out.setdefault("max_walltime", batch["max_walltime"])
    if isinstance(jrm, dict) and jrm.get("nodetype"):
        out.setdefault("node_type", jrm["nodetype"])
    return out


def parse_sites(doc: Any, where: str = "sites") -> list[SiteConfig]:
    """Sites from a parsed document: ``sites:`` (a mapping name -> site, or a list of sites). Entries
    of a shared sites file (with the pilot launcher's keys) are accepted; a site whose batch system
    the facility manager cannot scrape (not slurm, local or static) is left out."""
    raw = doc.get("sites") if isinstance(doc, dict) and "sites" in doc else doc
    if isinstance(raw, dict):
        items = [{"name": name, **(body or {})} for name, body in raw.items()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise UserError(f"{where}: expected 'sites:' with a list or mapping of sites")
    out: list[SiteConfig] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}: site {i} is not a mapping")
        body = _from_pilot_keys(item)
        if body.get("kind") not in (None, "slurm", "local", "static") and "executor" in item:
            continue  # a pilot site of another batch system: pilots only, nothing to scrape
        try:
            out.append(SiteConfig.model_validate(body))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise UserError(f"{where}: site {item.get('name', i)}: {loc}: {err['msg']}") from None
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: a site name appears twice")
    return out


# ----------------------------------------------------------------------------- pure parsing


@dataclass(frozen=True)
class Capacity:
    """What a scrape found for one partition (or host): one ``resources`` row."""

    partition: str
    node_type: str
    nodes_total: int
    nodes_free: int
    cpus_per_node: int
    memory_mb_per_node: int
    max_walltime_s: int | None
    queued_jobs: int = 0


def parse_slurm_time(text: str) -> int | None:
    """A SLURM time limit in seconds; None for ``infinite``/``UNLIMITED``."""
    t = text.strip()
    if t.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in t:
        d, _, t = t.partition("-")
        days = int(d)
    parts = [int(p) for p in t.split(":")]
    if len(parts) == 1:  # minutes
        seconds = parts[0] * 60
    elif len(parts) == 2:  # minutes:seconds
        seconds = parts[0] * 60 + parts[1]
    elif len(parts) == 3:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        raise ValueError(f"not a SLURM time: {text!r}")
    return days * 86400 + seconds


def _number(text: str) -> int:
    """``8``, ``8+`` (the smallest of varying values) -> 8."""
    return int(text.strip().rstrip("+") or 0)


def _is_free(state: str) -> bool:
    """Idle and usable: ``idle`` (or powered-down cloud ``idle~``), but not ``idle*`` (not responding),
    ``idle#`` (powering up), drained, reserved, etc."""
    return state in ("idle", "idle~")


def parse_sinfo(
    text: str,
    default_type: str = "cpu",
    node_types: Mapping[str, str] | None = None,
    partitions: Sequence[str] = (),
    pending: Mapping[str, int] | None = None,
) -> list[Capacity]:
    """Rows of ``sinfo --format='%P|%a|%l|%D|%T|%c|%m|%f'`` grouped into capacities.

    Partitions that are not ``up`` are left out; the node type is ``node_types[partition]``, else
    ``node_types[feature]`` for the first feature listed there, else ``default_type``.
    """
    types = dict(node_types or {})
    groups: dict[tuple[str, str, int, int], list[int]] = defaultdict(lambda: [0, 0])
    limits: dict[str, int | None] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 8:
            raise ValueError(f"sinfo line {lineno}: expected 8 fields, got {len(fields)}: {line!r}")
        part, avail, limit, count, state, cpus, mem, features = fields
        part = part.rstrip("*")
        if partitions and part not in partitions:
            continue
        if avail.strip().lower() != "up":
            continue
        feats = [f for f in features.split(",") if f and f != "(null)"]
        ntype = types.get(part) or next((types[f] for f in feats if f in types), default_type)
        key = (part, ntype, _number(cpus), _number(mem))
        n = int(count)
        groups[key][0] += n
        if _is_free(state.strip().lower()):
            groups[key][1] += n
        limits[part] = parse_slurm_time(limit)
    queued = dict(pending or {})
    return [
        Capacity(
            partition=part,
            node_type=ntype,
            nodes_total=total,
            nodes_free=free,
            cpus_per_node=cpus,
            memory_mb_per_node=mem,
            max_walltime_s=limits[part],
            queued_jobs=queued.get(part, 0),
        )
        for (part, ntype, cpus, mem), (total, free) in sorted(groups.items())
    ]


def parse_squeue_pending(text: str) -> dict[str, int]:
    """Pending jobs per partition from ``squeue --states=PENDING --format=%P`` (a job submitted to
    several partitions counts in each)."""
    counts: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        for part in line.strip().split(","):
            if part:
                counts[part] += 1
    return dict(counts)


def local_capacity(cfg: SiteConfig) -> Capacity:
    """This host: ``max_nodes`` JRMs, each offered the host's CPUs and available memory."""
    cpus = cfg.cpus_per_node or (os.cpu_count() or 1)
    memory = cfg.memory_mb_per_node or psutil.virtual_memory().available // (1024 * 1024)
    return Capacity(
        partition=cfg.partition,
        node_type=cfg.node_type,
        nodes_total=cfg.max_nodes,
        nodes_free=cfg.max_nodes,
        cpus_per_node=cpus,
        memory_mb_per_node=int(memory),
        max_walltime_s=cfg.max_walltime,
    )


def static_capacity(cfg: SiteConfig) -> Capacity:
    return Capacity(
        partition=cfg.partition,
        node_type=cfg.node_type,
        nodes_total=cfg.nodes,
        nodes_free=cfg.nodes,
        cpus_per_node=cfg.cpus_per_node,
        memory_mb_per_node=cfg.memory_mb_per_node,
        max_walltime_s=cfg.max_walltime,
    )


# ----------------------------------------------------------------------------- I/O


class ScrapeError(Exception):
    """A site could not be scraped; the message says why, in one line."""


async def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> str:
    """Run a scrape command; its stdout, or :class:`ScrapeError` with the reason."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
        )
    except FileNotFoundError:
        raise ScrapeError(f"{argv[0]}: command not found") from None
    except OSError as exc:
        raise ScrapeError(f"{argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ScrapeError(f"{argv[0]} did not answer within {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ScrapeError(f"{argv[0]} failed: {detail[:300]}")
    return out.decode(errors="replace")


async def scrape_slurm(cfg: SiteConfig, timeout: float = 30.0) -> list[Capacity]:
    prefix = list(cfg.command_prefix)
    sinfo = await run_command([*prefix, *SINFO_ARGS], cfg.env, timeout)
    squeue = await run_command([*prefix, *SQUEUE_ARGS], cfg.env, timeout)
    try:
        return parse_sinfo(sinfo, cfg.node_type, cfg.node_types, cfg.partitions, parse_squeue_pending(squeue))
    except ValueError as exc:
        raise ScrapeError(f"unexpected sinfo output: {exc}") from None


async def scrape(cfg: SiteConfig, timeout: float = 30.0) -> list[Capacity]:
    """What the site has now (raises :class:`ScrapeError`)."""
    if cfg.kind == "slurm":
        return await scrape_slurm(cfg, timeout)
    if cfg.kind == "local":
        return [local_capacity(cfg)]
    return [static_capacity(cfg)]


def site_config(site: Site) -> SiteConfig:
    return SiteConfig.model_validate({**site.config, "name": site.name, "kind": site.kind})


class FacilityManager:
    """Keeps the ``sites`` and ``resources`` tables current."""

    def __init__(self, db: Database, interval: float = 60.0, timeout: float = 30.0) -> None:
        self.db = db
        self.interval = interval
        self.timeout = timeout

    async def load(self, configs: Sequence[SiteConfig], actor: str = trail.SYSTEM) -> None:
        """Insert or update the given sites (sites not listed are left as they are)."""
        async with self.db.session() as s:
            for cfg in configs:
                body = cfg.model_dump(mode="json", exclude={"name", "kind", "enabled"})
                site = (await s.execute(select(Site).where(Site.name == cfg.name))).scalar_one_or_none()
                if site is None:
                    s.add(Site(name=cfg.name, kind=cfg.kind, config=body, enabled=cfg.enabled))
                    trail.record(s, actor, "site.added", "site", cfg.name, f"{cfg.kind} site {cfg.name}")
                elif (site.kind, site.config, site.enabled) != (cfg.kind, body, cfg.enabled):
                    site.kind, site.config, site.enabled = cfg.kind, body, cfg.enabled
                    trail.record(s, actor, "site.updated", "site", cfg.name, f"{cfg.kind} site {cfg.name}")
            await s.commit()

    async def scrape_site(self, name: str, actor: str = trail.SYSTEM) -> Site:
        """Scrape one site now and store the result (an unreachable site is stored as such)."""
        async with self.db.session() as s:
            site = (await s.execute(select(Site).where(Site.name == name))).scalar_one_or_none()
            if site is None:
                raise UserError(f"no site {name!r}")
            cfg = site_config(site)
        error = ""
        found: list[Capacity] = []
        try:
            found = await scrape(cfg, self.timeout)
        except ScrapeError as exc:
            error = str(exc)
        async with self.db.session() as s:
            site = (await s.execute(select(Site).where(Site.name == name))).scalar_one()
            await self._store(s, site, found, error, actor)
            await s.commit()
            await s.refresh(site, ["resources"])
            return site

    async def _store(
        self, s: AsyncSession, site: Site, found: list[Capacity], error: str, actor: str
    ) -> None:
        now = utcnow()
        before = site.state
        await s.execute(delete(Resource).where(Resource.site_id == site.id))
        site.last_scrape_at = now
        if error:
            site.state = SiteState.UNREACHABLE.value
            site.last_error = error
        else:
            site.state = SiteState.OK.value
            site.last_error = ""
            for c in found:
                s.add(
                    Resource(
                        site_id=site.id,
                        partition=c.partition,
                        node_type=c.node_type,
                        nodes_total=c.nodes_total,
                        nodes_free=c.nodes_free,
                        cpus_per_node=c.cpus_per_node,
                        memory_mb_per_node=c.memory_mb_per_node,
                        max_walltime_s=c.max_walltime_s,
                        queued_jobs=c.queued_jobs,
                        scraped_at=now,
                    )
                )
        if before != site.state or actor != trail.SYSTEM:
            free = sum(c.nodes_free for c in found)
            message = (
                f"site {site.name} is unreachable: {error}"
                if error
                else f"site {site.name} scraped: {free} free node{'s' if free != 1 else ''} in "
                f"{len(found)} partition{'s' if len(found) != 1 else ''}"
            )
            trail.record(
                s,
                actor,
                "site.unreachable" if error else "site.scraped",
                "site",
                site.name,
                message,
                data={"state": site.state, "previous": before},
            )

    async def scrape_due(self) -> list[str]:
        """Scrape every enabled site not scraped within the interval; the names scraped."""
        cutoff = utcnow() - timedelta(seconds=self.interval)
        async with self.db.session() as s:
            rows = (await s.execute(select(Site).where(Site.enabled.is_(True)))).scalars().all()
            due = [r.name for r in rows if r.last_scrape_at is None or r.last_scrape_at <= cutoff]
        results = await asyncio.gather(*(self.scrape_site(n) for n in due), return_exceptions=True)
        for name, res in zip(due, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("scraping site %s failed: %s", name, res)
        return due
