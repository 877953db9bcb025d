"""Load a kubeconfig (or in-cluster config) with errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path

from lightkube import KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ConfigError

from jiriaf.errors import UserError


def load_kubeconfig(path: str | Path | None = None, context: str | None = None) -> KubeConfig:
    """A KubeConfig from ``path``, else ``$KUBECONFIG``, else ``~/.kube/config``, else in-cluster.

    Raises :class:`UserError` naming the file when it is missing, unreadable or not a kubeconfig.
    """
    candidate = str(path) if path else os.environ.get("KUBECONFIG", "")
    if candidate:
        file = Path(candidate.split(os.pathsep)[0]).expanduser()
    else:
        file = Path.home() / ".kube" / "config"
        if not file.exists():
            try:
                return KubeConfig.from_service_account()
            except Exception as exc:
                raise UserError(
                    "no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run inside a cluster"
                ) from exc
    if not file.is_file():
        raise UserError(f"kubeconfig {file} does not exist or is not a file")
    try:
        config = KubeConfig.from_file(file)
        if config.get(context) is None:
            raise UserError(f"kubeconfig {file} has no context {context or '(current)'}")
        return config
    except UserError:
        raise
    except (ConfigError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"kubeconfig {file} cannot be used: {exc}") from exc
    except Exception as exc:  # yaml errors and the like
        raise UserError(f"kubeconfig {file} is not valid: {type(exc).__name__}: {exc}") from exc


def load_single_config(path: str | Path | None = None, context: str | None = None) -> SingleConfig:
    """The context ``context`` (default: current) of :func:`load_kubeconfig`."""
    config = load_kubeconfig(path, context).get(context)
    if config is None:  # load_kubeconfig has checked it; this keeps the type exact
        raise UserError(f"kubeconfig {path} has no usable context")
    return config
