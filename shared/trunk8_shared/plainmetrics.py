"""Metrics for hot paths: plain integers bumped inline, turned into Prometheus families on scrape.

A prometheus_client Counter takes a lock per increment; at tens of thousands of requests a
second that is a visible share of the budget, so hot paths count in lists and ints and a
collector reads them only when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.metrics_core import HistogramMetricFamily

DEFAULT_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class PlainHistogram:
    """A latency histogram kept in a list of ints (cumulated only when exported)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Record `times` observations of `seconds`."""
        self.counts[bisect_left(self.bounds, seconds)] += times
        self.total += seconds * times

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a Prometheus metric family."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((repr(bound), running))
        running += self.counts[-1]
        buckets.append(("+Inf", running))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)
