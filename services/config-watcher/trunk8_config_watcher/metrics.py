"""The config-watcher's Prometheus metrics, in its own registry, and how a reload sets them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .catalog import LinkCatalog
from .rejections import Rejections
from .reloader import Reload


class WatcherMetrics:
    """Reloads, rejected files, publishing, and the size of the published state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prefix = "trunk8_config_watcher"
        self.reloads = Counter(
            f"{prefix}_reloads", "Data files re-read and applied.", registry=self.registry
        )
        self.reload_errors = Counter(
            f"{prefix}_reload_errors",
            "Data files rejected (syntax or validation); their last good state stays served.",
            registry=self.registry,
        )
        self.last_reload_successful = Gauge(
            f"{prefix}_last_reload_successful",
            "1 when no data file is currently rejected, else 0.",
            registry=self.registry,
        )
        self.rejected_files = Gauge(
            f"{prefix}_rejected_files", "Data files currently rejected.", registry=self.registry
        )
        self.rejected_entries = Gauge(
            f"{prefix}_rejected_entries",
            "Links and accounts currently refused alone (the rest of their file is served).",
            registry=self.registry,
        )
        self.publish_errors = Counter(
            f"{prefix}_publish_errors",
            "Failed writes to NATS (retried by a full reconcile).",
            registry=self.registry,
        )
        self.links = Gauge(f"{prefix}_links", "Links published.", registry=self.registry)
        self.users = Gauge(f"{prefix}_users", "Accounts published.", registry=self.registry)
        self.duplicate_codes = Gauge(
            f"{prefix}_duplicate_codes",
            "Codes defined by more than one user (the first user in users.toml wins).",
            registry=self.registry,
        )
        self.revision = Gauge(
            f"{prefix}_links_revision",
            "Links bucket revision last published.",
            registry=self.registry,
        )
        self.last_reload_successful.set(1)

    def record(self, result: Reload, catalog: LinkCatalog, rejections: Rejections) -> None:
        """Count a reload and set the gauges to the state it left."""
        self.reloads.inc(result.files_applied)
        self.reload_errors.inc(result.files_rejected)
        self.rejected_files.set(len(rejections.files))
        self.rejected_entries.set(rejections.entry_count)
        self.last_reload_successful.set(0 if rejections.files else 1)
        self.links.set(catalog.link_count())
        self.users.set(len(catalog.users))
        self.duplicate_codes.set(len(catalog.duplicates))
