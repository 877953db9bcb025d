"""The ``jiriaf`` command: one Typer app with a sub-command group per part of the system."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from jiriaf import __version__
from jiriaf.devcluster.commands import app as dev_app
from jiriaf.errors import UserError
from jiriaf.jcs.commands import jcs_app, request_app, site_app
from jiriaf.jrm.commands import app as jrm_app
from jiriaf.monitor.commands import app as monitor_app
from jiriaf.pilots.commands import app as pilot_app
from jiriaf.twin.commands import app as twin_app

app = typer.Typer(
    name="jiriaf",
    help="JIRIAF: user-space Kubernetes nodes on HPC and batch resources.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(jrm_app, name="jrm")
app.add_typer(jcs_app, name="jcs")
app.add_typer(request_app, name="request")
app.add_typer(site_app, name="site")
app.add_typer(pilot_app, name="pilot")
app.add_typer(twin_app, name="twin")
app.add_typer(dev_app, name="dev")
app.add_typer(monitor_app, name="monitor")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"jiriaf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """JIRIAF: user-space Kubernetes nodes on HPC and batch resources."""


@app.command("demo")
def demo(
    duration: Annotated[
        float, typer.Option(help="Seconds to keep the demo running (0: until Ctrl-C).")
    ] = 0.0,
    keep: Annotated[bool, typer.Option(help="Leave everything running when the demo ends.")] = False,
) -> None:
    """Run the main job on this machine: a local control plane with everything jiriaf adds to it."""
    from jiriaf.demo import run_demo

    run_demo(duration=duration, keep=keep)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    err = Console(stderr=True)
    try:
        # without standalone mode click returns the code of a typer.Exit instead of raising it
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and anything unexpected: one line, never a traceback
        # click's exceptions (Typer vendors click) carry a message and an exit code: print one line
        fmt = getattr(exc, "format_message", None)
        code = getattr(exc, "exit_code", None)
        if callable(fmt) and isinstance(code, int):
            err.print(f"[red]error:[/red] {fmt()} (see 'jiriaf --help')", highlight=False, soft_wrap=True)
            sys.exit(code)
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
