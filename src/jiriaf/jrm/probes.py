"""Liveness, readiness and startup probes: exec, httpGet and tcpSocket, as the kubelet runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe attempt."""

    success: bool
    message: str = ""


@dataclass(frozen=True)
class ProbeTiming:
    """The timing fields of a probe spec, with the kubelet's defaults."""

    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeTiming:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


def _port(raw: Any, container: Mapping[str, Any]) -> int | None:
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        if raw.isdigit():
            return int(raw)
        for port in container.get("ports") or []:
            if port.get("name") == raw:
                return int(port["containerPort"])
    return None


async def _exec(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float) -> ProbeResult:
    if not argv:
        return ProbeResult(False, "exec probe without command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return ProbeResult(False, f"exec probe failed to start: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return ProbeResult(False, f"command timed out after {timeout:g}s")
    text = out.decode(errors="replace").strip()[-512:]
    if proc.returncode == 0:
        return ProbeResult(True, text)
    return ProbeResult(False, f"command exited with {proc.returncode}: {text}")


async def _http(spec: Mapping[str, Any], host: str, port: int, timeout: float) -> ProbeResult:
    scheme = str(spec.get("scheme") or "HTTP").lower()
    path = str(spec.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    target = str(spec.get("host") or host)
    headers = {h["name"]: h.get("value", "") for h in spec.get("httpHeaders") or [] if h.get("name")}
    headers.setdefault("User-Agent", "kube-probe/1.34")
    url = f"{scheme}://{target}:{port}{path}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers=headers, ssl=False, allow_redirects=True) as resp,
        ):
            if 200 <= resp.status < 400:
                return ProbeResult(True, f"HTTP {resp.status}")
            return ProbeResult(False, f"HTTP probe failed with statuscode: {resp.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return ProbeResult(False, f'Get "{url}": {type(exc).__name__}: {exc}')


async def _tcp(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, f"dial tcp {host}:{port}: {type(exc).__name__}: {exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True)


async def run_probe(
    probe: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    host: str,
    env: Mapping[str, str],
    cwd: Path,
    rewrite: Callable[[str], str],
) -> ProbeResult:
    """Run one attempt of ``probe`` against a container reachable at ``host``.

    ``rewrite`` maps mountPaths in an exec command to their materialised paths, as for the
    container's own command.
    """
    timeout = ProbeTiming.of(probe).timeout
    if "exec" in probe:
        argv = [rewrite(str(a)) for a in (probe["exec"] or {}).get("command") or []]
        return await _exec(argv, env, cwd, timeout)
    if "httpGet" in probe:
        port = _port(probe["httpGet"].get("port"), container)
        if port is None:
            return ProbeResult(False, f"unknown port {probe['httpGet'].get('port')!r}")
        return await _http(probe["httpGet"], host, port, timeout)
    if "tcpSocket" in probe:
        port = _port(probe["tcpSocket"].get("port"), container)
        if port is None:
            return ProbeResult(False, f"unknown port {probe['tcpSocket'].get('port')!r}")
        return await _tcp(str(probe["tcpSocket"].get("host") or host), port, timeout)
    return ProbeResult(False, "probe type not supported by this node (exec, httpGet and tcpSocket are)")
