"""The files service's metrics: plain counters bumped inline, exported on scrape.

Names are prefixed `trunk8_files_`: responses by link type and status, body bytes sent,
downloads in flight, render cache hits, misses and size, assets refused for leaving
their folder, and the link table's size and revision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .rendercache import RenderCache


class FilesStats:
    """Counters of the files service."""

    def __init__(self) -> None:
        self.responses: Counter[tuple[str, int]] = Counter()  # (link type, status) -> count
        self.bytes_sent = 0
        self.downloads_in_flight = 0
        self.assets_refused = 0

    def count(self, link_type: str, status: int) -> None:
        """One response answered for a link of `link_type`."""
        self.responses[(link_type, status)] += 1

    def sent(self, size: int) -> None:
        """`size` more body bytes went to a client."""
        self.bytes_sent += size


class FilesCollector(Collector):
    """Exports `FilesStats` plus gauges read from the service's state on each scrape."""

    def __init__(
        self, stats: FilesStats, cache: RenderCache, gauges: Callable[[], dict[str, float]]
    ) -> None:
        self.stats = stats
        self.cache = cache
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        prefix = "trunk8_files"
        stats = self.stats
        responses = CounterMetricFamily(
            f"{prefix}_responses",
            "Responses for file, markdown and html links, by link type and status.",
            labels=["type", "status"],
        )
        for (link_type, status), count in sorted(stats.responses.items()):
            responses.add_metric([link_type, str(status)], count)
        yield responses
        yield CounterMetricFamily(
            f"{prefix}_bytes_sent", "Body bytes sent for links.", value=stats.bytes_sent
        )
        yield GaugeMetricFamily(
            f"{prefix}_downloads_in_flight",
            "File downloads being sent now.",
            value=stats.downloads_in_flight,
        )
        yield CounterMetricFamily(
            f"{prefix}_render_cache_hits",
            "Markdown pages served from the render cache.",
            value=self.cache.hits,
        )
        yield CounterMetricFamily(
            f"{prefix}_render_cache_misses",
            "Markdown pages rendered (not in the render cache).",
            value=self.cache.misses,
        )
        yield CounterMetricFamily(
            f"{prefix}_assets_refused",
            "Requests refused because the link's asset path leaves its assets folder.",
            value=stats.assets_refused,
        )
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"{prefix}_{name}", _GAUGE_HELP[name], value=value)


_GAUGE_HELP = {
    "links": "File, markdown and html links in the service's table.",
    "links_revision": "Stream revision of the links bucket last applied.",
    "render_cache_entries": "Rendered markdown pages held in the cache.",
    "render_cache_bytes": "Bytes of rendered markdown held in the cache.",
}


def files_registry(
    stats: FilesStats, cache: RenderCache, gauges: Callable[[], dict[str, float]]
) -> CollectorRegistry:
    """A registry with the files service's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FilesCollector(stats, cache, gauges))
    return registry
