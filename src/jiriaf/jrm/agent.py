"""The JRM agent: wires the node, the pod controller, the runtime and the kubelet API, owns the
asyncio tasks and the node's lifecycle (walltime, signals, shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import httpx2

from jiriaf.errors import UserError
from jiriaf.jrm.exporter import Monitoring
from jiriaf.jrm.node import NodeManager
from jiriaf.jrm.pods import PodController
from jiriaf.jrm.runtime.base import Runtime
from jiriaf.jrm.settings import JRMSettings
from jiriaf.jrm.stoprules import idle_watch
from jiriaf.kube.events import EventRecorder
from jiriaf.kube.raw import async_raw_client
from jiriaf.kube.watching import Informer, cancel_and_wait

log = logging.getLogger(__name__)

REGISTER_ATTEMPTS = 6


class Agent:
    """One JRM: one virtual node."""

    def __init__(self, settings: JRMSettings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.stop_reason: str | None = None
        self._stop = asyncio.Event()
        self._runtime = runtime
        self.node: NodeManager | None = None
        self.pods: PodController | None = None
        self.informer: Informer | None = None
        self.server: Any = None
        self.monitoring: Monitoring | None = None

    def request_stop(self, reason: str) -> None:
        """Ask the agent to drain and exit (signal handler, walltime, pilot cancel)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def _make_runtime(self) -> Runtime:
        if self._runtime is not None:
            return self._runtime
        from jiriaf.jrm.runtime.process import ProcessRuntime

        return ProcessRuntime(self.settings.pod_root)

    async def _register(self, node: NodeManager) -> None:
        delay = 1.0
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                await node.register()
                return
            except (httpx2.HTTPError, OSError) as exc:
                if attempt == REGISTER_ATTEMPTS:
                    raise UserError(
                        f"cannot reach the control plane ({exc}); check --kubeconfig and the "
                        "network or tunnel to the apiserver",
                        exit_code=3,
                    ) from exc
                log.warning("control plane unreachable (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _walltime(self, node: NodeManager, pods: PodController) -> None:
        end = node.deadline()
        if end is None:
            return
        drain_at = end - self.settings.walltime_margin
        await asyncio.sleep(max(0.0, drain_at - time.time()))
        log.info("walltime ends in %ss: tainting the node NoSchedule", self.settings.walltime_margin)
        pods.accepting = False
        with contextlib.suppress(Exception):
            await node.set_draining()
        await asyncio.sleep(max(0.0, end - time.time()))
        self.request_stop("WalltimeExpired")

    async def run(self) -> int:
        """Run until stopped; return the process exit code (0 after a clean drain)."""
        settings = self.settings
        settings.pod_root.mkdir(parents=True, exist_ok=True)
        client = async_raw_client(settings.kubeconfig, timeout=30)
        loop = asyncio.get_running_loop()
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, f"Stopped({name})")
        runtime = self._make_runtime()
        node = self.node = NodeManager(client, settings, started_at=self.started_at)
        recorder = EventRecorder(client, "jiriaf-jrm", settings.node_name)
        pods = self.pods = PodController(client, runtime, settings, recorder)
        tasks: list[asyncio.Task[Any]] = []
        try:
            pods.adopt_existing()
            monitoring = self.monitoring = Monitoring(
                settings,
                pods,
                api_errors=lambda: node.api_errors,
                relists=lambda: self.informer.stats.relists if self.informer else 0,
            )
            # listening before the Node exists: a Ready node's kubelet endpoint always answers, and a
            # port that cannot be bound stops the JRM before it registers anything
            self.server = await self._start_server(client, pods)
            await self._register(node)
            informer = self.informer = Informer(
                client,
                "/api/v1/pods",
                pods.on_event,
                field_selector=f"spec.nodeName={settings.node_name}",
                resync_period=settings.resync_period,
            )
            tasks = [
                asyncio.create_task(node.heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(informer.run(), name="pod-informer"),
                asyncio.create_task(self._walltime(node, pods), name="walltime"),
                asyncio.create_task(monitoring.run(), name="metrics-sampler"),
            ]
            if settings.idle_timeout > 0:
                tasks.append(
                    asyncio.create_task(
                        idle_watch(pods, settings.idle_timeout, self.request_stop), name="idle"
                    )
                )
            await recorder.record(
                node.node or {"metadata": {"name": settings.node_name}},
                "Node",
                "Normal",
                "Starting",
                f"Started jiriaf JRM on {settings.node_name}",
            )
            synced = asyncio.create_task(informer.synced.wait())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({synced, stop}, return_when=asyncio.FIRST_COMPLETED)
            if informer.synced.is_set():
                await pods.stop_orphans()
            await stop
            synced.cancel()
            return await self._shutdown(node, pods, recorder, tasks)
        finally:
            for task in tasks:
                await cancel_and_wait(task)
            if self.server is not None:
                with contextlib.suppress(Exception):
                    await self.server.stop()
            runtime.close()  # stop watching; containers still running are adopted by the next start
            await client.aclose()

    async def _start_server(self, client: httpx2.AsyncClient, pods: PodController) -> Any:
        from jiriaf.jrm.kubelet_api import start_kubelet_api

        return await start_kubelet_api(self.settings, client, pods, monitoring=self.monitoring)

    async def _shutdown(
        self, node: NodeManager, pods: PodController, recorder: EventRecorder, tasks: list[asyncio.Task[Any]]
    ) -> int:
        reason = self.stop_reason or "Stopped"
        log.info("stopping (%s): terminating pods gracefully", reason)
        pods.accepting = False
        for task in tasks:
            if task.get_name() == "pod-informer":
                await cancel_and_wait(task)
        with contextlib.suppress(Exception):
            await node.set_draining()
        await pods.terminate_all(reason)
        node_obj = node.node or {"metadata": {"name": self.settings.node_name}}
        await recorder.record(node_obj, "Node", "Normal", reason, f"JRM stopped: {reason}")
        try:
            if self.settings.on_exit == "delete":
                await node.delete()
            else:
                await node.mark_not_ready(reason, f"jiriaf JRM stopped: {reason}")
        except Exception as exc:
            log.warning("could not update the node on exit: %s", exc)
        return 0
