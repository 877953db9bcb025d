"""``jiriaf pilot``: submit, list, inspect and cancel pilot jobs; ``task`` runs inside a job."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from jiriaf.errors import UserError

if TYPE_CHECKING:
    from jiriaf.pilots.launcher import PilotLauncher
    from jiriaf.pilots.registry import PilotRecord

app = typer.Typer(
    help="Pilots: batch jobs that start JRMs on the nodes they get (SLURM, PBS, LSF, Flux, local via PSI/J).",
    no_args_is_help=True,
)
console = Console()

SitesOption = Annotated[
    Path | None,
    typer.Option("--sites", help="Sites file (default $JIRIAF_SITES or ~/.config/jiriaf/sites.yaml)."),
]
RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry", help="Pilot records (default $JIRIAF_PILOT_DIR or ~/.local/share/jiriaf/pilots)."
    ),
]
KubeconfigOption = Annotated[
    Path | None,
    typer.Option("--kubeconfig", help="Control-plane kubeconfig used to read and delete the pilots' Nodes."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _launcher(
    sites: Path | None, registry: Path | None, kubeconfig: Path | None, need_sites: bool
) -> PilotLauncher:
    from jiriaf.pilots.launcher import PilotLauncher
    from jiriaf.pilots.registry import PilotRegistry
    from jiriaf.pilots.sites import default_sites_path, load_sites

    path = sites or default_sites_path()
    site_map = load_sites(path).sites if need_sites or path.exists() else {}
    return PilotLauncher(site_map, registry=PilotRegistry(registry), kubeconfig=kubeconfig)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    secs = int(time.time() - ts)
    return f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"


def _print_record(rec: PilotRecord, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rec.model_dump(mode="json"), indent=2))
        return
    console.print(
        f"pilot [bold]{rec.id}[/bold] on {rec.site} ({rec.executor}): {rec.state}"
        + (f", job {rec.native_id}" if rec.native_id else "")
        + (f" [{rec.batch_state}]" if rec.batch_state else "")
        + (f", stopped: {rec.stop_reason}" if rec.stop_reason else ""),
        highlight=False,
    )
    if rec.node_reports or rec.node_names:
        table = Table("node", "ready", "condition reason", "stop reason")
        for name in sorted(set(rec.node_names) | set(rec.node_reports)):
            rep = rec.node_reports.get(name)
            table.add_row(
                name,
                (rep.ready if rep and rep.ready else "absent") if rep else "-",
                (rep.reason if rep else None) or "-",
                (rep.stop_reason if rep else None) or "-",
            )
        console.print(table)
    for ev in rec.events[-5:]:
        console.print(f"  {time.strftime('%H:%M:%S', time.localtime(ev.time))} {ev.what}", highlight=False)


@app.command("submit")
def submit(
    site: Annotated[str, typer.Option("--site", help="Site name in the sites file.")],
    nodes: Annotated[int, typer.Option(min=1, help="Nodes to ask the batch system for.")] = 1,
    walltime: Annotated[str, typer.Option(help="Job walltime: 180, 3m, 1h30m, 00:03:00, 1-00:00:00.")] = "1h",
    jrms_per_node: Annotated[
        int | None, typer.Option("--jrms-per-node", min=1, help="JRMs per node (default: the site's).")
    ] = None,
    pilot_id: Annotated[
        str | None, typer.Option("--id", help="Pilot id; submitting the same id again re-attaches.")
    ] = None,
    idle_timeout: Annotated[
        str, typer.Option(help="Stop the JRMs after this long without active pods (0: never).")
    ] = "0",
    nodetype: Annotated[str | None, typer.Option(help="jiriaf.nodetype label (default: the site's).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Extra node label key=value.")] = None,
    partition: Annotated[str | None, typer.Option(help="Partition or queue.")] = None,
    qos: Annotated[str | None, typer.Option(help="SLURM QOS.")] = None,
    account: Annotated[str | None, typer.Option(help="Account or project.")] = None,
    constraint: Annotated[str | None, typer.Option(help="SLURM constraint.")] = None,
    reservation: Annotated[str | None, typer.Option(help="Reservation.")] = None,
    sites: SitesOption = None,
    registry: RegistryOption = None,
    kubeconfig: KubeconfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a pilot: one batch job that starts one JRM per slot, ending before the walltime."""
    from jiriaf.pilots.batch_script import parse_duration
    from jiriaf.pilots.launcher import PilotRequest

    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"label {item!r} is not key=value")
        labels[key] = value
    launcher = _launcher(sites, registry, kubeconfig, need_sites=True)
    request = PilotRequest(
        site=site,
        nodes=nodes,
        walltime=parse_duration(walltime),
        pilot_id=pilot_id,
        jrms_per_node=jrms_per_node,
        idle_timeout=float(parse_duration(idle_timeout)),
        nodetype=nodetype,
        labels=labels,
        batch={
            "partition": partition,
            "qos": qos,
            "account": account,
            "constraint": constraint,
            "reservation": reservation,
        },
    )
    record = launcher.submit(request)
    _print_record(record, as_json)


@app.command("list")
def list_cmd(
    refresh: Annotated[bool, typer.Option(help="Ask the batch system about unfinished pilots.")] = True,
    sites: SitesOption = None,
    registry: RegistryOption = None,
    kubeconfig: KubeconfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the pilots in the registry."""
    records = _launcher(sites, registry, kubeconfig, need_sites=False).list(refresh=refresh)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table("id", "site", "job", "state", "JRMs", "walltime", "age", "stop reason")
    for r in records:
        table.add_row(
            r.id,
            r.site,
            r.native_id or "-",
            r.state,
            str(r.nodes * r.jrms_per_node),
            f"{r.walltime}s",
            _ago(r.created_at),
            r.stop_reason or "-",
        )
    console.print(table)


@app.command("status")
def status(
    pilot_id: Annotated[str, typer.Argument(help="Pilot id.")],
    sites: SitesOption = None,
    registry: RegistryOption = None,
    kubeconfig: KubeconfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a pilot: batch state, its nodes and why their JRMs stopped."""
    _print_record(_launcher(sites, registry, kubeconfig, need_sites=False).status(pilot_id), as_json)


@app.command("cancel")
def cancel(
    pilot_id: Annotated[str, typer.Argument(help="Pilot id.")],
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds the JRMs get to drain before the job is cancelled.")
    ] = 120.0,
    sites: SitesOption = None,
    registry: RegistryOption = None,
    kubeconfig: KubeconfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a pilot: the JRMs drain, the job ends, the nodes are deleted."""
    launcher = _launcher(sites, registry, kubeconfig, need_sites=False)
    with console.status(f"cancelling pilot {pilot_id}: JRMs draining"):
        record = launcher.cancel(pilot_id, drain_timeout=drain_timeout)
    _print_record(record, as_json)


@app.command("task", hidden=True)
def task() -> None:
    """Run one JRM of a pilot (started by the pilot's job script on a compute node)."""
    from jiriaf.pilots.jrm_task import run_from_environment

    raise typer.Exit(run_from_environment())
