"""``python -m jiriaf.jcs``: the ``jiriaf jcs`` commands (serve, token, ...), with the CLI's error
handling, for running the central service without the whole ``jiriaf`` command."""

from __future__ import annotations

import sys

from jiriaf.errors import UserError


def main() -> None:
    from rich.console import Console

    from jiriaf.jcs.commands import jcs_app

    try:
        code = jcs_app(standalone_mode=False, prog_name="jiriaf jcs")
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
