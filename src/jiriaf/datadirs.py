"""Where jiriaf keeps its state: one rule for every part."""

from __future__ import annotations

import os
from pathlib import Path


def data_directory(env_var: str, *parts: str) -> Path:
    """``$<env_var>`` when set, else ``$XDG_DATA_HOME/jiriaf/<parts...>`` (``~/.local/share`` by default)."""
    explicit = os.environ.get(env_var)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).joinpath("jiriaf", *parts)
