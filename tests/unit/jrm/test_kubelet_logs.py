"""jiriaf.jrm.server: /containerLogs (tail, limitBytes, timestamps, since, previous, follow), /pods,
/healthz and request checks, over real TLS on 127.0.0.1 with a client certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from aiohttp import web

from jiriaf.devcluster import pki
from jiriaf.devcluster.cluster import free_port
from jiriaf.jrm import server as server_module
from jiriaf.jrm.auth import Attributes, Authenticator, Identity
from jiriaf.jrm.server import KubeletServer, format_timestamp, parse_log_options, tail_start
from jiriaf.jrm.tls import ensure_serving_cert, server_ssl_context

pytestmark = pytest.mark.unit

NODE = "node-a"
NS = "ns1"
POD = "web-0"
USER = "log-reader"  # CN of the test's client certificate


@dataclass
class DirectoryLogs:
    """A LogSource over files the test writes: runs per container, newest last (in the JRM the pod
    controller is the source, mapping names through its own records)."""

    root: Path
    runs: dict[tuple[str, str, str], list[list[Path]]] = field(default_factory=dict)
    running: set[tuple[str, str, str]] = field(default_factory=set)
    only_existing: bool = False  # name only the files that exist (a source may do so)

    def new_run(self, container: str, stdout: bytes = b"", stderr: bytes = b"") -> tuple[Path, Path]:
        key = (NS, POD, container)
        runs = self.runs.setdefault(key, [])
        run_dir = self.root / container / str(len(runs))
        run_dir.mkdir(parents=True)
        out, err = run_dir / "stdout.log", run_dir / "stderr.log"
        out.write_bytes(stdout)
        err.write_bytes(stderr)
        runs.append([out, err])
        self.running.add(key)
        return out, err

    def log_files(self, namespace: str, pod: str, container: str, previous: bool) -> list[Path] | None:
        runs = self.runs.get((namespace, pod, container))
        if runs is None:
            return None
        wanted = runs[-2:-1] if previous else runs[-1:]
        files = list(wanted[0]) if wanted else []
        return [f for f in files if f.exists()] if self.only_existing else files

    def is_running(self, namespace: str, pod: str, container: str) -> bool:
        return (namespace, pod, container) in self.running


@dataclass
class Harness:
    server: KubeletServer
    logs: DirectoryLogs
    client: httpx2.AsyncClient  # presents the test user's client certificate
    anonymous: httpx2.AsyncClient  # presents nothing
    decisions: list[tuple[Identity, Attributes]]

    def url(self, container: str, **query: str) -> str:
        return httpx2.URL(f"/containerLogs/{NS}/{POD}/{container}", params=query).raw_path.decode()

    async def logs_text(self, container: str, **query: str) -> str:
        resp = await self.client.get(self.url(container, **query))
        assert resp.status_code == 200, resp.text
        return resp.text


@pytest.fixture()
def pki_dir(tmp_path: Path) -> Path:
    return tmp_path / "pki"


@pytest.fixture()
async def harness(tmp_path: Path, pki_dir: Path) -> AsyncIterator[Harness]:
    ca = pki.ensure_ca(pki_dir, "client-ca", "test-client-ca")
    user = pki.issue_cert(ca, pki_dir, "user", USER, orgs=("log-readers",), client=True)
    cert, key = ensure_serving_cert(tmp_path / "serving", NODE, ["127.0.0.1"])
    decisions: list[tuple[Identity, Attributes]] = []

    # Isolation test double: the unit tier has no apiserver to post SubjectAccessReviews to, so this
    # authorizer stands in for it, allowing only the test user's reads of nodes/proxy. The real
    # SubjectAccessReview path is exercised in tests/integration/test_kubelet_auth.py.
    async def authorize(identity: Identity, attrs: Attributes) -> bool:
        decisions.append((identity, attrs))
        return identity.user == USER and attrs == Attributes(verb="get", name=NODE, subresource="proxy")

    logs = DirectoryLogs(tmp_path / "logs")
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": NS, "name": POD}}]
    server = KubeletServer(
        node_name=NODE,
        log_source=logs,
        pods_source=lambda: pods,
        authenticator=Authenticator(authorize=authorize, authorization_ttl=0),
        host="127.0.0.1",
        port=free_port(),
        ssl_context=server_ssl_context(cert, key, ca.cert),
    )

    async def stats(request: web.Request) -> web.StreamResponse:
        return web.json_response({"node": {"nodeName": NODE}})

    server.add_route("GET", "/stats/summary", stats)
    await server.start()
    base = f"https://127.0.0.1:{server.port}"
    with_cert = ssl.create_default_context(cafile=str(cert))
    with_cert.load_cert_chain(str(user.cert), str(user.key))
    without_cert = ssl.create_default_context(cafile=str(cert))
    client = httpx2.AsyncClient(base_url=base, verify=with_cert, timeout=30)
    anonymous = httpx2.AsyncClient(base_url=base, verify=without_cert, timeout=30)
    try:
        yield Harness(server, logs, client, anonymous, decisions)
    finally:
        await client.aclose()
        await anonymous.aclose()
        await server.stop()


def numbered(prefix: str, count: int, start: int = 0) -> bytes:
    return "".join(f"{prefix} {i}\n" for i in range(start, start + count)).encode()


# ---------------------------------------------------------------------------------- plain reads


async def test_stdout_then_stderr(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"out 1\nout 2\n", stderr=b"err 1\n")
    assert await harness.logs_text("app") == "out 1\nout 2\nerr 1\n"


async def test_tail_of_big_file_and_merged_tail(harness: Harness) -> None:
    out, _err = harness.logs.new_run("app", stdout=numbered("out", 300_000), stderr=numbered("err", 3))
    assert out.stat().st_size > 3_000_000
    text = await harness.logs_text("app", tailLines="5")
    assert text == "out 299998\nout 299999\nerr 0\nerr 1\nerr 2\n"
    assert await harness.logs_text("app", tailLines="2") == "err 1\nerr 2\n"
    assert await harness.logs_text("app", tailLines="0") == ""
    whole = await harness.logs_text("app", tailLines="1000000")
    assert whole.count("\n") == 300_003


def test_tail_start_reads_only_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 GiB file (sparse) whose last lines are found with a few block reads."""
    path = tmp_path / "big.log"
    with path.open("wb") as fh:
        fh.truncate(1 << 30)
        fh.seek(0, os.SEEK_END)
        fh.write(numbered("line", 1000))
    size = path.stat().st_size
    read = 0
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        nonlocal read
        data = real_pread(fd, n, offset)
        read += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    fd = os.open(path, os.O_RDONLY)
    try:
        start, found = tail_start(fd, size, 10)
        assert found == 10
        assert real_pread(fd, size - start, start) == numbered("line", 10, start=990)
        assert read <= 2 * server_module.TAIL_BLOCK
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("content", "lines", "expected"),
    [
        (b"", 3, b""),
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),  # a final line without newline counts
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"\n\n\n", 2, b"\n\n"),
        (b"x" * 200_000 + b"\nlast\n", 2, b"x" * 200_000 + b"\nlast\n"),  # a line longer than a block
    ],
)
def test_tail_start_edges(tmp_path: Path, content: bytes, lines: int, expected: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        start, _found = tail_start(fd, len(content), lines)
        assert content[start:] == expected
    finally:
        os.close(fd)


async def test_limit_bytes(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"0123456789\nabcdef\n", stderr=b"ERR\n")
    assert await harness.logs_text("app", limitBytes="4") == "0123"
    assert await harness.logs_text("app", limitBytes="14") == "0123456789\nabc"
    assert await harness.logs_text("app", limitBytes="1000") == "0123456789\nabcdef\nERR\n"
    # limitBytes counts the timestamps too
    out, err = harness.logs.runs[(NS, POD, "app")][-1]
    os.utime(out, ns=(0, 0))
    os.utime(err, ns=(0, 0))
    stamp = format_timestamp(0).decode()
    full = f"{stamp} 0123456789\n{stamp} abcdef\n{stamp} ERR\n"
    assert await harness.logs_text("app", limitBytes="40", timestamps="true") == full[:40]


async def test_timestamps_are_file_mtimes(harness: Harness) -> None:
    out, err = harness.logs.new_run("app", stdout=b"one\n\ntwo", stderr=b"three\n")
    out_ns = 1_700_000_000_123_456_789
    err_ns = 1_700_000_100_000_000_001
    os.utime(out, ns=(out_ns, out_ns))
    os.utime(err, ns=(err_ns, err_ns))
    text = await harness.logs_text("app", timestamps="1")
    t_out, t_err = format_timestamp(out_ns).decode(), format_timestamp(err_ns).decode()
    assert t_out == "2023-11-14T22:13:20.123456789Z"
    # the last stdout line has no newline: served as it is, and stderr's first line follows it
    assert text == f"{t_out} one\n{t_out} \n{t_out} two{t_err} three\n"


async def test_since_skips_files_older_than_the_bound(harness: Harness) -> None:
    out, _err = harness.logs.new_run("app", stdout=b"old\n", stderr=b"new\n")
    hour_ago = time.time_ns() - 3600 * 1_000_000_000
    os.utime(out, ns=(hour_ago, hour_ago))
    assert await harness.logs_text("app", sinceSeconds="60") == "new\n"
    assert await harness.logs_text("app", sinceSeconds="7200") == "old\nnew\n"
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert await harness.logs_text("app", sinceTime=since) == "new\n"


async def test_previous_run(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"first run\n", stderr=b"first run failed\n")
    resp = await harness.client.get(harness.url("app", previous="true"))
    assert resp.status_code == 400
    assert resp.text == 'previous terminated container "app" in pod "web-0" not found'
    harness.logs.new_run("app", stdout=b"second run\n")
    assert await harness.logs_text("app", previous="true") == "first run\nfirst run failed\n"
    assert await harness.logs_text("app") == "second run\n"
    # previous never follows: the earlier run has ended
    assert await harness.logs_text("app", previous="true", follow="true") == "first run\nfirst run failed\n"


async def test_unknown_pod_and_container_are_404(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"x\n")
    resp = await harness.client.get(f"/containerLogs/{NS}/other/app")
    assert (resp.status_code, resp.text) == (404, 'pod "other" does not exist')
    resp = await harness.client.get(harness.url("sidecar"))
    assert (resp.status_code, resp.text) == (404, 'container "sidecar" not found in pod "web-0"')


async def test_bad_names_and_queries(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"x\n")
    for path in (
        f"/containerLogs/{NS}/Web_0/app",
        f"/containerLogs/{NS}/{POD}/..",
        f"/containerLogs/{NS}/{POD}/%2e%2e%2fetc",
        f"/containerLogs/-ns/{POD}/app",
        f"/containerLogs/{NS}/{POD}/{'c' * 64}",
    ):
        resp = await harness.client.get(path)
        assert resp.status_code in (400, 404), path  # never served from a path built of the names
        if resp.status_code == 400:
            assert "DNS-1123" in resp.text
    assert (await harness.client.get(harness.url("app", tailLines="x"))).status_code == 400
    assert (await harness.client.get(harness.url("app", tailLines="-1"))).status_code == 422
    assert (await harness.client.get(harness.url("app", limitBytes="0"))).status_code == 422
    resp = await harness.client.get(harness.url("app", sinceSeconds="5", sinceTime="2024-01-01T00:00:00Z"))
    assert resp.status_code == 422


def test_parse_log_options() -> None:
    now = 1_000 * 1_000_000_000
    opts = parse_log_options(
        {"follow": "", "timestamps": "True", "previous": "0", "tailLines": "7", "sinceSeconds": "10"}, now
    )
    assert (opts.follow, opts.timestamps, opts.previous, opts.tail_lines) == (True, True, False, 7)
    assert opts.since_ns == now - 10 * 1_000_000_000
    opts = parse_log_options({"sinceTime": "2024-01-02T03:04:05.5+01:00"})
    assert (
        opts.since_ns == int(dt.datetime(2024, 1, 2, 2, 4, 5, tzinfo=dt.UTC).timestamp()) * 10**9 + 5 * 10**8
    )
    assert parse_log_options({}) == server_module.LogOptions()


# ---------------------------------------------------------------------------------- follow


async def _collect(client: httpx2.AsyncClient, url: str, sink: list[bytes]) -> None:
    async with client.stream("GET", url) as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_bytes():
            sink.append(chunk)


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


async def test_follow_streams_appended_lines_and_stops_at_eof_of_terminated_container(
    harness: Harness,
) -> None:
    out, err = harness.logs.new_run("app", stdout=b"before\n", stderr=b"")
    sink: list[bytes] = []
    task = asyncio.create_task(_collect(harness.client, harness.url("app", follow="true"), sink))
    try:
        await _until(lambda: b"".join(sink) == b"before\n", "the existing line")
        _append(out, b"out 1\npart")
        _append(err, b"err 1\n")
        await _until(lambda: b"out 1\n" in b"".join(sink) and b"err 1\n" in b"".join(sink), "appended lines")
        assert b"part" not in b"".join(sink)  # a partial line waits for its newline
        _append(out, b"ial\n")
        await _until(lambda: b"partial\n" in b"".join(sink), "the completed line")
        # the container writes its last words and exits: the stream ends after them
        _append(err, b"last words\n")
        harness.logs.running.discard((NS, POD, "app"))
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    text = b"".join(sink).decode()
    assert text.startswith("before\n")
    assert sorted(text.splitlines()) == sorted(["before", "out 1", "err 1", "partial", "last words"])


async def test_follow_picks_up_a_file_that_appears_later(harness: Harness) -> None:
    harness.logs.only_existing = True
    _out, err = harness.logs.new_run("app", stdout=b"out\n")
    err.unlink()
    sink: list[bytes] = []
    task = asyncio.create_task(_collect(harness.client, harness.url("app", follow="true"), sink))
    try:
        await _until(lambda: b"out\n" in b"".join(sink), "the stdout line")
        err.write_bytes(b"err appeared\n")
        await _until(lambda: b"err appeared\n" in b"".join(sink), "the line of the new stderr file")
        harness.logs.running.clear()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    assert b"".join(sink) == b"out\nerr appeared\n"


async def test_follow_of_terminated_container_returns_what_is_there(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"done\n", stderr=b"no newline")
    harness.logs.running.clear()
    text = await asyncio.wait_for(harness.logs_text("app", follow="true"), 30)
    assert text == "done\nno newline"


async def test_follow_ends_when_the_container_restarts(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"run 0\n")
    sink: list[bytes] = []
    task = asyncio.create_task(_collect(harness.client, harness.url("app", follow="true"), sink))
    try:
        await _until(lambda: b"run 0\n" in b"".join(sink), "the first run's line")
        harness.logs.new_run("app", stdout=b"run 1\n")  # still running, but with new files
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    assert b"".join(sink) == b"run 0\n"


async def test_follow_timestamps_new_lines_with_read_time(harness: Harness) -> None:
    out, _err = harness.logs.new_run("app", stdout=b"old\n")
    old_ns = 1_600_000_000_000_000_000
    os.utime(out, ns=(old_ns, old_ns))
    sink: list[bytes] = []
    task = asyncio.create_task(
        _collect(harness.client, harness.url("app", follow="true", timestamps="true"), sink)
    )
    try:
        await _until(lambda: b"old\n" in b"".join(sink), "the old line")
        before = time.time_ns()
        _append(out, b"new\n")
        await _until(lambda: b"new\n" in b"".join(sink), "the new line")
        harness.logs.running.clear()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    first, second = b"".join(sink).decode().splitlines()
    assert first == f"{format_timestamp(old_ns).decode()} old"
    stamp, text = second.split(" ", 1)
    assert text == "new"
    assert dt.datetime.fromisoformat(stamp).timestamp() >= before / 1e9 - 1


def _open_fds_of(paths: list[Path]) -> int:
    wanted = {str(p) for p in paths}
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if str(fd.readlink()) in wanted:
                count += 1
        except OSError:
            continue
    return count


async def test_follow_stops_when_the_client_goes_away(harness: Harness) -> None:
    out, err = harness.logs.new_run("app", stdout=b"hello\n")
    sink: list[bytes] = []
    task = asyncio.create_task(_collect(harness.client, harness.url("app", follow="true"), sink))
    await _until(lambda: b"hello\n" in b"".join(sink), "the first line")
    assert _open_fds_of([out, err]) == 2
    task.cancel()  # the client hangs up while the container keeps running
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: _open_fds_of([out, err]) == 0, "the server to close the followed files")


