"""``jiriaf jcs`` (run the central service, tokens, pilots, events), ``jiriaf request`` (file, list,
show, cancel and control workflow requests) and ``jiriaf site`` (sites and their free resources).

``jcs serve`` and ``jcs token`` work on the database directly; the other commands are clients of
the REST API (``--url``/``JIRIAF_JCS_URL``, ``--token``/``JIRIAF_JCS_TOKEN``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from jiriaf.errors import UserError
from jiriaf.jcs.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, JcsClient

jcs_app = typer.Typer(
    help="Central service (JCS): run it, API tokens, pilots, the event trail.", no_args_is_help=True
)
token_app = typer.Typer(help="API tokens (only their sha256 is stored).", no_args_is_help=True)
jcs_app.add_typer(token_app, name="token")
request_app = typer.Typer(
    help="Workflow requests: submit, list, show, cancel, control.", no_args_is_help=True
)
site_app = typer.Typer(help="Sites and the resources they have free.", no_args_is_help=True)

console = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="JIRIAF_JCS_DB", help="Database URL (default: SQLite in the data dir)."),
]
UrlOption = Annotated[
    str | None, typer.Option("--url", envvar=URL_ENV, help=f"JCS URL (default {DEFAULT_URL}).")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar=TOKEN_ENV, help="API token.", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


# ----------------------------------------------------------------------------- helpers


def _age(text: str | None) -> str:
    if not text:
        return "-"
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    secs = int((datetime.now(UTC) - when).total_seconds())
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h" if secs < 172800 else f"{secs // 86400}d"


def _duration(seconds: float | None) -> str:
    from jiriaf.jcs.matching import format_duration

    return "-" if seconds is None else format_duration(seconds)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


STATE_STYLE = {
    "pending": "yellow",
    "leased": "cyan",
    "running": "green",
    "stopping": "magenta",
    "completed": "bold green",
    "failed": "bold red",
    "cancelled": "dim",
    "ok": "green",
    "unreachable": "red",
}


def _state(text: str) -> str:
    style = STATE_STYLE.get(text)
    return f"[{style}]{text}[/{style}]" if style else text


def _read_spec(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML or JSON: {str(exc).splitlines()[0]}") from None


def _validate(doc: Any, source: str) -> dict[str, Any]:
    from jiriaf.jcs.schemas import RequestSpec

    if not isinstance(doc, dict):
        raise UserError(f"{source}: a request is a mapping (name, walltime, workflow, ...)")
    try:
        RequestSpec.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise UserError(f"{source}: {loc}: {str(first.get('msg')).removeprefix('Value error, ')}") from None
    return doc


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


# ----------------------------------------------------------------------------- jcs serve


@jcs_app.command("serve")
def serve(
    db: DbOption = None,
    host: Annotated[
        str | None, typer.Option(help="Listen address [env JIRIAF_JCS_HOST] (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port [env JIRIAF_JCS_PORT] (default 8765).")
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="Kubeconfig of the control plane [env JIRIAF_JCS_KUBECONFIG, KUBECONFIG]."),
    ] = None,
    sites: Annotated[
        Path | None,
        typer.Option(
            "--sites",
            help="Pilots sites file (how pilots start) [env JIRIAF_JCS_SITES_FILE].",
            show_default=False,
        ),
    ] = None,
    facilities: Annotated[
        Path | None, typer.Option(help="Facilities file: how sites are scraped (default: from --sites).")
    ] = None,
    pilot_registry: Annotated[
        Path | None, typer.Option(help="Where pilot records live (default: data dir).")
    ] = None,
    prometheus_url: Annotated[str | None, typer.Option(help="Prometheus URL for workflow metrics.")] = None,
    reconcile_interval: Annotated[
        float | None, typer.Option(help="Seconds between reconcile passes.")
    ] = None,
    scrape_interval: Annotated[float | None, typer.Option(help="Seconds between scrapes of a site.")] = None,
    monitor_interval: Annotated[float | None, typer.Option(help="Seconds between workflow samples.")] = None,
    pilot_idle_timeout: Annotated[
        float | None, typer.Option(help="Stop pilots idle this many seconds.")
    ] = None,
    pilot_margin: Annotated[int | None, typer.Option(help="Walltime added to each pilot (s).")] = None,
    chart_dir: Annotated[
        list[Path] | None, typer.Option(help="Directory local Helm charts may come from.")
    ] = None,
    no_reconcile: Annotated[bool, typer.Option("--no-reconcile", help="Serve the API only.")] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Run the central service: upgrade the database, scrape sites, match and run requests, serve the API."""
    import os

    import uvicorn

    from jiriaf.jcs.api import create_app
    from jiriaf.jcs.db import Database
    from jiriaf.jcs.launching import LauncherPort
    from jiriaf.jcs.service import Jcs, load_facilities
    from jiriaf.jcs.settings import JcsSettings
    from jiriaf.kube.raw import async_raw_client

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx2", "httpcore2", "psij", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    overrides: dict[str, Any] = {
        "db": db,
        "host": host,
        "port": port,
        "kubeconfig": kubeconfig,
        "sites_file": sites,
        "prometheus_url": prometheus_url,
        "reconcile_interval": reconcile_interval,
        "scrape_interval": scrape_interval,
        "monitor_interval": monitor_interval,
        "pilot_idle_timeout_s": pilot_idle_timeout,
        "pilot_margin_s": pilot_margin,
        "chart_dirs": chart_dir,
    }
    try:
        settings = JcsSettings.model_validate({k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    database = Database(settings.db)
    kube = None
    kubeconfig_path = settings.kubeconfig or (
        Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None
    )
    if not no_reconcile:
        kube = async_raw_client(kubeconfig_path)
    launcher = None
    if settings.sites_file is not None and not no_reconcile:
        launcher = LauncherPort.from_sites_file(
            settings.sites_file, kubeconfig=kubeconfig_path, registry=pilot_registry
        )
    configs = load_facilities(settings, facilities)
    jcs = Jcs(settings, db=database, launcher=launcher, kube=kube, facilities=configs, run_loops=True)
    err.print(
        f"[cyan]•[/cyan] JCS on http://{settings.host}:{settings.port} (database {database.display_url}, "
        f"{len(configs)} site(s), {'reconciling' if launcher and kube else 'no pilots: matching only'})",
        highlight=False,
    )
    app = create_app(jcs)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level.lower(), access_log=False)


# ----------------------------------------------------------------------------- tokens


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="The user the token acts for.")],
    admin: Annotated[bool, typer.Option("--admin", help="The token may see and act on everything.")] = False,
    label: Annotated[str, typer.Option(help="A note on what the token is for.")] = "",
    db: DbOption = None,
) -> None:
    """Create an API token and print it (once: only its hash is stored)."""
    from jiriaf.jcs.auth import create_token
    from jiriaf.jcs.db import Database

    async def main() -> str:
        database = Database(db)
        try:
            await database.upgrade()
            async with database.session() as s:
                return await create_token(s, user, admin=admin, label=label)
        finally:
            await database.close()

    token = _run(main())
    err.print(f"token for {'admin ' if admin else ''}{user} (shown once; store it now):", highlight=False)
    typer.echo(token)


