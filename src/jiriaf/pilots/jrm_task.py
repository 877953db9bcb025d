"""One task of a pilot job: name the node, pick its ports, open tunnels if the site needs them,
run one JRM (``jiriaf jrm run``) until it ends, then close the tunnels.

This is what ``jiriaf pilot task`` runs on a compute node, once per JRM, started by the job
script (``srun`` on SLURM). The JRM is a child process, so the tunnels stay open while it drains
and are closed only after it has exited. SIGTERM/SIGINT are passed on to the JRM, which drains.
Facts about the task (host, pids, ports, exit code, why the JRM stopped) go to
``<pilot dir>/tasks/<node>.json`` and the JRM's log to ``<node>.log`` when that directory is
writable (the usual shared home); the pilot works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psutil
import yaml

from jiriaf.errors import UserError
from jiriaf.pilots.batch_script import (
    TASK_SPEC_ENV,
    TaskSpec,
    expand_path,
    jrm_environment,
    jrm_walltime,
    node_name,
    port_candidates,
    task_identity,
)
from jiriaf.pilots.sites import split_host_port
from jiriaf.pilots.tunnels import TunnelConfig, TunnelSupervisor, local_port_free

log = logging.getLogger(__name__)

STOP_REASON_TIMEOUT = 15.0


def node_address(setting: str) -> str:
    """The node's address: ``setting`` itself, or for 'auto' this host's first non-loopback IPv4."""
    if setting != "auto":
        return setting
    with contextlib.suppress(OSError):
        addr = socket.gethostbyname(socket.gethostname())
        if not ipaddress.ip_address(addr).is_loopback:
            return addr
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    return "127.0.0.1"


def apiserver_of(kubeconfig: Mapping[str, Any]) -> tuple[str, int]:
    """``(host, port)`` of the current context's server in a parsed kubeconfig."""
    cluster = _current_cluster(kubeconfig)
    url = urlsplit(str(cluster.get("server", "")))
    if not url.hostname:
        raise UserError("the pilot kubeconfig has no server URL")
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def _current_cluster(kubeconfig: Mapping[str, Any]) -> dict[str, Any]:
    contexts = {c.get("name"): c.get("context", {}) for c in kubeconfig.get("contexts") or []}
    ctx: dict[str, Any] = contexts.get(kubeconfig.get("current-context")) or next(iter(contexts.values()), {})
    clusters = {c.get("name"): c.get("cluster", {}) for c in kubeconfig.get("clusters") or []}
    cluster = clusters.get(ctx.get("cluster")) or next(iter(clusters.values()), None)
    if cluster is None:
        raise UserError("the pilot kubeconfig has no cluster")
    return dict(cluster)


def tunnel_kubeconfig(kubeconfig: Mapping[str, Any], api_local_port: int) -> dict[str, Any]:
    """A copy of ``kubeconfig`` whose current cluster is reached at ``127.0.0.1:<port>`` (the tunnel).

    The apiserver certificate must name 127.0.0.1 (kube-apiserver ``--tls-san``/kubeadm
    ``certSANs``); ``tls-server-name`` keeps the original host for clients that honour it.
    """
    copy: dict[str, Any] = json.loads(json.dumps(kubeconfig))
    host, _ = apiserver_of(copy)
    cluster = _current_cluster(copy)
    for entry in copy.get("clusters") or []:
        if entry.get("cluster") == cluster:
            entry["cluster"]["server"] = f"https://127.0.0.1:{api_local_port}"
            if host not in ("127.0.0.1", "localhost"):
                entry["cluster"]["tls-server-name"] = host
    return copy


def _read_text(path: str) -> str:
    return Path(expand_path(path)).read_text()


class TaskState:
    """The task's facts file (``tasks/<node>.json``); writing is best effort."""

    def __init__(self, directory: Path, node: str) -> None:
        self.path = directory / f"{node}.json"
        self.data: dict[str, Any] = {"node": node, "events": []}

    def update(self, **facts: Any) -> None:
        self.data.update(facts)
        self._write()

    def event(self, what: str) -> None:
        self.data["events"].append({"time": time.time(), "what": what})
        self._write()

    def _write(self) -> None:
        with contextlib.suppress(OSError):
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            tmp.replace(self.path)


