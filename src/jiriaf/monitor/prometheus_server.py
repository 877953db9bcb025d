"""A real Prometheus (Debian's ``prometheus`` package) for the tests and the demo, on 127.0.0.1 only.

:class:`PrometheusServer` starts the binary with a configuration file and a data directory it
owns, waits until ``/-/ready`` answers, answers PromQL queries and target lists over the HTTP API,
reloads the configuration (SIGHUP) and stops the process by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2

from jiriaf.errors import UserError

INSTALL_HINT = "install Debian's Prometheus: apt-get install prometheus"


def find_prometheus() -> str:
    """The ``prometheus`` binary (PATH, then /usr/bin); UserError with the install hint otherwise."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        raise UserError(f"prometheus is not installed; {INSTALL_HINT}")
    return found


class PrometheusServer:
    """One Prometheus process listening on ``127.0.0.1:<port>``, data and log under ``directory``."""

    def __init__(
        self,
        config: Path,
        directory: Path,
        port: int,
        *,
        binary: str | None = None,
        retention: str = "1d",
    ) -> None:
        self.config = Path(config).absolute()
        self.directory = Path(directory).absolute()
        self.port = port
        self.binary = binary or find_prometheus()
        self.retention = retention
        self.log = self.directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start Prometheus and wait until it is ready; UserError (with the log's tail) if it is not."""
        if not self.config.is_file():
            raise UserError(f"Prometheus configuration {self.config} does not exist")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                self.argv(), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"prometheus exited with {self.proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise UserError(f"prometheus was not ready after {timeout:.0f}s: {self._log_tail()}")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL after ``grace`` seconds."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def reload(self) -> None:
        """Re-read the configuration file (SIGHUP)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGHUP)

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        resp = httpx2.get(f"{self.url}{path}", params=params, timeout=30)
        body = resp.json()
        if body.get("status") != "success":
            raise UserError(f"prometheus {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        data = self._api("/api/v1/query", {"query": promql})
        result = data.get("result")
        return list(result) if isinstance(result, list) else []

    def targets(self) -> list[dict[str, Any]]:
        """The active targets with their labels, health and last error."""
        return list(self._api("/api/v1/targets", {"state": "active"}).get("activeTargets") or [])

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