async def test_stop_ends_followers(harness: Harness) -> None:
    harness.logs.new_run("app", stdout=b"hello\n")
    sink: list[bytes] = []
    task = asyncio.create_task(_collect(harness.client, harness.url("app", follow="true"), sink))
    try:
        await _until(lambda: b"hello\n" in b"".join(sink), "the first line")
        await asyncio.wait_for(harness.server.stop(), 30)
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    assert b"".join(sink) == b"hello\n"


# ---------------------------------------------------------------------------------- access


async def test_pods_healthz_and_access(harness: Harness) -> None:
    resp = await harness.client.get("/pods")
    assert resp.status_code == 200
    assert resp.json() == {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [{"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": NS, "name": POD}}],
    }
    identity, attrs = harness.decisions[-1]
    assert identity == Identity(USER, ("log-readers", "system:authenticated"))
    assert attrs == Attributes(verb="get", name=NODE, subresource="proxy")

    assert (await harness.anonymous.get("/pods")).status_code == 401
    assert (await harness.anonymous.get(harness.url("app"))).status_code == 401
    assert (await harness.anonymous.get("/no/such/path")).status_code == 401  # auth before routing
    health = await harness.anonymous.get("/healthz")
    assert (health.status_code, health.text) == (200, "ok")

    resp = await harness.client.post("/pods")  # verb create: the test authorizer says no
    assert resp.status_code == 403
    assert resp.text == f"Forbidden (user={USER}, verb=create, resource=nodes, subresource=proxy)"


