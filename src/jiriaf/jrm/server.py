"""The JRM's kubelet HTTP API: ``/containerLogs``, ``/pods`` and ``/healthz`` over HTTPS.

The apiserver proxies ``kubectl logs`` to ``GET /containerLogs/{namespace}/{pod}/{container}`` on
the node's kubelet port; :class:`KubeletServer` answers it from the stdout and stderr files of the
container's run, which a :class:`LogSource` names. More routes (``/metrics/resource``,
``/stats/summary``, ``/metrics``) are added with :meth:`KubeletServer.add_route` and sit behind the
same authentication and authorization (see :mod:`jiriaf.jrm.auth`).

``/healthz`` is served without authentication. The kubelet serves its healthz on a separate
port (10248, loopback); this server has one port, so its healthz is open to anyone who can reach
that port. It says "ok" and nothing else.

Log semantics, and where they approximate the kubelet (the files carry no per-line timestamps):

- stdout and stderr are merged as stdout then stderr for what is already in the files; while
  following, data is streamed from both files as it is appended (polled every 0.25 s), whole
  lines at a time (a partial line is held until its newline, until it exceeds 64 KiB, or until
  the follow ends, as CRI runtimes hold partial lines). Bytes are served as they are in the files.
- ``timestamps=true`` prefixes each line with an RFC3339 time with nanoseconds (UTC, 9 digits,
  as the kubelet prints them): the file's modification time for lines already in the file when
  the request came, the time they were read for lines that arrive while following.
- ``sinceSeconds``/``sinceTime`` skip the existing content of a file whose modification time is
  older than the bound (a file modified after it is served whole); lines that arrive while
  following are always newer and always served.
- ``tailLines`` counts lines of the merged stream from its end (a final line without newline
  counts); files are read backwards in blocks, so the tail of a large file costs a few reads.
- ``limitBytes`` bounds the bytes of the response, timestamps included; the last line may be cut.
- ``previous=true`` serves the previous run's files and never follows (that run has ended).
- ``follow=true`` ends when the client goes away, when the server stops, and when the run has
  ended (the source's ``is_running`` says so, the pod is gone, or the run's files were replaced
  by a newer run's) after both files have been read to their end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from jiriaf.jrm.auth import (
    AuthenticationError,
    Authenticator,
    AuthorizationError,
    Identity,
    authorization_error_message,
    forbidden_message,
    request_attributes,
)

__all__ = [
    "IDENTITY",
    "Handler",
    "KubeletServer",
    "LogOptions",
    "LogRequestError",
    "LogSource",
    "RunningLogSource",
    "format_timestamp",
    "parse_log_options",
    "tail_start",
]

log = logging.getLogger(__name__)

#: the authenticated identity of a request, for handlers added with ``add_route``
IDENTITY = web.RequestKey("jiriaf_identity", Identity)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

POLL_INTERVAL = 0.25  # seconds between looks at followed files
READ_CHUNK = 128 * 1024  # bytes per read of a log file
TAIL_BLOCK = 64 * 1024  # bytes per backwards read when looking for the last lines
MAX_PARTIAL_LINE = 64 * 1024  # a partial line longer than this is sent without waiting for its newline
SHUTDOWN_TIMEOUT = 5.0  # seconds stop() waits for requests in flight before cancelling them

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class LogSource(Protocol):
    """Where a container's log files are. Names are mapped through the controller's own records.

    A source may also have ``is_running(namespace, pod, container) -> bool`` (see
    :class:`RunningLogSource`); with it, ``follow`` ends when the latest run has terminated.
    """

    def log_files(self, namespace: str, pod: str, container: str, previous: bool) -> list[Path] | None:
        """The stdout and stderr files (in that order) of the container's latest or previous run.

        None when the pod or the container is unknown; an empty list when there is no such run
        (no previous run, or the container has not started yet). Files may not exist yet.
        """
        ...


@runtime_checkable
class RunningLogSource(LogSource, Protocol):
    """A :class:`LogSource` that also tells whether the container's latest run is still running."""

    def is_running(self, namespace: str, pod: str, container: str) -> bool:
        """True while the latest run of the container is running."""
        ...


@dataclass(frozen=True)
class LogOptions:
    """The query of a ``/containerLogs`` request. ``since_ns`` is an epoch time in nanoseconds."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_ns: int | None = None


class LogRequestError(Exception):
    """A log request that is answered with ``status`` (400, 404, 422) and a plain-text ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.message)


def _flag(query: Mapping[str, str], name: str) -> bool:
    """Kubernetes' query booleans: absent -> false; "false"/"0" -> false; anything else -> true."""
    if name not in query:
        return False
    return query[name].strip().lower() not in ("false", "0")


