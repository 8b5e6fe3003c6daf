"""Operations endpoints every service answers: `/-/healthz`, `/-/ready`, `/-/metrics`.

Services register a readiness check and their own Prometheus registry; when several
services share one application (all-in-one mode) the endpoints answer for all of them:
ready when every service is ready, no background task has been given up (see
`background.py`) and the process is not draining before a stop; and the metrics of one
application registry into which every service registry is registered, so a metric name
two services both use fails at setup (`DuplicateTimeseries`) instead of making an invalid
page. The page is made by
prometheus-client's own aiohttp handler. Requests served by aiohttp are counted here
too, by route and status.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.registry import Collector

from .background import Supervision, setup_supervision

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Ops:
    """Readiness checks and the one metrics registry of the services in one application."""

    def __init__(self, supervision: Supervision) -> None:
        self.checks: dict[str, Callable[[], bool]] = {}
        self.supervision = supervision
        # Set when the process starts stopping: readiness fails from then on, so a load
        # balancer moves traffic away while requests are still served (`trunk8.server`).
        self.draining = False
        # auto_describe: a registered collector's names are read (collected) at once, so a
        # name already taken raises there and then.
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "trunk8_http_requests",
            "HTTP requests answered by the aiohttp pipeline, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "trunk8_http_request_duration_seconds",
            "Time to answer HTTP requests in the aiohttp pipeline.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(supervision)

    def add_service(self, name: str, ready: Callable[[], bool], registry: Collector) -> None:
        """Register one service's readiness check and metrics (a clashing name raises)."""
        if name in self.checks:
            raise ValueError(f"service {name!r} is already part of this application")
        self.registry.register(registry)
        self.checks[name] = ready

    def readiness(self) -> dict[str, bool]:
        """Each service's readiness now."""
        return {name: check() for name, check in self.checks.items()}


OPS = web.AppKey("trunk8.ops", Ops)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_name(request: web.Request) -> str:
    """The route template a request matched (`/edit_link/{code}`), or "unmatched"."""
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
        route = route_name(request)
        ops.http_requests.labels(route, str(status)).inc()
        ops.http_latency.labels(route).observe(time.perf_counter() - started)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 once every service has its state, no task is given up, and no drain."""
    ops = request.app[OPS]
    checks = ops.readiness()
    ok = all(checks.values()) and not ops.supervision.failed and not ops.draining
    body = {
        "ready": ok,
        "draining": ops.draining,
        "services": checks,
        "tasks": ops.supervision.states(),
    }
    return web.json_response(body, status=200 if ok else 503)


def setup_ops(app: web.Application) -> Ops:
    """Install the `/-/` endpoints and request counting once per application."""
    if OPS in app:
        return app[OPS]
    ops = Ops(setup_supervision(app))
    app[OPS] = ops
    app.middlewares.append(count_requests)
    app.router.add_get("/-/healthz", healthz)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/metrics", make_aiohttp_handler(ops.registry))
    return ops
