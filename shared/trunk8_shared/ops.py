"""Operations endpoints every service answers: `/-/healthz`, `/-/ready`, `/-/metrics`.

Services register a readiness check and their own Prometheus registry; when several
services share one application (all-in-one mode) the endpoints answer for all of them:
ready when every service is ready, metrics of every registry. Requests served by aiohttp
are counted here too, by route and status.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Ops:
    """Readiness checks and metric registries of the services in one application."""

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], bool]] = {}
        self.registries: list[CollectorRegistry] = []
        self.http_registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "trunk8_http_requests",
            "HTTP requests answered by the aiohttp pipeline, by route and status.",
            ["route", "status"],
            registry=self.http_registry,
        )
        self.http_latency = Histogram(
            "trunk8_http_request_duration_seconds",
            "Time to answer HTTP requests in the aiohttp pipeline.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.http_registry,
        )
        self.registries.append(self.http_registry)

    def add_service(
        self, name: str, ready: Callable[[], bool], registry: CollectorRegistry
    ) -> None:
        """Register one service's readiness check and metrics."""
        self.checks[name] = ready
        self.registries.append(registry)

    def readiness(self) -> dict[str, bool]:
        """Each service's readiness now."""
        return {name: check() for name, check in self.checks.items()}


OPS = web.AppKey("trunk8.ops", Ops)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route template and status."""
    ops = request.app[OPS]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = _route_name(request)
        ops.http_requests.labels(route, str(status)).inc()
        ops.http_latency.labels(route).observe(time.perf_counter() - started)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 once every service has loaded its state, else 503."""
    checks = request.app[OPS].readiness()
    ok = all(checks.values())
    return web.json_response({"ready": ok, "services": checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of every registry of the application."""
    body = b"".join(generate_latest(registry) for registry in request.app[OPS].registries)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def setup_ops(app: web.Application) -> Ops:
    """Install the `/-/` endpoints and request counting once per application."""
    if OPS in app:
        return app[OPS]
    ops = Ops()
    app[OPS] = ops
    app.middlewares.append(count_requests)
    app.router.add_get("/-/healthz", healthz)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/metrics", metrics)
    return ops
