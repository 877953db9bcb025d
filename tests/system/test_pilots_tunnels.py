"""SSH tunnels against a real sshd on 127.0.0.1 with a throw-away key: ports free at both ends,
a killed connection re-opened on the same ports, and a pilot's JRM that reaches the apiserver only
through its tunnel (and is reached by the apiserver only through the reverse tunnel).

On one host the two ends of a tunnel are told apart by address: the "compute node" JRM's kubelet
listens on 127.0.0.2 while the gateway's reverse forward listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest
import yaml
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node

from jiriaf.devcluster.build import kubectl
from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.devcluster.sshd import LocalSshd
from jiriaf.errors import UserError
from jiriaf.pilots.launcher import PilotRequest
from jiriaf.pilots.tunnels import TunnelConfig, TunnelSupervisor
from support import eventually

pytestmark = pytest.mark.system

NODE_SIDE = "127.0.0.2"  # the compute node's loopback, distinct from the gateway's 127.0.0.1


def tunnel_config(sshd: LocalSshd) -> TunnelConfig:
    return TunnelConfig(
        gateway=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_file=str(sshd.client_key),
        known_hosts=str(sshd.known_hosts),
        kubelet_bind=NODE_SIDE,
        keepalive=2,
    )


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _through(port: int, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"ping")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(100), 10)
    writer.close()
    return data


async def test_ports_are_free_at_both_ends_and_a_killed_connection_is_reopened(sshd: LocalSshd) -> None:
    api, api_port = await _echo_server()  # stands for the apiserver behind the gateway
    busy_gateway, busy_node, free = free_port(), free_port(), free_port()
    gateway_sock = socket.create_server(("127.0.0.1", busy_gateway))  # taken on the gateway side
    node_sock = socket.create_server((NODE_SIDE, busy_node))  # taken on the node side
    sup = TunnelSupervisor(
        tunnel_config(sshd), ("127.0.0.1", api_port), kubelet_candidates=[busy_gateway, busy_node, free]
    )
    supervise: asyncio.Task[None] | None = None
    try:
        ports = await sup.open()
        assert ports.kubelet == free
        assert await _through(ports.api_local) == b"echo:ping"
        # the reverse forward: gateway 127.0.0.1:<free> reaches the node side's 127.0.0.2:<free>
        node_kubelet = await asyncio.start_server(_reply_kubelet, NODE_SIDE, free)
        assert await _through(free) == b"kubelet:ping"

        supervise = asyncio.create_task(sup.supervise())
        sessions = sshd.session_pids()
        assert len(sessions) == 1
        os.kill(sessions[0], signal.SIGKILL)  # the tunnel dies
        await _wait(lambda: sup.connections == 2, "re-opened connection")
        assert sshd.session_pids() != sessions
        assert sup.ports == ports  # the same ports at both ends
        assert await _eventually_async(lambda: _through(ports.api_local)) == b"echo:ping"
        assert await _eventually_async(lambda: _through(free)) == b"kubelet:ping"
        node_kubelet.close()
    finally:
        if supervise is not None:
            supervise.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervise
        await sup.close()
        gateway_sock.close()
        node_sock.close()
        api.close()
    await _wait(lambda: not sshd.session_pids(), "the tunnel's session closed")


async def _reply_kubelet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(100)
    writer.write(b"kubelet:" + data)
    await writer.drain()
    writer.close()


async def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _eventually_async(fn: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def test_refused_gateway_is_a_clear_error(sshd: LocalSshd, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong_key = tmp_path / "known_hosts"
    wrong_key.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")  # a host key that is not the server's
    cfg = TunnelConfig(
        gateway=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_file=str(sshd.client_key),
        known_hosts=str(wrong_key),
    )
    sup = TunnelSupervisor(cfg, ("127.0.0.1", 1), kubelet_candidates=[free_port()])
    with pytest.raises(UserError, match="cannot open SSH connection"):
        asyncio.run(sup.open())  # the host key does not match: refused, never accepted blindly


def _renew_time(client: Any, name: str) -> float:
    lease = client.get(Lease, name, namespace="kube-node-lease")
    return datetime.fromisoformat(str(lease.spec.renewTime).replace("Z", "+00:00")).timestamp()


def test_pilot_jrm_reaches_the_apiserver_only_through_its_tunnel(
    pilots: Any, sshd: LocalSshd, cluster: LocalCluster, client: Any, ns: str, kubeconfig: Path
) -> None:
    api_port = cluster.state().ports["kube-apiserver"]
    pilots.write_sites(
        {
            "hpc": {
                "kind": "local",
                "control_plane": {
                    "kubeconfig": str(kubeconfig),
                    "mode": "ssh",
                    "ssh": {
                        "gateway": sshd.host,
                        "port": sshd.port,
                        "identity_file": str(sshd.client_key),
                        "known_hosts": str(sshd.known_hosts),
                        "kubelet_bind": NODE_SIDE,
                        "keepalive": 2,
                    },
                },
                "walltime_margin": 30,
            }
        }
    )
    pilot_id = f"t{uuid.uuid4().hex[:6]}"
    pilots.launcher.submit(PilotRequest(site="hpc", walltime=1800, pilot_id=pilot_id))
    name = f"hpc-{pilot_id}-0"
    pilots.wait_ready(client, [name])
    facts = pilots.task_facts(pilot_id)[name]
    local_port, kubelet_port, jrm_pid = facts["api_local_port"], facts["kubelet_port"], facts["jrm_pid"]

    # the JRM was given the tunnel's end, not the apiserver
    server = yaml.safe_load(Path(facts["kubeconfig"]).read_text())["clusters"][0]["cluster"]["server"]
    assert server == f"https://127.0.0.1:{local_port}" and local_port != api_port
    conns = [c for c in psutil.Process(jrm_pid).net_connections("tcp") if c.raddr]
    assert any(c.raddr.port == local_port for c in conns)
    assert not any(c.raddr.port == api_port for c in conns), "the JRM must not reach the apiserver directly"
    # ...and the apiserver reaches the JRM's kubelet (on the node side) through the reverse forward
    node = client.get(Node, name)
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == "127.0.0.1"
    assert node.status.daemonEndpoints.kubeletEndpoint.Port == kubelet_port
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(jrm_pid).net_connections("tcp")
        if c.status == "LISTEN"
    }
    assert (NODE_SIDE, kubelet_port) in listening and ("127.0.0.1", kubelet_port) not in listening
    pilots.run_pod(client, ns, name, "via-tunnel", "echo through-the-tunnel")
    logs = subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), "-n", ns, "logs", "via-tunnel"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert logs.stdout.strip() == "through-the-tunnel", logs.stderr

    # kill the tunnel: it is re-opened on the same ports and the JRM keeps its lease
    sessions = sshd.session_pids()
    assert sessions
    killed_at = time.time()
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    eventually(
        lambda: pilots.task_facts(pilot_id)[name].get("tunnel_connections") == 2,
        timeout=60,
        what="the tunnel re-opened",
    )
    assert pilots.task_facts(pilot_id)[name]["api_local_port"] == local_port
    eventually(
        lambda: _renew_time(client, name) > killed_at + 1, timeout=60, what="a lease renewal after the kill"
    )
    assert any(c.type == "Ready" and c.status == "True" for c in client.get(Node, name).status.conditions)

    record = pilots.launcher.cancel(pilot_id, drain_timeout=90)
    assert record.state == "canceled" and record.exit_code == 0, pilots.logs(pilot_id)
    events = [e["what"] for e in pilots.task_facts(pilot_id)[name]["events"]]
    assert events[-1] == "tunnel closed"
    eventually(lambda: not sshd.session_pids(), timeout=30, what="the tunnel's ssh session ended")
