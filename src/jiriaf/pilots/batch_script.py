"""What a pilot job runs, as pure functions: the job script, the per-task specification, node
names, walltimes and batch options. No I/O here; :mod:`jiriaf.pilots.launcher` writes and submits
what these functions produce and :mod:`jiriaf.pilots.jrm_task` executes the task side.

A pilot is one batch job. Its script prepares the environment (modules, virtualenv, setup lines)
and starts ``nodes x jrms_per_node`` tasks with the site's task launcher (``srun`` on SLURM, plain
background processes for the local executor). Each task runs ``jiriaf pilot task``, which names its
node from the pilot and the task index, opens tunnels when the site needs them and runs one JRM
whose walltime ends ``walltime_margin`` seconds before the job's.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jiriaf.errors import UserError
from jiriaf.pilots.sites import BatchDefaults, Site

PILOT_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
JOB_NAME_PREFIX = "jiriaf-pilot-"
TASK_SPEC_ENV = "JIRIAF_PILOT_TASK"
MIN_JRM_SECONDS = 30
EXIT_FILE = "job.exit"
LABEL_PILOT = "jiriaf.pilot"
TASK_INDEX_VARS = (
    "JIRIAF_TASK_INDEX",
    "SLURM_PROCID",
    "PMI_RANK",
    "PMIX_RANK",
    "OMPI_COMM_WORLD_RANK",
    "FLUX_TASK_RANK",
    "JSM_NAMESPACE_RANK",
)
JOB_ID_VARS = ("JIRIAF_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID", "COBALT_JOBID")
# the prefix PSI/J's templates expect on custom attributes of each executor
CUSTOM_PREFIX = {"pbspro": "pbs", "pbs_classic": "pbs", "torque": "pbs"}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


# --------------------------------------------------------------------------- identifiers
def new_pilot_id() -> str:
    """A fresh pilot id: ``p`` and 8 hex digits."""
    return "p" + secrets.token_hex(4)


def check_pilot_id(text: str) -> str:
    """``text`` if it is a usable pilot id (lowercase DNS label, at most 32 characters)."""
    if not PILOT_ID.fullmatch(text):
        raise UserError(
            f"pilot id {text!r} is not valid: use at most 32 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return text


def job_name(pilot_id: str) -> str:
    """The batch job name of a pilot: how a re-run launcher finds the job it submitted."""
    return JOB_NAME_PREFIX + pilot_id


def dns_part(text: str) -> str:
    """``text`` made safe inside a DNS label (lowercase; other characters become '-')."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"


def node_name(template: str, *, site: str, prefix: str, pilot: str, job: str, task: int) -> str:
    """The node name of one JRM task; UserError when the result is not a valid node name."""
    name = template.format(site=site, prefix=prefix, pilot=pilot, job=dns_part(job), task=task)
    if len(name) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise UserError(f"node name {name!r} from template {template!r} is not a valid node name")
    return name


# --------------------------------------------------------------------------- time
def parse_duration(text: str) -> int:
    """Seconds in ``text``: ``180``, ``90s``, ``3m``, ``1h30m``, ``2d``, ``MM:SS``, ``HH:MM:SS`` or
    ``D-HH:MM:SS`` (the SLURM forms)."""
    raw = text.strip().lower()
    if not raw:
        raise UserError("empty duration")
    days = 0
    body = raw
    if "-" in raw:
        day_part, _, body = raw.partition("-")
        if not day_part.isdigit():
            raise UserError(f"duration {text!r} is not understood")
        days = int(day_part)
    if ":" in body:
        parts = body.split(":")
        if len(parts) > 3 or not all(p.isdigit() for p in parts):
            raise UserError(f"duration {text!r} is not understood (use HH:MM:SS)")
        nums = [int(p) for p in parts]
        while len(nums) < 3:
            nums.insert(0, 0)
        hours, minutes, seconds = nums
        return days * 86400 + hours * 3600 + minutes * 60 + seconds
    if days:
        if body and not body.isdigit():
            raise UserError(f"duration {text!r} is not understood")
        return days * 86400 + int(body or 0) * 3600  # SLURM "days-hours"
    m = _DURATION.fullmatch(body)
    if not m or not any(m.groups()):
        raise UserError(f"duration {text!r} is not understood (examples: 180, 3m, 1h30m, 00:03:00)")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


def batch_walltime(seconds: int, executor: str) -> int:
    """The walltime actually requested: batch systems count whole minutes, so round up."""
    if executor == "local":
        return seconds
    return int(math.ceil(seconds / 60) * 60)


