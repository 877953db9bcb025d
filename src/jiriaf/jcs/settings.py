"""The central service's one settings model: every setting is a ``jiriaf jcs serve`` flag and a
``JIRIAF_JCS_<NAME>`` environment variable (the database URL is ``JIRIAF_JCS_DB``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class JcsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JIRIAF_JCS_", populate_by_name=True, extra="forbid")

    db: str | None = Field(
        default=None,
        validation_alias=AliasChoices("db", "JIRIAF_JCS_DB"),
        description="Database URL (default: SQLite in the data directory).",
    )
    host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    port: int = Field(default=8765, ge=0, le=65535, description="Port of the REST API (0: any free port).")
    url: str | None = Field(default=None, description="URL under which clients reach this service.")
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig of the control plane the JRMs join (default: KUBECONFIG)."
    )
    sites_file: Path | None = Field(default=None, description="Sites YAML loaded into the database at start.")
    prometheus_url: str | None = Field(default=None, description="Prometheus base URL for workflow metrics.")
    reconcile_interval: float = Field(default=5.0, gt=0, description="Seconds between reconcile passes.")
    scrape_interval: float = Field(default=60.0, gt=0, description="Seconds between scrapes of a site.")
    monitor_interval: float = Field(
        default=15.0, gt=0, description="Seconds between workflow status samples."
    )
    scrape_timeout: float = Field(default=30.0, gt=0, description="Seconds a site scrape may take.")
    pilot_margin_s: int = Field(default=120, ge=0, description="Walltime added to each new pilot.")
    reuse_margin_s: int = Field(default=60, ge=0, description="An idle pilot must outlive a request by this.")
    pilot_idle_timeout_s: float = Field(default=300.0, ge=0, description="Stop pilots idle for this long.")
    pilot_start_timeout_s: float = Field(
        default=900.0, gt=0, description="Give up on a pilot whose JRMs have not all joined after this long."
    )
    max_new_pilots: int | None = Field(default=None, ge=0, description="Pilots launched per pass at most.")
    max_nodes_per_user: int | None = Field(default=None, ge=1, description="Nodes one user may hold.")
    max_attempts: int = Field(default=3, ge=1, description="Leases tried for a request before it fails.")
    chart_dirs: list[Path] = Field(default_factory=list, description="Where local Helm charts may live.")
    log_level: str = Field(default="INFO")
