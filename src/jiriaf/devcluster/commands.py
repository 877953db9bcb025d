"""``jiriaf dev``: build and run the real local control plane used by the demo and the tests."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from jiriaf.devcluster import build
from jiriaf.devcluster.cluster import LocalCluster

app = typer.Typer(help="Developer tools: the local Kubernetes control plane.", no_args_is_help=True)
cluster_app = typer.Typer(help="A real local control plane on 127.0.0.1.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

console = Console(stderr=True)
DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Cluster directory (default $JIRIAF_DEVCLUSTER_DIR or ~/.local/share/jiriaf/devcluster).",
    ),
]


def _progress(msg: str) -> None:
    console.print(f"[cyan]•[/cyan] {msg}", highlight=False)


@app.command("build")
def build_cmd() -> None:
    """Build (once) and cache etcd, kube-apiserver, kube-scheduler, kube-controller-manager,
    metrics-server and kwok from the Go module proxy."""
    paths = build.ensure_built(progress=_progress)
    for name, path in paths.items():
        typer.echo(f"{name}\t{path}")


@cluster_app.command("up")
def up(
    directory: DirOption = None,
    controller_manager_arg: Annotated[
        list[str] | None, typer.Option(help="Extra kube-controller-manager flag (repeatable).")
    ] = None,
) -> None:
    """Start the control plane (building it first if needed) and print the kubeconfig path."""
    extra = {"kube-controller-manager": controller_manager_arg or []}
    cluster = LocalCluster(directory, extra_args=extra, progress=_progress)
    kubeconfig = cluster.up()
    typer.echo(str(kubeconfig))


@cluster_app.command("down")
def down(directory: DirOption = None) -> None:
    """Stop every process the cluster started (by pid)."""
    stopped = LocalCluster(directory, progress=_progress).down()
    _progress(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@cluster_app.command("status")
def status(directory: DirOption = None) -> None:
    """Show each component: pid, running, endpoint and log file. Exit 1 if any is down."""
    cluster = LocalCluster(directory)
    rows = cluster.status()
    table = Table(title=f"local control plane ({cluster.directory})")
    for col in ("component", "pid", "state", "endpoint", "log"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row.component,
            str(row.pid or "-"),
            "[green]running[/green]" if row.running else "[red]stopped[/red]",
            row.endpoint,
            str(row.log),
        )
    Console().print(table)
    if not all(r.running for r in rows):
        raise typer.Exit(1)


@cluster_app.command("env")
def env(directory: DirOption = None) -> None:
    """Print ``export KUBECONFIG=...`` for the local cluster (use with eval)."""
    cluster = LocalCluster(directory)
    cluster.server_url()  # a clear error when there is no cluster
    typer.echo(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")


@app.command("check")
def check(kubeconfig: Annotated[Path, typer.Option(help="Kubeconfig of the cluster to check.")]) -> None:
    """Ask a cluster's apiserver whether it is ready (GET /readyz)."""
    from jiriaf.kube.readiness import apiserver_ready

    typer.echo(apiserver_ready(kubeconfig))
