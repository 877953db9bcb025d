"""SSH tunnels between a JRM on a compute node and the control plane, through a gateway.

When compute nodes cannot reach the apiserver, each JRM task opens one SSH connection (asyncssh)
to the site's gateway and carries two forwards over it:

* **apiserver** (``-L``): ``127.0.0.1:<api port>`` on the compute node -> the apiserver as the
  gateway sees it. The JRM's kubeconfig points at that local port.
* **kubelet** (``-R``): ``<remote_bind>:<kubelet port>`` on the gateway -> the JRM's kubelet API on
  the compute node. The same port number is used at both ends (it is the node's
  ``daemonEndpoints`` port), so it is chosen free at both ends: bindable locally *and* accepted by
  the gateway for a remote forward.

:class:`TunnelSupervisor` opens them, notices a lost connection (SSH keep-alives, or the
connection closing) and re-opens both forwards on the same ports, and closes everything at the
end. Host keys are always verified (known_hosts); there is no helper service of any kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from jiriaf.errors import UserError

log = logging.getLogger(__name__)

MAX_PORT_TRIES = 64
RETRY_MIN = 1.0
RETRY_MAX = 10.0


@dataclass(frozen=True)
class TunnelConfig:
    """Where and how to connect (the ``ssh`` section of a site, as the task receives it)."""

    gateway: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    jump: str | None = None
    remote_bind: str = "127.0.0.1"
    kubelet_bind: str = "127.0.0.1"
    keepalive: float = 10.0

    @classmethod
    def from_site(cls, data: dict[str, Any]) -> TunnelConfig:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in keys})


@dataclass(frozen=True)
class TunnelPorts:
    """The ports the tunnels hold: the node-side apiserver port and the kubelet port (both ends)."""

    api_local: int
    kubelet: int


def local_port_free(address: str, port: int) -> bool:
    """True when ``address:port`` can be bound on this host right now."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


class TunnelSupervisor:
    """One SSH connection carrying the apiserver and kubelet forwards of one JRM, kept open."""

    def __init__(
        self,
        config: TunnelConfig,
        apiserver: tuple[str, int],
        *,
        kubelet_candidates: Sequence[int],
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.apiserver = apiserver
        self.kubelet_candidates = list(kubelet_candidates)
        self.on_event = on_event or (lambda _m: None)
        self.ports: TunnelPorts | None = None
        self.connections = 0  # successful (re-)openings
        self._conn: asyncssh.SSHClientConnection | None = None
        self._listeners: list[asyncssh.SSHListener] = []
        self._closing = False

    # ------------------------------------------------------------------ connection
    async def _connect(self) -> asyncssh.SSHClientConnection:
        c = self.config
        options: dict[str, Any] = {
            "port": c.port,
            "keepalive_interval": c.keepalive,
            "keepalive_count_max": 3,
            "connect_timeout": 30,
        }
        if c.user:
            options["username"] = c.user
        if c.identity_file:
            options["client_keys"] = [c.identity_file]
        if c.known_hosts:
            options["known_hosts"] = c.known_hosts
        if c.jump:
            options["tunnel"] = c.jump
        return await asyncssh.connect(c.gateway, **options)

    def _event(self, message: str) -> None:
        log.info("tunnel: %s", message)
        self.on_event(message)

    # ------------------------------------------------------------------ open
    async def open(self) -> TunnelPorts:
        """Connect and open both forwards, choosing ports free at both ends."""
        try:
            conn = await self._connect()
        except (OSError, asyncssh.Error) as exc:
            raise UserError(f"cannot open SSH connection to {self._where()}: {_describe(exc)}") from exc
        try:
            api = await conn.forward_local_port("127.0.0.1", 0, *self.apiserver)
            kubelet_port, kubelet = await self._remote_forward_any(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._listeners = [api, kubelet]
        self.ports = TunnelPorts(api_local=api.get_port(), kubelet=kubelet_port)
        self.connections += 1
        self._event(
            f"open via {self._where()}: 127.0.0.1:{self.ports.api_local} -> "
            f"{self.apiserver[0]}:{self.apiserver[1]}, {self.config.remote_bind}:{kubelet_port} (gateway) -> "
            f"{self.config.kubelet_bind}:{kubelet_port}"
        )
        return self.ports

    async def _remote_forward_any(
        self, conn: asyncssh.SSHClientConnection
    ) -> tuple[int, asyncssh.SSHListener]:
        c = self.config
        tried = 0
        for port in self.kubelet_candidates:
            if tried >= MAX_PORT_TRIES:
                break
            if not local_port_free(c.kubelet_bind, port):
                continue
            tried += 1
            try:
                listener = await conn.forward_remote_port(c.remote_bind, port, c.kubelet_bind, port)
            except asyncssh.ChannelListenError:
                continue  # taken on the gateway
            return port, listener
        raise UserError(
            f"no kubelet port free on both this node and the gateway {c.gateway} "
            f"(tried {tried} of {len(self.kubelet_candidates)})"
        )

    # ------------------------------------------------------------------ supervise
    async def supervise(self) -> None:
        """Re-open the forwards, on the same ports, whenever the connection is lost; runs until
        :meth:`close` or cancellation."""
        assert self.ports is not None, "open() first"
        delay = RETRY_MIN
        while not self._closing:
            conn = self._conn
            if conn is not None:
                await conn.wait_closed()
                if self._closing:
                    return
                self._event("connection lost; re-opening")
                self._conn = None
                self._listeners = []
            try:
                await self._reopen()
                delay = RETRY_MIN
            except (OSError, asyncssh.Error, asyncssh.ChannelListenError) as exc:
                self._event(f"re-open failed ({_describe(exc)}); retrying in {delay:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _reopen(self) -> None:
        assert self.ports is not None
        c = self.config
        conn = await self._connect()
        try:
            api = await conn.forward_local_port("127.0.0.1", self.ports.api_local, *self.apiserver)
            kubelet = await conn.forward_remote_port(
                c.remote_bind, self.ports.kubelet, c.kubelet_bind, self.ports.kubelet
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._listeners = [api, kubelet]
        self.connections += 1
        self._event(f"re-opened (connection {self.connections}) on the same ports")

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        """Close the forwards and the connection."""
        self._closing = True
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 10)
        self._event("closed")

    def _where(self) -> str:
        c = self.config
        who = f"{c.user}@" if c.user else ""
        hop = f" via {c.jump}" if c.jump else ""
        return f"{who}{c.gateway}:{c.port}{hop}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, asyncssh.ChannelListenError):
        return f"port forward refused by the gateway: {exc}"
    return str(exc) or type(exc).__name__
