"""``jiriaf twin``: the digital twin's commands (filled by the twin issue)."""

import typer

app = typer.Typer(help="Digital twin of a streaming queue: reproduce, fit, live.", no_args_is_help=True)