def _integer(query: Mapping[str, str], name: str, minimum: int) -> int | None:
    if name not in query:
        return None
    try:
        value = int(query[name])
    except ValueError:
        raise LogRequestError(400, f"invalid {name} {query[name]!r}: not an integer") from None
    if value < minimum:
        raise LogRequestError(422, f"invalid {name} {value}: must be greater than or equal to {minimum}")
    return value


def parse_log_options(query: Mapping[str, str], now_ns: int | None = None) -> LogOptions:
    """The options of a ``/containerLogs`` query, validated as the apiserver validates PodLogOptions.

    Raises :class:`LogRequestError` with status 400 (unparsable) or 422 (invalid).
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    since_seconds = _integer(query, "sinceSeconds", 1)
    since_ns: int | None = None
    if since_seconds is not None:
        since_ns = now_ns - since_seconds * 1_000_000_000
    if "sinceTime" in query:
        if since_seconds is not None:
            raise LogRequestError(422, "at most one of sinceTime or sinceSeconds may be specified")
        raw = query["sinceTime"]
        try:
            parsed = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise LogRequestError(400, f"invalid sinceTime {raw!r}: not an RFC3339 time") from None
        if parsed.tzinfo is None:
            raise LogRequestError(400, f"invalid sinceTime {raw!r}: no time zone")
        since_ns = (parsed - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    return LogOptions(
        follow=_flag(query, "follow"),
        previous=_flag(query, "previous"),
        timestamps=_flag(query, "timestamps"),
        tail_lines=_integer(query, "tailLines", 0),
        limit_bytes=_integer(query, "limitBytes", 1),
        since_ns=since_ns,
    )


def format_timestamp(epoch_ns: int) -> bytes:
    """``2006-01-02T15:04:05.000000000Z``: the kubelet's log timestamp format, in UTC."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z".encode()


def tail_start(fd: int, size: int, lines: int) -> tuple[int, int]:
    """Where the last ``lines`` lines of the first ``size`` bytes of ``fd`` begin, and how many lines
    that range holds (fewer than asked when the file is short). A final line without newline counts.

    Reads backwards in :data:`TAIL_BLOCK` blocks, so the cost depends on the lines asked for, not on
    the size of the file.
    """
    if lines <= 0 or size <= 0:
        return size, 0
    ends_with_newline = os.pread(fd, 1, size - 1) == b"\n"
    # with a final newline, the (lines+1)-th newline from the end precedes the wanted range
    wanted = lines + 1 if ends_with_newline else lines
    found = 0
    pos = size
    while pos > 0:
        block = min(TAIL_BLOCK, pos)
        pos -= block
        data = os.pread(fd, block, pos)
        if len(data) < block:  # truncated under us: treat what is left as the whole file
            return 0, found
        end = len(data)
        while True:
            index = data.rfind(b"\n", 0, end)
            if index < 0:
                break
            found += 1
            if found == wanted:
                return pos + index + 1, lines
            end = index
    return 0, found if ends_with_newline else found + 1


def _prefixed(data: bytes, prefix: bytes, at_line_start: bool) -> bytes:
    """``data`` with ``prefix`` at the start of every line that starts in it."""
    ends_with_newline = data.endswith(b"\n")
    core = data[:-1] if ends_with_newline else data
    out = core.replace(b"\n", b"\n" + prefix)
    if at_line_start:
        out = prefix + out
    return out + b"\n" if ends_with_newline else out


