"""``jiriaf jrm``: run the virtual kubelet."""

import typer

app = typer.Typer(help="JRM: the user-space virtual kubelet.", no_args_is_help=True)
