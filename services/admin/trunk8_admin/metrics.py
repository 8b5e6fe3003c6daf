"""The admin's Prometheus metrics, in its own registry, named `trunk8_admin_*`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from trunk8_shared.ops import LATENCY_BUCKETS

PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AdminMetrics:
    """Requests, logins, saves, and how long a save takes to be served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prefix = "trunk8_admin"
        self.requests = Counter(
            f"{prefix}_requests",
            "Admin pages answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds",
            "Time to answer admin pages (password hashing included for logins).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.logins = Counter(
            f"{prefix}_logins",
            "Login attempts by outcome: success, failure, throttled.",
            ["outcome"],
            registry=self.registry,
        )
        self.saves = Counter(
            f"{prefix}_saves",
            "Link saves by action (create, update, delete) and outcome (live, pending, error).",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.save_to_served = Histogram(
            f"{prefix}_save_to_served_seconds",
            "Time from a link file written to the change served (reload reply + mirror).",
            buckets=PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.backups = Counter(
            f"{prefix}_backups",
            "Backups by outcome: sent, aborted (the client left), failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.restores = Counter(
            f"{prefix}_restores",
            "Restores by mode (merge, replace) and outcome (restored, refused, failed).",
            ["mode", "outcome"],
            registry=self.registry,
        )
        self.revision = Gauge(
            f"{prefix}_links_revision",
            "Links bucket revision the admin's index has applied.",
            registry=self.registry,
        )