@token_app.command("list")
def token_list(db: DbOption = None) -> None:
    """List tokens (ids, users, roles; never the tokens)."""
    from sqlalchemy import select

    from jiriaf.jcs.db import Database
    from jiriaf.jcs.models import ApiToken

    async def main() -> list[ApiToken]:
        database = Database(db)
        try:
            await database.upgrade()
            async with database.session() as s:
                return list((await s.execute(select(ApiToken).order_by(ApiToken.id))).scalars().all())
        finally:
            await database.close()

    table = Table("id", "user", "role", "label", "created", "revoked")
    for t in _run(main()):
        table.add_row(
            str(t.id),
            t.user,
            "admin" if t.admin else "user",
            t.label,
            _age(t.created_at.isoformat()),
            _age(t.revoked_at.isoformat()) if t.revoked_at else "",
        )
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (see 'token list').")], db: DbOption = None
) -> None:
    """Revoke a token."""
    from jiriaf.jcs.auth import revoke_token
    from jiriaf.jcs.db import Database

    async def main() -> None:
        database = Database(db)
        try:
            await database.upgrade()
            async with database.session() as s:
                await revoke_token(s, token_id)
        finally:
            await database.close()

    _run(main())
    typer.echo(f"token {token_id} revoked")


# ----------------------------------------------------------------------------- pilots and events