def jrm_walltime(job_walltime: int, margin: int, job_start: float, now: float) -> int:
    """Seconds a JRM starting at ``now`` may live so it ends ``margin`` seconds before the job does."""
    return max(1, int(job_start + job_walltime - margin - now))


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class TaskSpec:
    """What every task of a pilot needs to start its JRM (travels as JSON in the job script)."""

    pilot_id: str
    site: str
    prefix: str
    template: str
    nodetype: str
    labels: dict[str, str]
    kubeconfig: str
    mode: str
    node_ip: str
    ssh: dict[str, Any] | None
    kubelet_ports: tuple[int, int]
    walltime: int
    margin: int
    idle_timeout: float
    workdir: str | None
    env: dict[str, str]
    pilot_dir: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        try:
            data = json.loads(text)
            data["kubelet_ports"] = tuple(data["kubelet_ports"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{TASK_SPEC_ENV} is not a pilot task specification: {exc}") from exc


@dataclass(frozen=True)
class PilotPlan:
    """One pilot, fully decided: everything the script and the batch request are made from."""

    pilot_id: str
    site: Site
    nodes: int
    jrms_per_node: int
    walltime: int
    idle_timeout: float
    pilot_dir: str
    launcher_python: str
    batch: BatchDefaults
    nodetype: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        return self.nodes * self.jrms_per_node

    @property
    def margin(self) -> int:
        return self.site.walltime_margin

    @property
    def job_name(self) -> str:
        return job_name(self.pilot_id)


def make_plan(
    site: Site,
    *,
    pilot_id: str,
    nodes: int,
    walltime: int,
    pilot_dir: str,
    launcher_python: str,
    jrms_per_node: int | None = None,
    idle_timeout: float = 0.0,
    nodetype: str | None = None,
    labels: Mapping[str, str] | None = None,
    batch: Mapping[str, str | None] | None = None,
) -> PilotPlan:
    """Check a pilot request against its site and decide everything about it."""
    check_pilot_id(pilot_id)
    if nodes < 1:
        raise UserError("a pilot needs at least one node")
    per_node = jrms_per_node if jrms_per_node is not None else site.launch.jrms_per_node
    if per_node < 1:
        raise UserError("jrms per node must be at least 1")
    if idle_timeout < 0:
        raise UserError("idle timeout cannot be negative")
    overrides = {k: v for k, v in (batch or {}).items() if v is not None}
    unknown = set(overrides) - {"partition", "qos", "account", "constraint", "reservation"}
    if unknown:
        raise UserError(f"unknown batch option(s): {', '.join(sorted(unknown))}")
    if site.executor != "slurm" and ({"qos", "constraint"} & set(overrides)):
        raise UserError(f"qos and constraint are SLURM options; site {site.name} uses {site.executor}")
    merged = site.batch.model_copy(update=overrides)
    requested = batch_walltime(walltime, site.executor)
    if merged.max_walltime is not None and requested > merged.max_walltime:
        raise UserError(f"walltime {requested}s exceeds the site's max_walltime of {merged.max_walltime}s")
    if requested - site.walltime_margin < MIN_JRM_SECONDS:
        raise UserError(
            f"walltime {requested}s leaves the JRMs less than {MIN_JRM_SECONDS}s after the "
            f"{site.walltime_margin}s drain margin; ask for more time"
        )
    all_labels = {**site.jrm.labels, **(labels or {})}
    for key in all_labels:
        if key == LABEL_PILOT:
            raise UserError(f"label {LABEL_PILOT} is set by the pilot itself")
    plan = PilotPlan(
        pilot_id=pilot_id,
        site=site,
        nodes=nodes,
        jrms_per_node=per_node,
        walltime=requested,
        idle_timeout=idle_timeout,
        pilot_dir=pilot_dir,
        launcher_python=launcher_python,
        batch=merged,
        nodetype=nodetype or site.jrm.nodetype,
        labels=all_labels,
    )
    # the longest name (last task, a long job id) must still be a valid node name
    node_name(
        site.jrm.template,
        site=site.name,
        prefix=site.node_prefix,
        pilot=pilot_id,
        job="1234567",
        task=plan.tasks - 1,
    )
    return plan


def expected_node_names(plan: PilotPlan, job_id: str | None) -> list[str]:
    """The node names the pilot's tasks will take ([] when they depend on an unknown job id)."""
    template = plan.site.jrm.template
    if "{job" in template and job_id is None:
        return []
    return [
        node_name(
            template,
            site=plan.site.name,
            prefix=plan.site.node_prefix,
            pilot=plan.pilot_id,
            job=job_id or "",
            task=i,
        )
        for i in range(plan.tasks)
    ]


def task_spec(plan: PilotPlan) -> TaskSpec:
    """The specification every task of ``plan`` receives."""
    site = plan.site
    cp = site.control_plane
    return TaskSpec(
        pilot_id=plan.pilot_id,
        site=site.name,
        prefix=site.node_prefix,
        template=site.jrm.template,
        nodetype=plan.nodetype,
        labels={**plan.labels, LABEL_PILOT: plan.pilot_id},
        kubeconfig=cp.kubeconfig,
        mode=cp.mode,
        node_ip=cp.node_ip,
        ssh=cp.ssh.model_dump() if cp.ssh is not None else None,
        kubelet_ports=site.jrm.kubelet_ports,
        walltime=plan.walltime,
        margin=plan.margin,
        idle_timeout=plan.idle_timeout,
        workdir=site.environment.workdir,
        env=dict(site.environment.env),
        pilot_dir=plan.pilot_dir,
    )


def python_on_nodes(site: Site, launcher_python: str) -> str:
    """The interpreter the tasks run: the site's, ``python3`` of a prepared environment, else ours."""
    env = site.environment
    if env.python:
        return env.python
    if env.modules or env.venv or env.container or env.setup:
        return "python3"
    return launcher_python


def task_argv(plan: PilotPlan) -> list[str]:
    """The command of one task: ``jiriaf pilot task``, inside the site's container if it has one."""
    argv = [python_on_nodes(plan.site, plan.launcher_python), "-m", "jiriaf.cli", "pilot", "task"]
    container = plan.site.environment.container
    if container is None:
        return argv
    if container.runtime == "shifter":
        return ["shifter", f"--image={container.image}", *container.options, "--", *argv]
    return [container.runtime, "exec", *container.options, container.image, *argv]


def launch_command(plan: PilotPlan) -> list[str]:
    """The task launcher's command line for the site's launch method (not for 'local')."""
    method = plan.site.launch_method
    n, k, total = plan.nodes, plan.jrms_per_node, plan.tasks
    extra = list(plan.site.launch.options)
    argv = task_argv(plan)
    if method == "srun":
        return [
            "srun",
            f"--nodes={n}",
            f"--ntasks={total}",
            f"--ntasks-per-node={k}",
            "--kill-on-bad-exit=0",
            *extra,
            *argv,
        ]
    if method == "mpiexec":
        return ["mpiexec", "-n", str(total), "-ppn", str(k), *extra, *argv]
    if method == "jsrun":
        return ["jsrun", f"--nrs={total}", f"--rs_per_host={k}", "--tasks_per_rs=1", *extra, *argv]
    if method == "flux":
        return ["flux", "run", f"--nodes={n}", f"--ntasks={total}", *extra, *argv]
    raise ValueError(f"no launch command for method {method!r}")


def batch_options(plan: PilotPlan) -> tuple[dict[str, str], dict[str, str]]:
    """PSI/J attributes of the job: ``(standard, custom)``.

    ``standard`` holds queue_name/account/reservation_id; ``custom`` holds executor-prefixed
    options (``slurm.qos``, the job name...) that PSI/J renders as directives of the batch script.
    """
    b = plan.batch
    standard = {
        k: v
        for k, v in (("queue_name", b.partition), ("account", b.account), ("reservation_id", b.reservation))
        if v
    }
    prefix = CUSTOM_PREFIX.get(plan.site.executor, plan.site.executor)
    custom: dict[str, str] = {}
    # PSI/J's templates do not render JobSpec.name: the job's name is set as a directive instead
    name_option = {"slurm": "job-name", "pbs": "N", "lsf": "J"}.get(prefix)
    if name_option:
        custom[f"{prefix}.{name_option}"] = plan.job_name
    if plan.site.executor == "slurm":
        if b.qos:
            custom["slurm.qos"] = b.qos
        if b.constraint:
            custom["slurm.constraint"] = b.constraint
    for key, value in b.extra.items():
        custom[f"{prefix}.{key}"] = value
    return standard, custom


def render_job_script(plan: PilotPlan) -> str:
    """The bash script the batch job runs.

    It records the job's start time (so each JRM's walltime ends ``margin`` seconds before the
    job's), prepares the environment, starts the tasks and waits for them; on SIGTERM it keeps
    waiting (local tasks get the signal forwarded) so the JRMs can drain. Its exit code is the
    tasks' and is also written to ``job.exit`` in the pilot directory.
    """
    q = shlex.quote
    site = plan.site
    env = site.environment
    pilot_dir = plan.pilot_dir
    lines = [
        "#!/bin/bash",
        f"# jiriaf pilot {plan.pilot_id} on site {site.name}: {plan.tasks} JRM(s) "
        f"({plan.nodes} node(s) x {plan.jrms_per_node})",
        "set -u",
        'export JIRIAF_JOB_START="$(date +%s)"',
        f'export JIRIAF_JOB_ID="{_job_id_expr()}"',
        f"export JIRIAF_PILOT_ID={q(plan.pilot_id)}",
        f"export {TASK_SPEC_ENV}={q(task_spec(plan).to_json())}",
        f"mkdir -p {q(pilot_dir)}/tasks",
        f'exec >>{q(pilot_dir)}/"job-$JIRIAF_JOB_ID.log" 2>&1',
        f'echo "pilot {plan.pilot_id}: job $JIRIAF_JOB_ID started on $(hostname) at $(date -u +%FT%TZ)"',
    ]
    for module in env.modules:
        lines.append(f"module load {q(module)}")
    if env.venv:  # double quotes: the node's variables ($SCRATCH...) expand
        lines.append(f"source {shell_path(env.venv.rstrip('/') + '/bin/activate')}")
    lines.extend(env.setup)
    lines.append(f"rm -f {q(pilot_dir)}/{EXIT_FILE}")
    if site.launch_method == "local":
        argv = " ".join(q(a) for a in task_argv(plan))
        lines += [
            "pids=()",
            f"for i in $(seq 0 {plan.tasks - 1}); do",
            f"  JIRIAF_TASK_INDEX=$i {argv} &",
            '  pids+=("$!")',
            "done",
            'trap \'echo "pilot: SIGTERM, stopping the JRMs"; kill -TERM "${pids[@]}" 2>/dev/null\' TERM',
            "rc=0",
            'for pid in "${pids[@]}"; do',
            '  while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done',
            '  wait "$pid"; code=$?',
            '  [ "$code" -gt "$rc" ] && rc=$code',
            "done",
        ]
    else:
        cmd = " ".join(q(a) for a in launch_command(plan))
        lines += [
            "trap 'echo \"pilot: SIGTERM, waiting for the JRMs to drain\"' TERM",
            f"{cmd} &",
            "launcher=$!",
            'while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done',
            'wait "$launcher"; rc=$?',
        ]
    lines += [
        f'echo "$rc" >{q(pilot_dir)}/{EXIT_FILE}',
        'echo "pilot: tasks ended with exit code $rc at $(date -u +%FT%TZ)"',
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def _job_id_expr() -> str:
    """``${SLURM_JOB_ID:-${PBS_JOBID:-...:-local-$$}}``: the batch system's job id, else the shell's pid."""
    names = JOB_ID_VARS[1:]
    return "".join("${" + n + ":-" for n in names) + "local-$$" + "}" * len(names)


def shell_path(path: str) -> str:
    """``path`` in double quotes for bash: ``$VAR`` expands, nothing else is interpreted; a
    leading ``~/`` becomes ``$HOME/``."""
    if path.startswith("~/"):
        path = "$HOME/" + path[2:]
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return f'"{escaped}"'


def expand_path(path: str) -> str:
    """``$VAR`` and ``~`` in a path from the sites file, expanded on the node."""
    return str(Path(os.path.expandvars(path)).expanduser())


def task_identity(env: Mapping[str, str]) -> tuple[str, int]:
    """``(job id, task index)`` of the running task from the batch system's variables."""
    job = next((env[v] for v in JOB_ID_VARS if env.get(v)), "")
    index_text = next((env[v] for v in TASK_INDEX_VARS if env.get(v)), None)
    if not job:
        raise UserError("no job id in the environment: 'jiriaf pilot task' runs inside a pilot job")
    if index_text is None or not index_text.isdigit():
        raise UserError("no task index in the environment (SLURM_PROCID, PMI_RANK, JIRIAF_TASK_INDEX...)")
    return job, int(index_text)


def jrm_environment(
    spec: TaskSpec,
    *,
    node: str,
    kubeconfig: str,
    node_ip: str,
    kubelet_port: int,
    kubelet_bind: str | None,
    walltime: int,
    job_id: str,
) -> dict[str, str]:
    """The variables a task gives its JRM (the original JIRIAF names where they exist)."""
    env = {
        **spec.env,
        "NODENAME": node,
        "KUBECONFIG": expand_path(kubeconfig),
        "VKUBELET_POD_IP": node_ip,
        "KUBELET_PORT": str(kubelet_port),
        "JIRIAF_WALLTIME": str(walltime),
        "JIRIAF_NODETYPE": spec.nodetype,
        "JIRIAF_SITE": spec.site,
        "JIRIAF_LABELS": json.dumps({**spec.labels, "jiriaf.pilot-job": dns_part(job_id)}, sort_keys=True),
    }
    if spec.idle_timeout > 0:
        env["JIRIAF_IDLE_TIMEOUT"] = str(spec.idle_timeout)
    if kubelet_bind:
        env["JIRIAF_KUBELET_BIND"] = kubelet_bind
    if spec.workdir:
        env["JIRIAF_WORKDIR"] = expand_path(spec.workdir.rstrip("/")) + "/" + node
    return env


def port_candidates(lo: int, hi: int, task: int, seed: int = 0) -> list[int]:
    """Every port of ``[lo, hi]``, starting at an offset that differs between tasks, so tasks on
    one host rarely try the same port first."""
    span = hi - lo + 1
    start = (task * 7 + seed) % span
    return [lo + (start + i) % span for i in range(span)]
