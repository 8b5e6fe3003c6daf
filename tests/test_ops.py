"""The operations endpoints: one metrics registry per application, and what `/-/ready` says.

Metric names of the services in one application can never clash into an invalid page: a
name registered twice fails at setup. The page is checked with prometheus-client's own
parsers, in both the classic text format and OpenMetrics.
"""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from conftest import RunningSystem, StartSystem, wait_until
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

from trunk8_shared.ops import OPS, setup_ops


def registry_with(metric: type[Counter] | type[Gauge], name: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    metric(name, "A metric of a test service.", registry=registry)
    return registry


def test_two_services_with_one_metric_name_fail_at_setup() -> None:
    app = web.Application()
    ops = setup_ops(app)
    ops.add_service("first", lambda: True, registry_with(Gauge, "trunk8_shared_things"))
    with pytest.raises(DuplicateTimeseries, match="trunk8_shared_things"):
        ops.add_service("second", lambda: True, registry_with(Gauge, "trunk8_shared_things"))
    # A counter's exposed `_total` name clashes too, and the built-in HTTP metrics are taken.
    with pytest.raises(DuplicateTimeseries):
        ops.add_service("third", lambda: True, registry_with(Counter, "trunk8_shared_things"))
    with pytest.raises(DuplicateTimeseries):
        ops.add_service("fourth", lambda: True, registry_with(Counter, "trunk8_http_requests"))
    with pytest.raises(ValueError, match="already part"):
        ops.add_service("first", lambda: True, CollectorRegistry())
    assert list(ops.checks) == ["first"]  # a refused service is not half added


async def test_metrics_page_parses_and_names_are_unique(system: RunningSystem) -> None:
    await system.get("/-/healthz")  # an aiohttp-served request, so labelled samples exist
    status, headers, text = await system.get("/-/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    for expected in (
        "trunk8_http_requests",
        "trunk8_redirector_links",
        "trunk8_config_watcher_links_revision",
        "trunk8_task_restarts",
        "trunk8_task_up",
    ):
        assert expected in names
    up = {
        s.labels["task"]: s.value for f in families if f.name == "trunk8_task_up" for s in f.samples
    }
    assert up["link-mirror"] == 1 and up["config-sync"] == 1

    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    status, headers, text = await system.get("/-/metrics", headers=accept)
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert "trunk8_redirector_links" in {f.name for f in openmetrics_families(text)}


async def test_ready_names_every_task(system: RunningSystem) -> None:
    status, _, body = await system.get("/-/ready")
    answer = json.loads(body)
    assert status == 200 and answer["ready"] is True
    assert answer["services"]["redirector"] is True
    assert answer["tasks"]["link-mirror"] == "running"
    assert answer["tasks"]["config-watch"] == "running"


async def test_caught_up_check_fails_when_a_revision_metric_is_missing(
    start_system: StartSystem,
) -> None:
    def drop_redirector_metrics(app: web.Application) -> None:
        registry = app[OPS].registry
        for collector in list(registry._collector_to_names):
            if "trunk8_redirector_links_revision" in registry._collector_to_names[collector]:
                registry.unregister(collector)

    system = await start_system(wait_ready=False, setup=drop_redirector_metrics)
    await wait_until(system.ready, timeout=15)
    with pytest.raises(pytest.fail.Exception, match="trunk8_redirector_links_revision"):
        await system.in_step()