@jcs_app.command("pilots")
def pilots(
    live: Annotated[bool, typer.Option("--live", help="Only pilots that have not ended.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List pilots (admins: all; users: those serving their requests)."""
    rows = JcsClient(url, token).call("GET", "/api/v1/pilots", params={"live": live})
    if as_json:
        _print_json(rows)
        return
    table = Table("pilot", "site", "state", "nodes", "job", "left", "request", "node names")
    for p in rows:
        table.add_row(
            p["id"],
            p["site"] + (f"/{p['partition']}" if p["partition"] else ""),
            _state(p["state"]),
            str(p["nodes"]),
            p["native_id"] or "-",
            _duration(p["remaining_s"]),
            str(p["leased_to"] or "-"),
            ", ".join(p["node_names"]),
        )
    console.print(table)


@jcs_app.command("drain")
def drain(
    pilot: Annotated[str, typer.Argument(help="Pilot id.")],
    stop: Annotated[bool, typer.Option("--stop", help="Also stop the pilot (cancel its job).")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the event).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Admins: drain a pilot's JRMs (cordon, delete their pods), and with --stop end the pilot."""
    client = JcsClient(url, token)
    result = client.call("POST", f"/api/v1/pilots/{pilot}/drain", params={"reason": reason})
    typer.echo(result["message"])
    if stop:
        typer.echo(client.call("POST", f"/api/v1/pilots/{pilot}/stop", params={"reason": reason})["message"])


@jcs_app.command("events")
def events(
    request: Annotated[int | None, typer.Option("--request", help="Only this request's events.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The event trail: who did what, when and why."""
    params: dict[str, Any] = {"limit": limit}
    if request is not None:
        params["request_id"] = request
    rows = JcsClient(url, token).call("GET", "/api/v1/events", params=params)
    if as_json:
        _print_json(rows)
        return
    _events_table(rows)


def _events_table(rows: list[dict[str, Any]]) -> None:
    table = Table("#", "when", "actor", "action", "subject", "why")
    for e in rows:
        table.add_row(
            str(e["id"]),
            e["at"][11:19],
            e["actor"],
            e["action"],
            f"{e['subject_kind']} {e['subject_id']}",
            e["message"],
        )
    console.print(table)


# ----------------------------------------------------------------------------- requests


@request_app.command("submit")
def submit(
    file: Annotated[str, typer.Argument(help="Request as YAML or JSON ('-' for stdin).")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the request until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 3600.0,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """File a workflow request (checked here first, field by field)."""
    body = _validate(_read_spec(file), file)
    client = JcsClient(url, token)
    row = client.call("POST", "/api/v1/requests", json=body)
    if as_json and not wait:
        _print_json(row)
        return
    typer.echo(f"request {row['id']} ({row['name']}) filed: {row['state']}")
    if wait:
        _follow(client, row["id"], timeout)


def _follow(client: JcsClient, request_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    with console.status(f"request {request_id}") as status:
        while True:
            row = client.call("GET", f"/api/v1/requests/{request_id}")
            for e in client.call("GET", f"/api/v1/requests/{request_id}/events")[seen:]:
                console.print(f"[dim]{e['at'][11:19]}[/dim] {e['action']}: {e['message']}", highlight=False)
                seen += 1
            status.update(f"request {request_id}: {row['state']} - {row['reason']}")
            if row["state"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise UserError(
                    f"request {request_id} is still {row['state']} after {timeout:g} s", exit_code=1
                )
            time.sleep(2)
    typer.echo(f"request {request_id} {row['state']}: {row['reason']}")
    if row["state"] != "completed":
        raise typer.Exit(1)


@request_app.command("list")
def list_requests(
    all_users: Annotated[bool, typer.Option("--all", help="Admins: every user's requests.")] = False,
    state: Annotated[str | None, typer.Option(help="Only requests in this state.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List requests."""
    params: dict[str, Any] = {"all": all_users}
    if state:
        params["state"] = state
    rows = JcsClient(url, token).call("GET", "/api/v1/requests", params=params)
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "user", "name", "state", "nodes", "walltime", "age", "reason")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["user"],
            r["name"],
            _state(r["state"]),
            f"{r['nodes']}x{r['node_type']}",
            _duration(r["walltime_s"]),
            _age(r["created_at"]),
            r["reason"],
        )
    console.print(table)


@request_app.command("show")
def show(
    request_id: Annotated[int, typer.Argument(help="Request id.")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A request: its state and reason, leases, latest status samples and its event trail."""
    client = JcsClient(url, token)
    row = client.call("GET", f"/api/v1/requests/{request_id}")
    status_rows = client.call("GET", f"/api/v1/requests/{request_id}/status", params={"limit": 10})
    trail = client.call("GET", f"/api/v1/requests/{request_id}/events")
    if as_json:
        _print_json({"request": row, "status": status_rows, "events": trail})
        return
    console.print(
        f"[bold]request {row['id']}[/bold] {row['name']} of {row['user']}: {_state(row['state'])}\n"
        f"  {row['reason']}\n"
        f"  {row['nodes']} {row['node_type']} node(s) x {row['cpus_per_node']} cpus, "
        f"{row['memory_mb_per_node']} MB, walltime {_duration(row['walltime_s'])}, "
        f"priority {row['priority']}, attempts {row['attempts']}",
        highlight=False,
    )
    if row["leases"]:
        table = Table("lease", "pilot", "nodes", "walltime left")
        for lease in row["leases"]:
            table.add_row(
                str(lease["id"]),
                lease["pilot_id"],
                ", ".join(lease["nodes"]),
                _duration(lease["remaining_s"]),
            )
        console.print(table)
    if status_rows:
        table = Table(
            "when", "phase", "pods (run/pend/ok/fail)", "restarts", "cpu", "memory", "metrics / message"
        )
        for st in status_rows:
            pods = f"{st['pods_running']}/{st['pods_pending']}/{st['pods_succeeded']}/{st['pods_failed']}"
            cpu = "-" if st["cpu_cores"] is None else f"{st['cpu_cores']:.3f}"
            mem = "-" if st["memory_bytes"] is None else f"{st['memory_bytes'] / 2**20:.1f} MiB"
            extra = ", ".join(f"{k}={v}" for k, v in st["metrics"].items())
            table.add_row(
                st["at"][11:19],
                st["phase"],
                pods,
                str(st["restarts"]),
                cpu,
                mem,
                "; ".join(x for x in (extra, st["message"]) if x),
            )
        console.print(table)
    _events_table(trail)


@request_app.command("cancel")
def cancel(
    request_id: Annotated[int, typer.Argument(help="Request id.")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a request (its workflow is deleted and its leases released)."""
    row = JcsClient(url, token).call("POST", f"/api/v1/requests/{request_id}/cancel")
    typer.echo(f"request {request_id}: {row['state']} ({row['reason']})")


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"parameter {pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@request_app.command("action")
def action(
    workflow: Annotated[str, typer.Argument(help="Request id (or name of a running workflow).")],
    name: Annotated[str, typer.Argument(help="scale, resources, stop, or an action the request declared.")],
    params: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE parameters, e.g. replicas=3.")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded in the event).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Run a control action on a workflow."""
    body = {"action": name, "reason": reason, "source": "jiriaf-cli", **_parse_params(params or [])}
    result = JcsClient(url, token).call("POST", f"/api/v1/workflows/{workflow}/actions", json=body)
    typer.echo(result["message"])


@request_app.command("scale")
def scale(
    workflow: Annotated[str, typer.Argument(help="Request id (or name of a running workflow).")],
    replicas: Annotated[int, typer.Argument(help="Replicas wanted.")],
    deployment: Annotated[str | None, typer.Option(help="Which Deployment (when there are several).")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Scale a workflow's Deployment."""
    body: dict[str, Any] = {"action": "scale", "replicas": replicas, "source": "jiriaf-cli"}
    if deployment:
        body["deployment"] = deployment
    typer.echo(
        JcsClient(url, token).call("POST", f"/api/v1/workflows/{workflow}/actions", json=body)["message"]
    )


@request_app.command("stop")
def stop_workflow(
    workflow: Annotated[str, typer.Argument(help="Request id (or name of a running workflow).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the event).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Stop a running workflow (it ends as completed)."""
    body = {"action": "stop", "reason": reason, "source": "jiriaf-cli"}
    typer.echo(
        JcsClient(url, token).call("POST", f"/api/v1/workflows/{workflow}/actions", json=body)["message"]
    )


# ----------------------------------------------------------------------------- sites


@site_app.command("list")
def site_list(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Sites, their state and what they had free at the last scrape."""
    rows = JcsClient(url, token).call("GET", "/api/v1/sites")
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "site",
        "kind",
        "state",
        "scraped",
        "partition",
        "type",
        "free/total",
        "cpus",
        "memory",
        "max walltime",
        "queued",
    )
    for s in rows:
        head = [s["name"], s["kind"], _state(s["state"]), _age(s["last_scrape_at"])]
        if not s["resources"]:
            table.add_row(*head, s["last_error"] or "-", "", "", "", "", "", "")
        for i, r in enumerate(s["resources"]):
            table.add_row(
                *(head if i == 0 else ["", "", "", ""]),
                r["partition"] or "-",
                r["node_type"],
                f"{r['nodes_free']}/{r['nodes_total']}",
                str(r["cpus_per_node"]),
                f"{r['memory_mb_per_node']} MB",
                _duration(r["max_walltime_s"]) if r["max_walltime_s"] else "none",
                str(r["queued_jobs"]),
            )
    console.print(table)


@site_app.command("scrape")
def site_scrape(
    name: Annotated[str, typer.Argument(help="Site name.")], url: UrlOption = None, token: TokenOption = None
) -> None:
    """Admins: scrape a site now."""
    s = JcsClient(url, token).call("POST", f"/api/v1/sites/{name}/scrape")
    if s["state"] != "ok":
        raise UserError(f"site {name} is {s['state']}: {s['last_error']}", exit_code=1)
    free = sum(r["nodes_free"] for r in s["resources"])
    typer.echo(f"site {name}: ok, {free} free node(s) in {len(s['resources'])} partition(s)")