class _LogFile:
    """One log file being served: its descriptor, the next offset to read and a held partial line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.inode: int | None = None
        self.size = 0  # at open time
        self.mtime_ns = 0
        self.offset = 0
        self.partial = b""
        self.at_line_start = True

    def open(self) -> bool:
        """Open the file if it exists (a file that appears later is opened on a later call)."""
        if self.fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot open log file %s: %s", self.path, exc)
            return False
        st = os.fstat(fd)
        self.fd, self.inode, self.size, self.mtime_ns = fd, st.st_ino, st.st_size, st.st_mtime_ns
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, limit: int, end: int | None = None) -> bytes:
        """Up to ``limit`` bytes from the offset (not beyond ``end``), advancing the offset."""
        if self.fd is None:
            return b""
        if end is not None:
            limit = min(limit, end - self.offset)
            if limit <= 0:
                return b""
        data = os.pread(self.fd, limit, self.offset)
        self.offset += len(data)
        return data

    def replaced(self) -> bool:
        """The path now names another file, no file, or a file shorter than what was read."""
        if self.fd is None:
            return False
        try:
            st = self.path.stat()
        except OSError:
            return True
        return st.st_ino != self.inode or st.st_size < self.offset

    def feed(self, data: bytes, stamp_ns: int, timestamps: bool, hold_partial: bool) -> bytes:
        """The bytes to send for ``data`` read from this file (after what is held back)."""
        data = self.partial + data if self.partial else data
        self.partial = b""
        if hold_partial and data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            if len(data) - cut <= MAX_PARTIAL_LINE:
                data, self.partial = data[:cut], data[cut:]
        if not data:
            return b""
        out = _prefixed(data, format_timestamp(stamp_ns) + b" ", self.at_line_start) if timestamps else data
        self.at_line_start = data.endswith(b"\n")
        return out


class _LogStream:
    """Writes log data to a streaming response, enforcing ``limitBytes``."""

    def __init__(self, response: web.StreamResponse, limit_bytes: int | None) -> None:
        self.response = response
        self.remaining = limit_bytes
        self.done = False

    async def write(self, data: bytes) -> None:
        if not data or self.done:
            return
        if self.remaining is not None:
            if len(data) >= self.remaining:
                data = data[: self.remaining]
                self.done = True
            self.remaining -= len(data)
        await self.response.write(data)


def _check_name(kind: str, value: str, *, subdomain: bool = False) -> None:
    """400 unless ``value`` is a DNS-1123 label (or subdomain), as Kubernetes names of its kind are."""
    pattern, max_len, what = (
        (_DNS1123_SUBDOMAIN, 253, "subdomain") if subdomain else (_DNS1123_LABEL, 63, "label")
    )
    if len(value) > max_len or not pattern.match(value):
        raise LogRequestError(400, f"invalid {kind} name {value!r}: must be a DNS-1123 {what}")


class KubeletServer:
    """The kubelet API of one node, served by aiohttp over TLS.

    ``authenticator=None`` turns authentication and authorization off (every request is served,
    as a kubelet with ``--anonymous-auth=true --authorization-mode=AlwaysAllow``): only for
    development on a loopback address. ``port=0`` binds a free port (see :attr:`port` after start).
    """

    def __init__(
        self,
        *,
        node_name: str,
        log_source: LogSource,
        pods_source: Callable[[], list[dict[str, Any]]],
        authenticator: Authenticator | None,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
    ) -> None:
        self.node_name = node_name
        self.host = host
        self.port = port
        self._log_source = log_source
        self._pods_source = pods_source
        self._authenticator = authenticator
        self._ssl_context = ssl_context
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._app = web.Application(middlewares=[self._auth_middleware])
        healthz = self._app.router.add_get("/healthz", self._healthz)
        self._open_resources = {healthz.resource}
        self._app.router.add_get("/pods", self._pods)
        self._app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)

    # ------------------------------------------------------------------ lifecycle
    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``handler`` for ``method`` ``path`` (aiohttp path syntax), behind authentication and
        authorization like every route but ``/healthz``. Only before :meth:`start`."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before the kubelet server starts")
        self._app.router.add_route(method, path, handler)

    async def start(self) -> None:
        """Listen on ``host:port`` with TLS."""
        if self._runner is not None:
            raise RuntimeError("kubelet server already started")
        if self._authenticator is None:
            log.warning(
                "kubelet API on %s:%s serves every request: authentication is off", self.host, self.port
            )
        self._closing.clear()
        runner = web.AppRunner(self._app, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("kubelet API listening on https://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening, end followed log streams and wait for requests in flight (bounded)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    # ------------------------------------------------------------------ authentication
    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.resource in self._open_resources or self._authenticator is None:
            return await handler(request)
        auth = self._authenticator
        transport = request.transport
        peer_cert = transport.get_extra_info("peercert") if transport is not None else None
        try:
            identity = await auth.authenticate(
                peer_cert=peer_cert, authorization=request.headers.get("Authorization")
            )
        except AuthenticationError as exc:
            log.warning("kubelet API: cannot authenticate a request: %s", exc)
            identity = None
        if identity is None:
            return web.Response(status=401, text="Unauthorized")
        attrs = request_attributes(self.node_name, request.method, request.path)
        if not attrs.verb:
            return web.Response(status=405, text=f"method {request.method} is not allowed")
        try:
            allowed = await auth.authorize(identity, attrs)
        except AuthorizationError as exc:
            log.warning("kubelet API: cannot authorize %s: %s", identity.user, exc)
            return web.Response(status=500, text=authorization_error_message(identity, attrs))
        if not allowed:
            return web.Response(status=403, text=forbidden_message(identity, attrs))
        request[IDENTITY] = identity
        return await handler(request)

    # ------------------------------------------------------------------ handlers
    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        items = self._pods_source()
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    def _pod_known(self, namespace: str, pod: str) -> bool:
        for item in self._pods_source():
            meta = item.get("metadata") or {}
            if meta.get("namespace") == namespace and meta.get("name") == pod:
                return True
        return False

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        pod = request.match_info["pod"]
        container = request.match_info["container"]
        try:
            _check_name("namespace", namespace)
            _check_name("pod", pod, subdomain=True)
            _check_name("container", container)
            options = parse_log_options(request.query)
            paths = self._log_source.log_files(namespace, pod, container, options.previous)
            if paths is None:
                if self._pod_known(namespace, pod):
                    raise LogRequestError(404, f'container "{container}" not found in pod "{pod}"')
                raise LogRequestError(404, f'pod "{pod}" does not exist')
            if not paths:
                if options.previous:
                    raise LogRequestError(
                        400, f'previous terminated container "{container}" in pod "{pod}" not found'
                    )
                raise LogRequestError(400, f'container "{container}" in pod "{pod}" is waiting to start')
        except LogRequestError as problem:
            return problem.response()
        files = [_LogFile(p) for p in paths]
        try:
            return await self._serve_logs(request, files, options, (namespace, pod, container))
        finally:
            for f in files:
                f.close()

    async def _serve_logs(
        self,
        request: web.Request,
        files: list[_LogFile],
        options: LogOptions,
        names: tuple[str, str, str],
    ) -> web.StreamResponse:
        for f in files:
            f.open()
        starts = await asyncio.to_thread(self._starts, files, options)
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        out = _LogStream(response, options.limit_bytes)
        follow = options.follow and not options.previous
        try:
            # what is in the files now: stdout, then stderr
            for f, start in zip(files, starts, strict=True):
                f.offset = start
                while not out.done:
                    data = await asyncio.to_thread(f.read, READ_CHUNK, f.size)
                    if not data:
                        break
                    await out.write(f.feed(data, f.mtime_ns, options.timestamps, hold_partial=follow))
            if follow and not out.done:
                await self._follow(request, files, options, names, out)
            if not out.done:
                for f in files:  # a partial line held until the end
                    await out.write(f.feed(b"", time.time_ns(), options.timestamps, hold_partial=False))
            await response.write_eof()
        except ConnectionError:
            log.debug("log client of %s/%s/%s went away", *names)
        return response

    @staticmethod
    def _starts(files: list[_LogFile], options: LogOptions) -> list[int]:
        """Where serving starts in each file: skip files older than ``since``, then take the tail."""
        starts = [f.size if f.fd is None else 0 for f in files]
        if options.since_ns is not None:
            starts = [
                f.size if f.mtime_ns < options.since_ns else s for f, s in zip(files, starts, strict=True)
            ]
        if options.tail_lines is not None:
            remaining = options.tail_lines
            for i in reversed(range(len(files))):
                f = files[i]
                if f.fd is None or starts[i] >= f.size:
                    continue
                if remaining <= 0:
                    starts[i] = f.size
                    continue
                start, found = tail_start(f.fd, f.size, remaining)
                starts[i] = max(start, starts[i])
                remaining -= found
        return starts

    def _client_gone(self, request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    async def _follow(
        self,
        request: web.Request,
        files: list[_LogFile],
        options: LogOptions,
        names: tuple[str, str, str],
        out: _LogStream,
    ) -> None:
        """Stream what is appended to the files until the run ends, the client leaves or we stop."""
        while not out.done and not self._closing.is_set() and not self._client_gone(request):
            if await self._follow_pass(files, options, out):
                continue
            ended, added = await asyncio.to_thread(self._run_state, files, names)
            if ended:
                # the run is over: everything it wrote is in the files now
                while not out.done and await self._follow_pass(files, options, out):
                    pass
                return
            if added:  # the source names a file of this run it did not name before
                files.extend(_LogFile(p) for p in added)
                continue
            await asyncio.sleep(POLL_INTERVAL)

    async def _follow_pass(self, files: list[_LogFile], options: LogOptions, out: _LogStream) -> bool:
        """Send what was appended since the last pass (bounded per file); True if anything was read."""
        progressed = False
        for f in files:
            if out.done:
                break
            if f.fd is None and not await asyncio.to_thread(f.open):
                continue
            data = await asyncio.to_thread(f.read, 2 * READ_CHUNK)
            if data:
                progressed = True
                await out.write(f.feed(data, time.time_ns(), options.timestamps, hold_partial=True))
        return progressed

    def _run_state(self, files: list[_LogFile], names: tuple[str, str, str]) -> tuple[bool, list[Path]]:
        """Whether the followed run has ended (not running, pod or container gone, or its files
        replaced by a newer run's), and the files of the run that are not followed yet."""
        namespace, pod, container = names
        source = self._log_source
        if isinstance(source, RunningLogSource) and not source.is_running(namespace, pod, container):
            return True, []
        current = source.log_files(namespace, pod, container, False)
        if current is None:
            return True, []
        followed = {f.path for f in files}
        current_paths = [Path(p) for p in current]
        if not followed <= set(current_paths) or any(f.replaced() for f in files):
            return True, []
        return False, [p for p in current_paths if p not in followed]
