"""The pure side of a pilot job: durations, walltimes, node names, plans, batch options, launch
commands, the job script and the JRM's environment."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jiriaf.errors import UserError
from jiriaf.pilots import batch_script as bs
from jiriaf.pilots.sites import Site, parse_sites

pytestmark = pytest.mark.unit


def site(**changes: Any) -> Site:
    data: dict[str, Any] = {
        "name": "ci",
        "control_plane": {"kubeconfig": "/k/config", "node_ip": "127.0.0.1"},
    }
    data.update(changes)
    return Site.model_validate(data)


def plan(s: Site | None = None, **kw: Any) -> bs.PilotPlan:
    args: dict[str, Any] = {
        "pilot_id": "p1",
        "nodes": 1,
        "walltime": 180,
        "pilot_dir": "/data/pilots/p1",
        "launcher_python": "/usr/bin/python3.11",
    }
    args.update(kw)
    return bs.make_plan(s or site(), **args)


# --------------------------------------------------------------------------- durations
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("180", 180),
        ("90s", 90),
        ("3m", 180),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1h", 3600),
        ("05:00", 300),
        ("00:03:00", 180),
        ("1-00:00:00", 86400),
        ("2-3", 2 * 86400 + 3 * 3600),
        (" 3M ", 180),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert bs.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "x-01:00", "3 minutes", "1:a", "m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError):
        bs.parse_duration(text)


def test_batch_walltime_rounds_up_to_minutes_except_local() -> None:
    assert bs.batch_walltime(180, "slurm") == 180
    assert bs.batch_walltime(181, "slurm") == 240
    assert bs.batch_walltime(1, "pbs") == 60
    assert bs.batch_walltime(181, "local") == 181


def test_jrm_walltime_ends_margin_before_the_job() -> None:
    # the job started at t=1000 with 180 s; a JRM starting at t=1005 with a 60 s margin lives 115 s
    assert bs.jrm_walltime(180, 60, job_start=1000.0, now=1005.0) == 115
    assert 1005 + bs.jrm_walltime(180, 60, 1000.0, 1005.0) == 1000 + 180 - 60
    assert bs.jrm_walltime(180, 60, job_start=1000.0, now=1200.0) == 1  # never 0 (0 means no limit)


# --------------------------------------------------------------------------- names
def test_pilot_ids() -> None:
    generated = bs.new_pilot_id()
    assert bs.check_pilot_id(generated) == generated
    assert generated != bs.new_pilot_id()
    for bad in ("", "Upper", "-x", "x-", "a" * 33, "a_b"):
        with pytest.raises(UserError, match="pilot id"):
            bs.check_pilot_id(bad)
    assert bs.job_name("p1") == "jiriaf-pilot-p1"


def test_node_names() -> None:
    assert bs.node_name("{prefix}-{pilot}-{task}", site="s", prefix="nersc", pilot="p1", job="9", task=3) == (
        "nersc-p1-3"
    )
    assert bs.node_name(
        "{site}-{job}-{task}", site="s", prefix="x", pilot="p", job="123.PBS-srv", task=0
    ) == ("s-123-pbs-srv-0")
    with pytest.raises(UserError, match="not a valid node name"):
        bs.node_name("{prefix}-{pilot}-{task}", site="s", prefix="x" * 60, pilot="p1", job="1", task=0)


def test_dns_part() -> None:
    assert bs.dns_part("12345") == "12345"
    assert bs.dns_part("77.server.example") == "77-server-example"
    assert bs.dns_part("___") == "x"


# --------------------------------------------------------------------------- plans
def test_plan_combines_site_and_request() -> None:
    s = site(batch={"partition": "debug", "account": "a1"}, jrm={"nodetype": "cpu", "labels": {"x": "1"}})
    p = plan(s, nodes=2, jrms_per_node=2, labels={"y": "2"}, batch={"account": "a2", "qos": None})
    assert p.tasks == 4
    assert p.batch.partition == "debug" and p.batch.account == "a2"
    assert p.labels == {"x": "1", "y": "2"}
    assert p.nodetype == "cpu"
    assert p.margin == 60
    assert p.job_name == "jiriaf-pilot-p1"
    assert bs.expected_node_names(p, None) == ["ci-p1-0", "ci-p1-1", "ci-p1-2", "ci-p1-3"]


def test_names_from_the_job_id_are_known_only_after_submission() -> None:
    p = plan(site(jrm={"template": "{prefix}-{job}-{task}"}), jrms_per_node=2)
    assert bs.expected_node_names(p, None) == []
    assert bs.expected_node_names(p, "42") == ["ci-42-0", "ci-42-1"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"walltime": 60}, "less than 30s"),
        ({"nodes": 0}, "at least one node"),
        ({"jrms_per_node": 0}, "at least 1"),
        ({"idle_timeout": -1}, "negative"),
        ({"pilot_id": "Bad"}, "pilot id"),
        ({"batch": {"colour": "red"}}, "unknown batch option"),
        ({"labels": {"jiriaf.pilot": "x"}}, "set by the pilot"),
        ({"walltime": 7200}, "max_walltime"),
    ],
)
def test_plan_refuses(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        plan(site(batch={"max_walltime": 3600}), **kw)


def test_slurm_only_options_refused_elsewhere() -> None:
    with pytest.raises(UserError, match="SLURM options"):
        plan(site(executor="pbs"), batch={"qos": "debug"})


def test_walltime_is_the_rounded_request() -> None:
    assert plan(walltime=150).walltime == 180
    assert plan(site(executor="local"), walltime=150).walltime == 150


# --------------------------------------------------------------------------- batch options
def test_slurm_batch_options() -> None:
    s = site(
        batch={
            "partition": "debug",
            "qos": "q",
            "constraint": "cpu",
            "account": "a",
            "extra": {"licenses": "l"},
        }
    )
    standard, custom = bs.batch_options(plan(s))
    assert standard == {"queue_name": "debug", "account": "a"}
    assert custom == {
        "slurm.job-name": "jiriaf-pilot-p1",
        "slurm.qos": "q",
        "slurm.constraint": "cpu",
        "slurm.licenses": "l",
    }


@pytest.mark.parametrize(("executor", "key"), [("pbspro", "pbs.N"), ("torque", "pbs.N"), ("lsf", "lsf.J")])
def test_other_batch_systems_name_the_job(executor: str, key: str) -> None:
    s = site(executor=executor, batch={"reservation": "r", "extra": {"l": "walltime"}})
    standard, custom = bs.batch_options(plan(s))
    assert standard == {"reservation_id": "r"}
    assert custom[key] == "jiriaf-pilot-p1"
    assert custom[key.split(".")[0] + ".l"] == "walltime"


# --------------------------------------------------------------------------- commands
def test_srun_starts_one_task_per_jrm() -> None:
    p = plan(site(launch={"options": ["--cpu-bind=none"]}), nodes=2, jrms_per_node=3)
    cmd = bs.launch_command(p)
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks=6", "--ntasks-per-node=3", "--kill-on-bad-exit=0"]
    assert cmd[5] == "--cpu-bind=none"
    assert cmd[6:] == ["/usr/bin/python3.11", "-m", "jiriaf.cli", "pilot", "task"]


@pytest.mark.parametrize(
    ("method", "head"),
    [
        ("mpiexec", ["mpiexec", "-n", "4", "-ppn", "2"]),
        ("jsrun", ["jsrun", "--nrs=4", "--rs_per_host=2", "--tasks_per_rs=1"]),
        ("flux", ["flux", "run", "--nodes=2", "--ntasks=4"]),
    ],
)
def test_other_launch_methods(method: str, head: list[str]) -> None:
    cmd = bs.launch_command(plan(site(launch={"method": method}), nodes=2, jrms_per_node=2))
    assert cmd[: len(head)] == head
    assert cmd[-2:] == ["pilot", "task"]


def test_local_has_no_launch_command() -> None:
    with pytest.raises(ValueError, match="local"):
        bs.launch_command(plan(site(executor="local")))


def test_environment_and_container_choose_the_python() -> None:
    assert bs.python_on_nodes(site(), "/opt/py") == "/opt/py"
    assert bs.python_on_nodes(site(environment={"venv": "/v"}), "/opt/py") == "python3"
    assert (
        bs.python_on_nodes(site(environment={"modules": ["m"], "python": "python3.12"}), "/x") == "python3.12"
    )
    shifter = site(
        environment={"container": {"runtime": "shifter", "image": "img:1", "options": ["--module=gpu"]}}
    )
    assert bs.task_argv(plan(shifter)) == [
        "shifter",
        "--image=img:1",
        "--module=gpu",
        "--",
        "python3",
        "-m",
        "jiriaf.cli",
        "pilot",
        "task",
    ]
    apptainer = site(environment={"container": {"runtime": "apptainer", "image": "/i.sif"}})
    assert bs.task_argv(plan(apptainer))[:4] == ["apptainer", "exec", "/i.sif", "python3"]


# --------------------------------------------------------------------------- the script
def test_slurm_script() -> None:
    s = site(environment={"modules": ["python/3.11"], "venv": "$SCRATCH/venv", "setup": ["ulimit -n 4096"]})
    p = plan(s, jrms_per_node=2)
    text = bs.render_job_script(p)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert 'export JIRIAF_JOB_START="$(date +%s)"' in lines
    assert any(line.startswith('export JIRIAF_JOB_ID="${SLURM_JOB_ID:-') for line in lines)
    assert "module load python/3.11" in lines
    assert 'source "$SCRATCH/venv/bin/activate"' in lines
    assert "ulimit -n 4096" in lines
    srun = next(line for line in lines if line.startswith("srun "))
    assert "--ntasks=2" in srun and srun.endswith("python3 -m jiriaf.cli pilot task &")
    # the order matters: environment before the tasks, exit file after them
    assert lines.index("module load python/3.11") < lines.index(srun)
    # job.exit is removed before the tasks start and written after they end
    assert text.index("job.exit") < text.index(srun) < text.rindex("job.exit")
    spec_line = next(line for line in lines if line.startswith(f"export {bs.TASK_SPEC_ENV}="))
    assert "'" in spec_line  # single-quoted JSON


def test_script_carries_the_task_spec() -> None:
    p = plan(site(executor="local"), idle_timeout=30)
    text = bs.render_job_script(p)
    spec_line = next(line for line in text.splitlines() if line.startswith(f"export {bs.TASK_SPEC_ENV}="))
    quoted = spec_line.split("=", 1)[1]
    spec = bs.TaskSpec.from_json(quoted.strip("'"))
    assert spec == bs.task_spec(p)
    assert spec.labels == {"jiriaf.pilot": "p1"}
    assert spec.idle_timeout == 30
    assert spec.walltime == 180 and spec.margin == 60


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("executor", ["slurm", "local"])
def test_scripts_are_valid_bash(executor: str, tmp_path: Path) -> None:
    text = bs.render_job_script(plan(site(executor=executor, environment={"venv": '/we"ird `x`'}), nodes=2))
    script = tmp_path / "job.sh"
    script.write_text(text)
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_local_script_runs_every_task_and_reports_the_worst_exit(tmp_path: Path) -> None:
    """The local script's task loop, run for real with a stand-in for the python interpreter."""
    fake_python = tmp_path / "python"
    fake_python.write_text(
        '#!/bin/bash\necho "task $JIRIAF_TASK_INDEX args $*"\nexit $((JIRIAF_TASK_INDEX * 3))\n'
    )
    fake_python.chmod(0o755)
    p = bs.make_plan(
        site(executor="local"),
        pilot_id="p1",
        nodes=3,
        walltime=120,
        pilot_dir=str(tmp_path / "pilot"),
        launcher_python=str(fake_python),
    )
    script = tmp_path / "job.sh"
    script.write_text(bs.render_job_script(p))
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 6
    assert (tmp_path / "pilot" / bs.EXIT_FILE).read_text().strip() == "6"
    log = next((tmp_path / "pilot").glob("job-local-*.log")).read_text()
    for i in range(3):
        assert f"task {i} args -m jiriaf.cli pilot task" in log
    assert "tasks ended with exit code 6" in log


