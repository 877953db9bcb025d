"""The kubelet API of the JRM against the real apiserver: client certificates of the cluster CA,
ServiceAccount tokens checked with TokenReview, access decided with SubjectAccessReview (RBAC)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from aiohttp import web

from jiriaf.devcluster import pki
from jiriaf.devcluster.build import kubectl
from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.jrm.auth import Authenticator
from jiriaf.jrm.server import KubeletServer
from jiriaf.jrm.tls import ensure_serving_cert, kubeconfig_client_ca, server_ssl_context
from jiriaf.kube.raw import async_raw_client

pytestmark = pytest.mark.integration


@dataclass
class OneContainerLogs:
    """A LogSource with one running container whose files the test writes (the JRM's pod controller
    is the source in production; these tests are about the way in, not about the runtime)."""

    namespace: str = "default"
    pod: str = "p"
    container: str = "app"
    files: list[Path] = field(default_factory=list)
    running: bool = True

    def log_files(self, namespace: str, pod: str, container: str, previous: bool) -> list[Path] | None:
        if (namespace, pod, container) != (self.namespace, self.pod, self.container):
            return None
        return [] if previous else list(self.files)

    def is_running(self, namespace: str, pod: str, container: str) -> bool:
        return self.running


@dataclass
class Node:
    server: KubeletServer
    name: str
    serving_cert: Path
    logs: OneContainerLogs

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def client(self, cert: pki.CertPair | None = None, token: str | None = None) -> httpx2.AsyncClient:
        ctx = ssl.create_default_context(cafile=str(self.serving_cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.AsyncClient(base_url=self.base_url, verify=ctx, headers=headers, timeout=30)


@pytest.fixture()
async def node(cluster: LocalCluster, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Node]:
    name = f"kl-{uuid.uuid4().hex[:8]}"
    cert, key = ensure_serving_cert(tmp_path, name, ["127.0.0.1"])
    client_ca = kubeconfig_client_ca(kubeconfig)
    assert client_ca == cluster.ca_cert.read_bytes()
    authenticator = Authenticator.from_kubeconfig(kubeconfig)
    logs = OneContainerLogs()
    server = KubeletServer(
        node_name=name,
        log_source=logs,
        pods_source=lambda: [{"metadata": {"namespace": "default", "name": "p"}}],
        authenticator=authenticator,
        host="127.0.0.1",
        port=free_port(),
        ssl_context=server_ssl_context(cert, key, client_ca),
    )

    async def metrics_resource(request: web.Request) -> web.StreamResponse:
        return web.Response(text="# metrics\n")

    server.add_route("GET", "/metrics/resource", metrics_resource)
    await server.start()
    try:
        yield Node(server, name, cert, logs)
    finally:
        await server.stop()
        await authenticator.aclose()


def pair(cluster: LocalCluster, name: str) -> pki.CertPair:
    return pki.CertPair(cluster.pki_dir / f"{name}.crt", cluster.pki_dir / f"{name}.key")


async def test_no_credentials_is_401_and_healthz_is_open(node: Node) -> None:
    async with node.client() as client:
        resp = await client.get("/pods")
        assert (resp.status_code, resp.text) == (401, "Unauthorized")
        assert (await client.get("/containerLogs/default/p/c")).status_code == 401
        health = await client.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok")
    async with node.client(token="not-a-token") as client:
        assert (await client.get("/pods")).status_code == 401


async def test_client_cert_of_unknown_ca_is_refused_in_the_tls_handshake(node: Node, tmp_path: Path) -> None:
    other = pki.ensure_ca(tmp_path / "other", "ca", "not-the-cluster-ca")
    # same subject as the apiserver's kubelet-client certificate, signed by the wrong CA
    fake = pki.issue_cert(
        other,
        tmp_path / "other",
        "fake",
        "kube-apiserver-kubelet-client",
        orgs=("system:masters",),
        client=True,
    )
    async with node.client(cert=fake) as client:
        with pytest.raises(httpx2.TransportError):
            await client.get("/pods")


async def test_apiserver_kubelet_client_cert_is_allowed(cluster: LocalCluster, node: Node) -> None:
    async with node.client(cert=pair(cluster, "apiserver-kubelet-client")) as client:
        resp = await client.get("/pods")
        assert resp.status_code == 200, resp.text
        assert resp.json()["kind"] == "PodList"
        assert resp.json()["items"] == [{"metadata": {"namespace": "default", "name": "p"}}]
        resp = await client.get("/containerLogs/default/p/c")  # authorized, then not found
        assert (resp.status_code, resp.text) == (404, 'container "c" not found in pod "p"')


async def test_metrics_server_cert_reaches_metrics_but_not_proxy(cluster: LocalCluster, node: Node) -> None:
    """The bootstrap RBAC grants system:metrics-server nodes/metrics get, and nothing on nodes/proxy."""
    async with node.client(cert=pair(cluster, "metrics-server-client")) as client:
        resp = await client.get("/metrics/resource")
        assert resp.status_code == 200, resp.text
        resp = await client.get("/pods")
        assert (resp.status_code, resp.text) == (
            403,
            "Forbidden (user=system:metrics-server, verb=get, resource=nodes, subresource=proxy)",
        )


async def _created(api: httpx2.AsyncClient, path: str, body: dict[str, object]) -> dict[str, object]:
    resp = await api.post(path, json=body)
    assert resp.status_code in (200, 201), resp.text
    data = resp.json()
    assert isinstance(data, dict)
    return data


async def test_service_account_token_needs_rbac_for_nodes_proxy(kubeconfig: Path, node: Node) -> None:
    ns = f"kl-{uuid.uuid4().hex[:8]}"
    role = f"jiriaf-test-{ns}"
    async with async_raw_client(kubeconfig) as api:
        await _created(
            api, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        try:
            await _created(
                api,
                f"/api/v1/namespaces/{ns}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
            )
            issued = await _created(
                api,
                f"/api/v1/namespaces/{ns}/serviceaccounts/reader/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 600},
                },
            )
            status = issued["status"]
            assert isinstance(status, dict)
            token = str(status["token"])
            user = f"system:serviceaccount:{ns}:reader"

            async with node.client(token=token) as client:
                resp = await client.get("/pods")
                assert (resp.status_code, resp.text) == (
                    403,
                    f"Forbidden (user={user}, verb=get, resource=nodes, subresource=proxy)",
                )

                await _created(
                    api,
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRole",
                        "metadata": {"name": role},
                        "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}],
                    },
                )
                await _created(
                    api,
                    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRoleBinding",
                        "metadata": {"name": role},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": role,
                        },
                        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
                    },
                )
                # the apiserver's RBAC authorizer learns of the binding through its informers
                resp = await client.get("/pods")
                deadline = time.monotonic() + 60
                while resp.status_code == 403 and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                    resp = await client.get("/pods")
                assert resp.status_code == 200, resp.text
                assert resp.json()["kind"] == "PodList"
                # the role grants get only: a POST (verb create) is still refused
                resp = await client.post("/pods")
                assert (resp.status_code, resp.text) == (
                    403,
                    f"Forbidden (user={user}, verb=create, resource=nodes, subresource=proxy)",
                )
        finally:
            for path in (
                f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{role}",
                f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}",
                f"/api/v1/namespaces/{ns}",
            ):
                await api.delete(path)


async def _kubectl(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    # a subprocess that does not block the event loop the kubelet server runs on
    proc = await asyncio.create_subprocess_exec(
        kubectl(),
        "--kubeconfig",
        str(kubeconfig),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_kubectl_logs_through_the_apiserver(kubeconfig: Path, node: Node, tmp_path: Path) -> None:
    """kubectl -> apiserver -> (kubelet-client certificate) -> this server -> the container's files."""
    ns = f"kl-{uuid.uuid4().hex[:8]}"
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    stdout.write_bytes(b"out 1\nout 2\n")
    stderr.write_bytes(b"err 1\n")
    node.logs.namespace, node.logs.pod, node.logs.files = ns, "p", [stdout, stderr]
    async with async_raw_client(kubeconfig) as api:
        await _created(
            api, "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}}
        )
        try:
            resp = await api.patch(
                f"/api/v1/nodes/{node.name}/status",
                content=json.dumps(
                    {
                        "status": {
                            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                            "daemonEndpoints": {"kubeletEndpoint": {"Port": node.server.port}},
                        }
                    }
                ),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert resp.status_code == 200, resp.text
            await _created(
                api, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
            # like any user, wait for the service-account controller to create the default account
            deadline = time.monotonic() + 60
            while (await api.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default")).status_code == 404:
                assert time.monotonic() < deadline, "no default ServiceAccount"
                await asyncio.sleep(0.2)
            await _created(
                api,
                f"/api/v1/namespaces/{ns}/pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p"},
                    "spec": {"nodeName": node.name, "containers": [{"name": "app", "image": "none"}]},
                },
            )
            assert await _kubectl(kubeconfig, "logs", "-n", ns, "p") == (0, "out 1\nout 2\nerr 1\n", "")
            assert await _kubectl(kubeconfig, "logs", "-n", ns, "p", "--tail=2") == (0, "out 2\nerr 1\n", "")
            code, out, err = await _kubectl(kubeconfig, "logs", "-n", ns, "p", "--previous")
            assert (code, out) == (1, "")
            expected = 'previous terminated container "app" in pod "p" not found'
            assert err == f"Error from server (BadRequest): {expected}\n"

            follow = asyncio.create_task(_kubectl(kubeconfig, "logs", "-n", ns, "p", "-f", "--timestamps"))
            await asyncio.sleep(1)  # not a timing assertion: the line below is appended before or after
            with stdout.open("ab") as fh:
                fh.write(b"out 3\n")
            node.logs.running = False  # the container exits: kubectl logs -f returns
            code, out, err = await asyncio.wait_for(follow, 60)
            assert code == 0, err
            lines = [line.split(" ", 1) for line in out.splitlines()]
            assert [text for _, text in lines] in (
                ["out 1", "out 2", "err 1", "out 3"],
                ["out 1", "out 2", "out 3", "err 1"],
            )
            assert all(stamp.endswith("Z") and len(stamp) == 30 for stamp, _ in lines)
        finally:
            await api.delete(f"/api/v1/namespaces/{ns}/pods/p", params={"gracePeriodSeconds": "0"})
            await api.delete(f"/api/v1/namespaces/{ns}")
            await api.delete(f"/api/v1/nodes/{node.name}")
