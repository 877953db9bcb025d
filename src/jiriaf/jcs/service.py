"""The running central service: its database, facility manager, pilot launcher, Kubernetes client,
control actions and the two background loops (site scrapes, reconcile), started and stopped
together by the REST API's lifespan (:func:`jiriaf.jcs.api.create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import httpx2

from jiriaf.jcs.control import Controller
from jiriaf.jcs.db import Database
from jiriaf.jcs.facilities import FacilityManager, SiteConfig, load_sites_file
from jiriaf.jcs.launching import PilotPort
from jiriaf.jcs.reconcile import Reconciler
from jiriaf.jcs.settings import JcsSettings

log = logging.getLogger(__name__)


def load_facilities(settings: JcsSettings, facilities_file: Path | None) -> list[SiteConfig]:
    """Sites to scrape: those of the (shared) sites file, then those of a facilities file, which
    win where both name a site."""
    configs: dict[str, SiteConfig] = {}
    for path in (settings.sites_file, facilities_file):
        if path is not None:
            for cfg in load_sites_file(path):
                configs[cfg.name] = cfg
    return list(configs.values())


class Jcs:
    """Everything the API and the loops share. ``run_loops=False`` serves the API only."""

    def __init__(
        self,
        settings: JcsSettings,
        *,
        db: Database | None = None,
        launcher: PilotPort | None = None,
        kube: httpx2.AsyncClient | None = None,
        facilities: list[SiteConfig] | None = None,
        run_loops: bool = True,
    ) -> None:
        self.settings = settings
        self.db = db or Database(settings.db)
        self.launcher = launcher
        self.kube = kube
        self.site_configs = facilities or []
        self.run_loops = run_loops
        self.facilities = FacilityManager(self.db, settings.scrape_interval, settings.scrape_timeout)
        self.controller = Controller(kube, launcher)
        self.reconciler: Reconciler | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.db.upgrade()
        self.controller.instance = await self.db.instance_id()
        if self.site_configs:
            await self.facilities.load(self.site_configs)
        if not self.run_loops:
            return
        self._stop.clear()
        self._tasks.append(asyncio.create_task(self._scrape_loop(), name="jcs-scrape"))
        if self.kube is not None and self.launcher is not None:
            self.reconciler = Reconciler(self.db, self.launcher, self.kube, self.settings)
            self._tasks.append(asyncio.create_task(self.reconciler.run(self._stop), name="jcs-reconcile"))
        else:
            log.warning("no Kubernetes connection or pilot launcher: requests are matched but not run")

    async def _scrape_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.facilities.scrape_due()
            except Exception:
                log.exception("scraping sites failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(5.0, self.settings.scrape_interval))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        close = getattr(self.launcher, "close", None)
        if close is not None:
            await close()  # pilot cancels still draining (bounded)
        await self.db.close()
