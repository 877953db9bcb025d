"""``jiriaf demo``: the main job on one machine.

Today it brings up the real local control plane and shows what runs; later parts (JRM nodes,
the JCS, the stream workflow and the digital twin) join it here.
"""

from __future__ import annotations

import signal
import time

from rich.console import Console
from rich.table import Table

from jiriaf.devcluster.cluster import LocalCluster
from jiriaf.kube.readiness import apiserver_ready


def run_demo(duration: float = 0.0, keep: bool = False) -> None:
    """Bring up the local control plane, show it, wait ``duration`` seconds (0: no wait), stop it."""
    console = Console()
    cluster = LocalCluster(progress=lambda m: console.print(f"[cyan]•[/cyan] {m}", highlight=False))
    kubeconfig = cluster.up()
    try:
        table = Table(title="jiriaf demo: local control plane")
        for col in ("component", "pid", "endpoint", "log"):
            table.add_column(col)
        for row in cluster.status():
            table.add_row(row.component, str(row.pid), row.endpoint, str(row.log))
        console.print(table)
        console.print(f"apiserver /readyz: [green]{apiserver_ready(kubeconfig)}[/green]")
        console.print(f"kubeconfig: {kubeconfig}\n  try: KUBECONFIG={kubeconfig} kubectl get --raw /readyz")
        if duration > 0:
            console.print(f"running for {duration:.0f}s (Ctrl-C ends earlier)")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            try:
                time.sleep(duration)
            except KeyboardInterrupt:
                console.print("interrupted")
    finally:
        if keep:
            console.print("--keep: leaving the cluster running; stop it with 'jiriaf dev cluster down'")
        else:
            stopped = cluster.down()
            console.print(f"stopped {', '.join(stopped)}")