async def test_unknown_ca_is_refused_in_the_handshake(harness: Harness, tmp_path: Path) -> None:
    other = pki.ensure_ca(tmp_path / "other", "ca", "someone-else")
    intruder = pki.issue_cert(other, tmp_path / "other", "intruder", USER, client=True)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "serving" / f"kubelet-{NODE}.crt"))
    ctx.load_cert_chain(str(intruder.cert), str(intruder.key))
    async with httpx2.AsyncClient(
        base_url=f"https://127.0.0.1:{harness.server.port}", verify=ctx, timeout=30
    ) as client:
        with pytest.raises(httpx2.TransportError):
            await client.get("/pods")


async def test_added_routes_sit_behind_the_same_checks(harness: Harness) -> None:
    assert (await harness.anonymous.get("/stats/summary")).status_code == 401
    resp = await harness.client.get("/stats/summary")  # the test authorizer grants nodes/proxy only
    assert (resp.status_code, resp.text) == (
        403,
        f"Forbidden (user={USER}, verb=get, resource=nodes, subresource=stats)",
    )
    assert harness.decisions[-1][1] == Attributes(verb="get", name=NODE, subresource="stats")

    async def late(request: web.Request) -> web.StreamResponse:
        return web.Response(text="late")

    with pytest.raises(RuntimeError):
        harness.server.add_route("GET", "/late", late)