# --------------------------------------------------------------------------- the task side
def test_task_identity_from_batch_variables() -> None:
    assert bs.task_identity({"SLURM_JOB_ID": "7", "SLURM_PROCID": "1"}) == ("7", 1)
    assert bs.task_identity({"JIRIAF_JOB_ID": "local-5", "JIRIAF_TASK_INDEX": "0", "SLURM_PROCID": "3"}) == (
        "local-5",
        0,
    )
    assert bs.task_identity({"PBS_JOBID": "9.srv", "PMI_RANK": "2"}) == ("9.srv", 2)
    with pytest.raises(UserError, match="no job id"):
        bs.task_identity({"SLURM_PROCID": "0"})
    with pytest.raises(UserError, match="no task index"):
        bs.task_identity({"SLURM_JOB_ID": "7"})


def test_jrm_environment_uses_the_original_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCH", "/scratch/u")
    s = site(environment={"workdir": "$SCRATCH/jrm", "env": {"JIRIAF_PODS": "20"}}, jrm={"nodetype": "gpu"})
    spec = bs.task_spec(plan(s, idle_timeout=45))
    env = bs.jrm_environment(
        spec,
        node="ci-p1-0",
        kubeconfig="~/k",
        node_ip="10.0.0.5",
        kubelet_port=10300,
        kubelet_bind="127.0.0.2",
        walltime=100,
        job_id="77",
    )
    assert env["NODENAME"] == "ci-p1-0"
    assert env["KUBECONFIG"] == str(Path.home() / "k")
    assert env["VKUBELET_POD_IP"] == "10.0.0.5"
    assert env["KUBELET_PORT"] == "10300"
    assert env["JIRIAF_WALLTIME"] == "100"
    assert env["JIRIAF_NODETYPE"] == "gpu"
    assert env["JIRIAF_SITE"] == "ci"
    assert float(env["JIRIAF_IDLE_TIMEOUT"]) == 45
    assert env["JIRIAF_KUBELET_BIND"] == "127.0.0.2"
    assert env["JIRIAF_WORKDIR"] == "/scratch/u/jrm/ci-p1-0"
    assert env["JIRIAF_PODS"] == "20"
    assert json.loads(env["JIRIAF_LABELS"]) == {"jiriaf.pilot": "p1", "jiriaf.pilot-job": "77"}
    plain = bs.jrm_environment(
        bs.task_spec(plan()),
        node="n",
        kubeconfig="/k",
        node_ip="127.0.0.1",
        kubelet_port=1,
        kubelet_bind=None,
        walltime=1,
        job_id="1",
    )
    assert "JIRIAF_IDLE_TIMEOUT" not in plain and "JIRIAF_KUBELET_BIND" not in plain


def test_port_candidates_cover_the_range_from_different_starts() -> None:
    a = bs.port_candidates(10000, 10009, task=0)
    b = bs.port_candidates(10000, 10009, task=1)
    assert sorted(a) == sorted(b) == list(range(10000, 10010))
    assert a[0] != b[0]


def test_task_spec_json_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="not a pilot task specification"):
        bs.TaskSpec.from_json('{"pilot_id": "x"}')
    with pytest.raises(UserError):
        bs.TaskSpec.from_json("not json")


def test_shell_path_expands_variables_only() -> None:
    assert bs.shell_path("~/v") == '"$HOME/v"'
    assert bs.shell_path('/a"b`c`\\') == '"/a\\"b\\`c\\`\\\\"'


def test_example_sites_render(tmp_path: Path) -> None:
    sites = parse_sites((Path(__file__).resolve().parents[3] / "deploy/sites/example-sites.yaml").read_text())
    for s in sites.sites.values():
        text = bs.render_job_script(plan(s, walltime=600))
        (tmp_path / f"{s.name}.sh").write_text(text)
        res = subprocess.run(["bash", "-n", str(tmp_path / f"{s.name}.sh")], capture_output=True, check=False)
        assert res.returncode == 0
