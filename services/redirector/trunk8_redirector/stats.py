"""The redirector's counters: plain integers bumped on the hot path, exported on scrape.

They include the front's: connections, hand-overs, send timeouts, and malformed requests
on the public port (found by the fast path, or by aiohttp after a hand-over).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import cycle

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trunk8_shared.front import MalformedRequests
from trunk8_shared.kvmirror import KvMirror
from trunk8_shared.plainmetrics import PlainHistogram

from .table import (
    BAD_REQUEST,
    EXPIRED,
    HIT,
    STARTING,
    TIMEOUT,
    TOO_LARGE,
    UNKNOWN,
    URI_TOO_LONG,
    LinkTable,
)

_OUTCOMES = {
    HIT: ("hit", "302"),
    UNKNOWN: ("unknown", "404"),
    EXPIRED: ("expired", "404"),
    BAD_REQUEST: ("bad_request", "400"),
    TIMEOUT: ("timeout", "408"),
    TOO_LARGE: ("too_large", "431"),
    URI_TOO_LONG: ("uri_too_long", "414"),
    STARTING: ("starting", "503"),
}
ROUTE = "/{code}"


class RedirectorStats:
    """Plain counters of the hot path, exported on scrape."""

    __slots__ = (
        "connections",
        "handed_over",
        "latency",
        "malformed",
        "outcomes",
        "send_timeouts",
        "timing",
    )

    # Reads timed for the latency histogram: one in this many (timing each costs ~5 %).
    TIMING_INTERVAL = 8

    def __init__(self) -> None:
        self.outcomes = [0] * len(_OUTCOMES)  # indexed by the outcome constants of table.py
        self.latency = PlainHistogram()
        # Whether to time the next read: `next` of a cycle of bools is about half the cost
        # of counting reads and taking a remainder, on every read.
        self.timing = cycle((False,) * (self.TIMING_INTERVAL - 1) + (True,))
        self.connections = 0
        self.handed_over = 0
        self.send_timeouts = 0
        self.malformed = MalformedRequests()


class RedirectorCollector(Collector):
    """Exports `RedirectorStats`, the table size and the mirror's progress."""

    def __init__(self, stats: RedirectorStats, table: LinkTable, mirror: KvMirror) -> None:
        self.stats = stats
        self.table = table
        self.mirror = mirror

    def collect(self) -> Iterator[Metric]:
        prefix = "trunk8_redirector"
        requests = CounterMetricFamily(
            f"{prefix}_requests",
            "Link requests answered, by route and status.",
            labels=["route", "status"],
        )
        by_status: dict[str, int] = {}
        outcomes = CounterMetricFamily(
            f"{prefix}_lookups", "Link requests by outcome.", labels=["outcome"]
        )
        for index, (outcome, status) in _OUTCOMES.items():
            count = self.stats.outcomes[index]
            by_status[status] = by_status.get(status, 0) + count
            outcomes.add_metric([outcome], count)
        for status, count in by_status.items():
            requests.add_metric([ROUTE, status], count)
        yield requests
        yield outcomes
        yield self.stats.latency.family(
            f"{prefix}_request_duration_seconds", "Time spent answering link requests."
        )
        yield CounterMetricFamily(
            f"{prefix}_connections", "Client connections accepted.", value=self.stats.connections
        )
        yield CounterMetricFamily(
            f"{prefix}_handed_over",
            "Connections handed to the aiohttp pipeline (non-link requests).",
            value=self.stats.handed_over,
        )
        yield CounterMetricFamily(
            f"{prefix}_send_timeouts",
            "Connections aborted because the client took none of its answers in time.",
            value=self.stats.send_timeouts,
        )
        yield CounterMetricFamily(
            f"{prefix}_malformed_requests",
            "Malformed requests on the public port (fast path and aiohttp).",
            value=self.stats.malformed.count,
        )
        yield GaugeMetricFamily(f"{prefix}_links", "Links held in memory.", value=len(self.table))
        yield CounterMetricFamily(
            f"{prefix}_reloads",
            "Link changes and snapshots applied from NATS.",
            value=self.table.updates,
        )
        yield CounterMetricFamily(
            f"{prefix}_resyncs",
            "Whole loads of the links (at start; after a reconnect only if it cannot resume).",
            value=self.mirror.resyncs,
        )
        yield CounterMetricFamily(
            f"{prefix}_resumes",
            "Reconnects after which only the changes since the revision held were applied.",
            value=self.mirror.resumes,
        )
        yield GaugeMetricFamily(
            f"{prefix}_links_revision", "Links bucket revision applied.", value=self.mirror.revision
        )
        yield CounterMetricFamily(
            f"{prefix}_folds",
            "Folds of the live changes into new packed rows, completed.",
            value=self.table.folds,
        )
        yield CounterMetricFamily(
            f"{prefix}_folded_changes",
            "Changes taken into new packed rows by those folds.",
            value=self.table.folded_changes,
        )
        yield GaugeMetricFamily(
            f"{prefix}_fold_longest_step_seconds",
            "CPU seconds of the longest step of the last fold (the serving loop waits on it).",
            value=self.table.longest_fold_step,
        )
        yield self.table.fold_step_seconds.family(
            f"{prefix}_fold_step_seconds", "CPU seconds of each fold step."
        )


def redirector_registry(
    stats: RedirectorStats, table: LinkTable, mirror: KvMirror
) -> CollectorRegistry:
    """A registry holding the redirector's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedirectorCollector(stats, table, mirror))
    return registry
