"""``jiriaf monitor``: Prometheus configuration, file discovery and a local Prometheus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from jiriaf.errors import UserError

app = typer.Typer(help="Monitoring: Prometheus scrape configuration for JRMs and pods.", no_args_is_help=True)

KubeconfigOpt = Annotated[Path | None, typer.Option(help="Kubeconfig of the control plane [env KUBECONFIG].")]
NodeSelectorOpt = Annotated[str, typer.Option(help="Label selector of the JRM nodes ('' for every node).")]


@app.command("prometheus-config")
def prometheus_config_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write prometheus.yml.")] = Path(
        "prometheus/prometheus.yml"
    ),
    kubeconfig: KubeconfigOpt = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context (default: current).")] = None,
    discovery: Annotated[
        str,
        typer.Option(help="'kubernetes' (through the apiserver) or 'file' (see 'jiriaf monitor file-sd')."),
    ] = "kubernetes",
    sd_dir: Annotated[
        Path | None, typer.Option(help="Directory of the target files (file discovery; default: next to -o).")
    ] = None,
    scrape_interval: Annotated[str, typer.Option(help="Prometheus scrape interval, e.g. 15s.")] = "15s",
    node_selector: NodeSelectorOpt = "type=virtual-kubelet",
    kubelet_ca_file: Annotated[
        Path | None, typer.Option(help="CA of the JRMs' serving certificates (default: not verified).")
    ] = None,
) -> None:
    """Write a Prometheus configuration that scrapes every JRM and every pod's metrics port.

    The kubeconfig's credentials are written next to the configuration (``secrets/``, mode 0600).
    """
    from jiriaf.monitor.prometheus import api_access_from_kubeconfig, prometheus_config, render_yaml

    if discovery not in ("kubernetes", "file"):
        raise UserError(f"--discovery must be 'kubernetes' or 'file', not {discovery!r}")
    if not _duration_ok(scrape_interval):
        raise UserError(f"--scrape-interval {scrape_interval!r} is not a duration such as 15s or 1m")
    output = output.absolute()
    access = api_access_from_kubeconfig(kubeconfig, output.parent / "secrets", context)
    config = prometheus_config(
        access,
        discovery="file" if discovery == "file" else "kubernetes",
        scrape_interval=scrape_interval,
        node_selector=node_selector,
        kubelet_ca_file=str(kubelet_ca_file.absolute()) if kubelet_ca_file else None,
        sd_dir=(sd_dir or output.parent / "targets").absolute() if discovery == "file" else None,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_yaml(config))
    typer.echo(f"wrote {output}")


def _duration_ok(text: str) -> bool:
    import re

    return re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", text) is not None


@app.command("file-sd")
def file_sd_cmd(
    directory: Annotated[Path, typer.Option("--dir", help="Directory of the target files.")] = Path(
        "prometheus/targets"
    ),
    kubeconfig: KubeconfigOpt = None,
    node_selector: NodeSelectorOpt = "type=virtual-kubelet",
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=1.0)] = 15.0,
    once: Annotated[bool, typer.Option(help="Write the files once and exit.")] = False,
) -> None:
    """Keep Prometheus file-discovery targets (JRMs and pod metrics ports) current."""
    from jiriaf.monitor.prometheus import collect_file_sd, parse_selector, write_file_sd

    parse_selector(node_selector)  # a clear error before anything is listed
    while True:
        try:
            groups = collect_file_sd(kubeconfig, node_selector)
        except UserError as exc:
            if once:
                raise
            typer.echo(f"warning: {exc}; keeping the previous targets", err=True)
        else:
            for path in write_file_sd(directory, groups):
                typer.echo(f"updated {path}")
        if once:
            return
        time.sleep(interval)


@app.command("prometheus-run")
def prometheus_run_cmd(
    config: Annotated[Path, typer.Option("--config", help="prometheus.yml to run with.")] = Path(
        "prometheus/prometheus.yml"
    ),
    data_dir: Annotated[Path, typer.Option(help="Data and log directory.")] = Path("prometheus/run"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 9090,
    duration: Annotated[float, typer.Option(help="Seconds to run (0: until Ctrl-C).")] = 0.0,
) -> None:
    """Run Debian's Prometheus on 127.0.0.1 with the given configuration (foreground)."""
    from jiriaf.monitor.prometheus_server import PrometheusServer

    server = PrometheusServer(config, data_dir, port)
    server.start()
    typer.echo(f"prometheus ready at {server.url} (log: {server.log})")
    try:
        deadline = time.monotonic() + duration if duration > 0 else None
        while deadline is None or time.monotonic() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise UserError(f"prometheus exited with {server.proc.returncode}; see {server.log}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