class JRMTask:
    """Runs one JRM for a pilot task."""

    def __init__(self, spec: TaskSpec, env: Mapping[str, str], python: str | None = None) -> None:
        self.spec = spec
        self.env = dict(env)
        self.python = python or sys.executable
        self.job_id, self.index = task_identity(env)
        self.node = node_name(
            spec.template,
            site=spec.site,
            prefix=spec.prefix,
            pilot=spec.pilot_id,
            job=self.job_id,
            task=self.index,
        )
        self.task_dir = Path(spec.pilot_dir) / "tasks"
        with contextlib.suppress(OSError):
            self.task_dir.mkdir(parents=True, exist_ok=True)
        self.state = TaskState(self.task_dir, self.node)
        self.tunnel: TunnelSupervisor | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.signalled: str | None = None

    async def run(self) -> int:
        """Start the JRM and wait for it; return its exit code."""
        spec = self.spec
        self.state.update(
            host=socket.gethostname(),
            job_id=self.job_id,
            task=self.index,
            pilot=spec.pilot_id,
            task_pid=os.getpid(),
            started_at=time.time(),
        )
        supervise: asyncio.Task[None] | None = None
        log_fh: IO[bytes] | None = None
        self._install_signals()
        try:
            kubeconfig, node_ip, port, bind = await self._connectivity()
            if self.signalled is not None:
                self.state.update(exit_code=0, stop_reason=f"Stopped({self.signalled})", ended_at=time.time())
                print(
                    f"task {self.index}: {self.signalled} before the JRM started; not starting it", flush=True
                )
                return 0
            if self.tunnel is not None:
                supervise = asyncio.create_task(self.tunnel.supervise(), name="tunnel")
            now = time.time()
            job_start = float(self.env.get("JIRIAF_JOB_START") or now)
            walltime = jrm_walltime(spec.walltime, spec.margin, job_start, now)
            jrm_env = {k: v for k, v in self.env.items() if k != TASK_SPEC_ENV}
            jrm_env.update(
                jrm_environment(
                    spec,
                    node=self.node,
                    kubeconfig=kubeconfig,
                    node_ip=node_ip,
                    kubelet_port=port,
                    kubelet_bind=bind,
                    walltime=walltime,
                    job_id=self.job_id,
                )
            )
            log_fh = self._open_log()
            self.proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "jiriaf.cli",
                "jrm",
                "run",
                env=jrm_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fh if log_fh is not None else None,
                stderr=asyncio.subprocess.STDOUT if log_fh is not None else None,
            )
            self.state.update(
                jrm_pid=self.proc.pid,
                kubelet_port=port,
                node_ip=node_ip,
                walltime=walltime,
                kubeconfig=kubeconfig,
            )
            print(
                f"task {self.index}: JRM {self.node} (pid {self.proc.pid}) on {socket.gethostname()}, "
                f"kubelet port {port}, walltime {walltime}s",
                flush=True,
            )
            if self.signalled is not None:  # a signal arrived while the JRM was starting
                self.proc.send_signal(signal.SIGTERM)
            code = await self.proc.wait()
            reason = await self._stop_reason(expand_path(kubeconfig))
            self.state.update(exit_code=code, stop_reason=reason, ended_at=time.time())
            print(
                f"task {self.index}: JRM {self.node} exited with {code} ({reason or 'reason unknown'})",
                flush=True,
            )
            return code
        finally:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            if supervise is not None:
                supervise.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await supervise
            if self.tunnel is not None:
                await self.tunnel.close()
            if log_fh is not None:
                log_fh.close()

    async def _connectivity(self) -> tuple[str, str, int, str | None]:
        """``(kubeconfig, node ip, kubelet port, kubelet bind address)`` for the JRM."""
        spec = self.spec
        lo, hi = spec.kubelet_ports
        candidates = port_candidates(lo, hi, self.index, seed=sum(map(ord, self.job_id)))
        if spec.mode != "ssh" or spec.ssh is None:
            ip = node_address(spec.node_ip)
            for port in candidates:
                if local_port_free(ip, port):
                    return spec.kubeconfig, ip, port, None
            raise UserError(f"no free kubelet port in {lo}-{hi} on {ip}")
        try:
            original = yaml.safe_load(await asyncio.to_thread(_read_text, spec.kubeconfig))
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read the pilot kubeconfig {spec.kubeconfig}: {exc}") from exc
        api = split_host_port(spec.ssh["apiserver"]) if spec.ssh.get("apiserver") else apiserver_of(original)
        config = TunnelConfig.from_site(
            {
                **spec.ssh,
                **{k: expand_path(spec.ssh[k]) for k in ("identity_file", "known_hosts") if spec.ssh.get(k)},
            }
        )
        self.tunnel = TunnelSupervisor(
            config, api, kubelet_candidates=candidates, on_event=lambda m: self._tunnel_event(m)
        )
        ports = await self.tunnel.open()
        path = self.task_dir / f"{self.node}.kubeconfig"
        if not self.task_dir.is_dir():
            path = Path.home() / ".jiriaf-pilot" / f"{self.node}.kubeconfig"
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(tunnel_kubeconfig(original, ports.api_local), fh, sort_keys=False)
        self.state.update(api_local_port=ports.api_local, apiserver=f"{api[0]}:{api[1]}")
        return (
            str(path),
            str(spec.ssh.get("advertise_address", "127.0.0.1")),
            ports.kubelet,
            config.kubelet_bind,
        )

    def _tunnel_event(self, message: str) -> None:
        print(f"task {self.index}: tunnel {message}", flush=True)
        self.state.event(f"tunnel {message}")
        if self.tunnel is not None:
            self.state.update(tunnel_connections=self.tunnel.connections)

    def _open_log(self) -> IO[bytes] | None:
        try:
            return (self.task_dir / f"{self.node}.log").open("ab")
        except OSError:
            return None

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._forward, sig)

    def _forward(self, sig: signal.Signals) -> None:
        if self.signalled is None:
            self.signalled = sig.name
            self.state.event(f"{sig.name} received: the JRM drains")
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    async def _stop_reason(self, kubeconfig: str) -> str | None:
        """Why the JRM stopped: the reason of its Node's Ready condition (the JRM sets it on exit)."""
        try:
            from jiriaf.kube.raw import async_raw_client

            async with async_raw_client(kubeconfig, timeout=STOP_REASON_TIMEOUT) as client:
                resp = await client.get(f"/api/v1/nodes/{self.node}")
                if resp.status_code != 200:
                    return None
                for cond in resp.json().get("status", {}).get("conditions") or []:
                    if cond.get("type") == "Ready" and cond.get("status") != "True":
                        return str(cond.get("reason") or "") or None
        except Exception as exc:  # the reason is informative; the task's exit must not depend on it
            log.debug("could not read the stop reason of %s: %s", self.node, exc)
        return None


def run_from_environment(env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``jiriaf pilot task``: read the task specification and run the JRM."""
    env = dict(os.environ if env is None else env)
    text = env.get(TASK_SPEC_ENV)
    if not text:
        raise UserError(f"{TASK_SPEC_ENV} is not set: 'jiriaf pilot task' runs inside a pilot job")
    spec = TaskSpec.from_json(text)
    return asyncio.run(JRMTask(spec, env).run())
