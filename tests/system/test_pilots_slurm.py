"""Pilots on a real single-host SLURM joining the real control plane: walltime with a drain
margin, cancel, the idle timeout, and re-running a launcher that died mid-submission."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from lightkube.resources.core_v1 import Event, Node

from jiriaf.devcluster.build import kubectl
from jiriaf.devcluster.slurm import LocalSlurm
from jiriaf.pilots.launcher import PilotRequest
from support import eventually

pytestmark = pytest.mark.system


def slurm_site(kubeconfig: Path, **changes: Any) -> dict[str, Any]:
    site: dict[str, Any] = {
        "kind": "slurm",
        "batch": {"partition": "debug"},
        "control_plane": {"kubeconfig": str(kubeconfig), "node_ip": "127.0.0.1"},
        "launch": {"jrms_per_node": 2},  # one host: two JRM tasks on it
        "jrm": {"nodetype": "cpu"},
    }
    site.update(changes)
    return site


def jobs_named(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "--me", "-h", "-t", "all", f"--name={name}", "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return out.split()


def in_slurm_step(pid: int) -> bool:
    """True when ``pid`` descends from a slurmstepd (it runs inside a SLURM job)."""
    try:
        return any(p.name().startswith("slurmstepd") for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def slurm_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


def limit_seconds(text: str) -> int:
    days, _, hms = text.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def test_two_jrms_from_one_job_run_a_pod_and_drain_before_the_walltime(
    pilots: Any, local_slurm: LocalSlurm, client: Any, ns: str, kubeconfig: Path
) -> None:
    pilots.write_sites({"ci": slurm_site(kubeconfig)})
    pilot_id = f"w{uuid.uuid4().hex[:6]}"
    record = pilots.launcher.submit(PilotRequest(site="ci", nodes=1, walltime=180, pilot_id=pilot_id))
    job = record.native_id
    assert job is not None and jobs_named(f"jiriaf-pilot-{pilot_id}") == [job]
    fields = local_slurm.job_fields(job)
    assert fields["NumNodes"].split("-")[0] == "1" and fields["NumTasks"] == "2"
    assert limit_seconds(fields["TimeLimit"]) == 180

    names = [f"ci-{pilot_id}-0", f"ci-{pilot_id}-1"]
    assert record.node_names == names
    pilots.wait_ready(client, names)
    for name in names:
        labels = client.get(Node, name).metadata.labels
        assert labels["jiriaf.pilot"] == pilot_id
        assert labels["jiriaf.site"] == "ci" and labels["jiriaf.nodetype"] == "cpu"
        assert labels["jiriaf.pilot-job"] == job
        assert 0 < int(labels["jiriaf.alivetime"]) <= 180 - 60  # the JRM ends a margin before the job
    facts = pilots.task_facts(pilot_id)
    assert sorted(facts) == names
    assert {f["job_id"] for f in facts.values()} == {job}
    assert len({f["kubelet_port"] for f in facts.values()}) == 2
    for f in facts.values():
        assert in_slurm_step(f["jrm_pid"]), "the JRM must run inside the SLURM job"
        assert f["walltime"] <= 180 - 60

    pod = pilots.run_pod(client, ns, names[0], "hello", "echo hello-from-the-pilot; sleep 2")
    assert pod.spec.nodeName == names[0]
    logs = subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), "-n", ns, "logs", "hello"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert logs.stdout.strip() == "hello-from-the-pilot", logs.stderr

    final = pilots.launcher.wait_final(pilot_id, timeout=420)
    assert final.state == "completed", pilots.logs(pilot_id)
    assert final.exit_code == 0
    assert final.stop_reason == "WalltimeExpired"
    assert {n: r.stop_reason for n, r in final.node_reports.items()} == dict.fromkeys(
        names, "WalltimeExpired"
    )
    for f in pilots.task_facts(pilot_id).values():
        assert f["exit_code"] == 0 and f["stop_reason"] == "WalltimeExpired"

    # SLURM's own account: COMPLETED (not TIMEOUT), ended before the time limit
    state = eventually(lambda: local_slurm.final_state(job), timeout=60, what="the job in sacct --completion")
    assert state == "COMPLETED"
    fields = local_slurm.job_fields(job)
    assert fields["JobState"] == "COMPLETED"
    assert fields["ExitCode"] == "0:0"
    ended_after = slurm_time(fields["EndTime"]) - slurm_time(fields["StartTime"])
    assert ended_after < limit_seconds(fields["TimeLimit"])


def test_cancel_drains_the_jrms_ends_the_job_and_removes_the_nodes(
    pilots: Any, local_slurm: LocalSlurm, client: Any, kubeconfig: Path
) -> None:
    pilots.write_sites({"ci": slurm_site(kubeconfig)})
    pilot_id = f"c{uuid.uuid4().hex[:6]}"
    submitted = pilots.cli("submit", "--site", "ci", "--walltime", "10m", "--id", pilot_id, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["native_id"]
    names = [f"ci-{pilot_id}-0", f"ci-{pilot_id}-1"]
    pilots.wait_ready(client, names)
    facts = pilots.task_facts(pilot_id)

    cancelled = pilots.cli("cancel", pilot_id, "--drain-timeout", "120", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    record = json.loads(cancelled.stdout)
    assert record["state"] == "canceled"
    assert record["stop_reason"] == "PilotCancelled"
    assert {n: r["stop_reason"] for n, r in record["node_reports"].items()} == dict.fromkeys(
        names, "Stopped(SIGTERM)"
    )

    for name in names:  # the nodes are gone, the reason is kept in an Event
        with pytest.raises(Exception, match="not found"):
            client.get(Node, name)
        events = client.list(Event, namespace="default", fields={"involvedObject.name": name})
        assert any(e.reason == "PilotCancelled" for e in events)
    for f in facts.values():  # the JRMs drained and exited on their own
        assert not psutil.pid_exists(f["jrm_pid"]) or psutil.Process(f["jrm_pid"]).status() == "zombie"
    after = pilots.task_facts(pilot_id)
    assert all(f["exit_code"] == 0 for f in after.values()), pilots.logs(pilot_id)
    # the job is over: not running, and SLURM recorded how it ended
    assert eventually(lambda: local_slurm.final_state(job), timeout=60, what="job end in sacct") in (
        "COMPLETED",
        "CANCELLED",
    )
    status = pilots.cli("status", pilot_id, "--json")
    assert json.loads(status.stdout)["state"] == "canceled"


def test_idle_timeout_ends_a_pilot_whose_pods_finished(
    pilots: Any, local_slurm: LocalSlurm, client: Any, ns: str, kubeconfig: Path
) -> None:
    pilots.write_sites({"ci": slurm_site(kubeconfig)})
    pilot_id = f"i{uuid.uuid4().hex[:6]}"
    pilots.launcher.submit(PilotRequest(site="ci", walltime=900, pilot_id=pilot_id, idle_timeout=40))
    names = [f"ci-{pilot_id}-0", f"ci-{pilot_id}-1"]
    pilots.wait_ready(client, names)
    pilots.run_pod(client, ns, names[0], "short", "echo done")

    final = pilots.launcher.wait_final(pilot_id, timeout=300)  # far less than the 15 min walltime
    assert final.state == "completed", pilots.logs(pilot_id)
    assert final.stop_reason == "IdleTimeout"
    assert all(r.stop_reason == "IdleTimeout" for r in final.node_reports.values())
    for name in names:  # the node's Ready condition says why (until the node controller takes over)
        events = client.list(Event, namespace="default", fields={"involvedObject.name": name})
        assert any(e.reason == "IdleTimeout" for e in events)
    job = final.native_id
    assert eventually(lambda: local_slurm.final_state(job), timeout=60, what="job end") == "COMPLETED"


def test_a_launcher_killed_after_submitting_reattaches_instead_of_submitting_again(
    pilots: Any, local_slurm: LocalSlurm, kubeconfig: Path
) -> None:
    pilots.write_sites({"ci": slurm_site(kubeconfig)})
    pilot_id = f"d{uuid.uuid4().hex[:6]}"
    args = ("submit", "--site", "ci", "--walltime", "10m", "--id", pilot_id, "--json")
    # fault injection: the launcher SIGKILLs itself after sbatch returned, before recording the job id
    crashed = pilots.cli(*args, env={"JIRIAF_PILOT_FAULT": "kill-after-submit"})
    assert crashed.returncode == -9
    interrupted = pilots.registry.get(pilot_id)
    assert interrupted is not None and interrupted.state == "intent" and interrupted.native_id is None
    jobs = jobs_named(f"jiriaf-pilot-{pilot_id}")
    assert len(jobs) == 1

    again = pilots.cli(*args)
    assert again.returncode == 0, again.stderr
    record = json.loads(again.stdout)
    assert record["native_id"] == jobs[0]
    assert any("re-attached" in e["what"] for e in record["events"])
    assert jobs_named(f"jiriaf-pilot-{pilot_id}") == jobs

    third = pilots.cli(*args)
    assert json.loads(third.stdout)["native_id"] == jobs[0]
    assert jobs_named(f"jiriaf-pilot-{pilot_id}") == jobs
    listed = pilots.cli("list", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [pilot_id]
