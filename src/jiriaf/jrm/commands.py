"""``jiriaf jrm``: run the virtual kubelet."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from jiriaf.errors import UserError

app = typer.Typer(help="JRM: the user-space virtual kubelet.", no_args_is_help=True)


def _settings(overrides: dict[str, Any]) -> Any:
    from jiriaf.jrm.settings import JRMSettings

    try:
        return JRMSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise UserError(f"invalid JRM setting {where}: {first.get('msg')}") from exc


@app.command("run")
def run(
    node_name: Annotated[str | None, typer.Option("--node-name", help="Node name [env NODENAME].")] = None,
    kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig [env KUBECONFIG].")] = None,
    node_ip: Annotated[str | None, typer.Option(help="Node address [env VKUBELET_POD_IP].")] = None,
    kubelet_port: Annotated[int | None, typer.Option(help="Kubelet API port [env KUBELET_PORT].")] = None,
    walltime: Annotated[
        int | None, typer.Option(help="Seconds to live, 0 none [env JIRIAF_WALLTIME].")
    ] = None,
    walltime_margin: Annotated[
        int | None,
        typer.Option(help="Drain this many seconds before the walltime [env JIRIAF_WALLTIME_MARGIN]."),
    ] = None,
    nodetype: Annotated[str | None, typer.Option(help="jiriaf.nodetype label [env JIRIAF_NODETYPE].")] = None,
    site: Annotated[str | None, typer.Option(help="jiriaf.site label [env JIRIAF_SITE].")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Pod directory root [env JIRIAF_WORKDIR].")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU capacity [env JIRIAF_CPU].")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory capacity, e.g. 8Gi [env JIRIAF_MEMORY].")] = None,
    pods: Annotated[int | None, typer.Option(help="Pod capacity [env JIRIAF_PODS].")] = None,
    taint: Annotated[
        str | None, typer.Option(help="Node taint key=value:Effect, '' for none [env JIRIAF_TAINT].")
    ] = None,
    allowed_host_paths: Annotated[
        str | None, typer.Option(help="Colon-separated hostPath prefixes [env JIRIAF_ALLOWED_HOST_PATHS].")
    ] = None,
    on_exit: Annotated[str | None, typer.Option(help="notready or delete [env JIRIAF_ON_EXIT].")] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(help="Stop after this many idle seconds, 0 never [env JIRIAF_IDLE_TIMEOUT]."),
    ] = None,
    allow_anonymous: Annotated[
        bool | None, typer.Option(help="Allow anonymous kubelet API requests [env JIRIAF_ALLOW_ANONYMOUS].")
    ] = None,
    address_mode: Annotated[
        str | None,
        typer.Option(help="Pod addresses: shared (node address) or per-pod [env JIRIAF_ADDRESS_MODE]."),
    ] = None,
    pod_cidr: Annotated[
        str | None, typer.Option(help="Range of per-pod addresses, e.g. 10.44.3.0/24 [env JIRIAF_POD_CIDR].")
    ] = None,
    metrics_interval: Annotated[
        float | None, typer.Option(help="Seconds between resource samples [env JIRIAF_METRICS_INTERVAL].")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Register this machine as a Kubernetes node and run the pods bound to it as process groups."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx2", "httpcore2", "aiohttp.access"):  # one line per request is too much for a kubelet
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = _settings(
        dict(
            node_name=node_name,
            kubeconfig=kubeconfig,
            node_ip=node_ip,
            kubelet_port=kubelet_port,
            walltime=walltime,
            walltime_margin=walltime_margin,
            nodetype=nodetype,
            site=site,
            workdir=workdir,
            cpu=cpu,
            memory=memory,
            pods=pods,
            taint=taint,
            allowed_host_paths=allowed_host_paths,
            on_exit=on_exit,
            allow_anonymous=allow_anonymous,
            address_mode=address_mode,
            pod_cidr=pod_cidr,
            metrics_interval=metrics_interval,
        )
    )
    from jiriaf.jrm.agent import Agent
    from jiriaf.kube.config import load_kubeconfig

    load_kubeconfig(settings.kubeconfig)  # a clear error before anything starts
    code = asyncio.run(Agent(settings).run())
    raise typer.Exit(code)
