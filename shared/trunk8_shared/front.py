"""The public port's front: what a service may put before aiohttp, and the port's bad-request log.

The composition root serves an application's port with aiohttp's request handler, or, when
a service has set `FRONT` on the application, through that service's front: a lean
protocol that answers what it can itself and hands every other connection to aiohttp.
`routed_segments` derives from the application's router the first path segments that
routes own, so a front never answers a path a route was made for, however routes are
added later. A front drains with the process (`drain`, then `close` with a grace period:
`trunk8.server`). Malformed requests, found by a front or by aiohttp after a hand-over, are
counted and logged as one brief line now and then instead of a traceback each: hostile
clients must not be able to flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .dispatch import CODE_ROUTE
from .settings import Settings

ProtocolFactory = Callable[[], asyncio.Protocol]

log = logging.getLogger("trunk8.front")


class MalformedRequests:
    """Counts malformed requests; logs one brief line per `interval` seconds at most."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.count = 0
        self._unlogged = 0
        self._logged_at = -interval

    def report(self, reason: str, peer: object = None) -> None:
        """Count one malformed request, and log it unless a line was written recently."""
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at < self.interval:
            return
        log.warning(
            "malformed request from %s: %s (%d malformed since the last such line)",
            peer or "unknown peer",
            reason[:200],
            self._unlogged,
        )
        self._logged_at = now
        self._unlogged = 0


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with its per-request tracebacks for bad requests made brief.

    aiohttp logs each request it cannot parse with a full ERROR traceback ("Error handling
    request"); those go to `MalformedRequests`. Every other record passes unchanged.
    """

    def __init__(self, malformed: MalformedRequests) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.malformed = malformed

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = sys.exc_info()[1] if exc_info is True else exc_info
        if isinstance(error, tuple):
            error = error[1]
        if isinstance(error, HttpProcessingError):
            peer = args[0] if args else None
            self.malformed.report(f"{error.code} {error.message}".splitlines()[0], peer)
            return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs


class Front(Protocol):
    """A protocol served on the public port before aiohttp."""

    @property
    def server_log(self) -> ServerLog:
        """The logger aiohttp's handlers must use for connections this front hands over."""

    def serve(self, app: web.Application, fallback: ProtocolFactory) -> ProtocolFactory:
        """Start serving (timers); the protocol factory for the listening socket.

        `fallback` builds aiohttp's handler for a connection handed over.
        """

    def drain(self) -> None:
        """From now on, answer each request with `Connection: close` and close after it."""

    async def close(self, grace: float = 0.0) -> None:
        """Close idle connections now, busy ones after their answer (within `grace` s); stop."""


class FrontFactory(Protocol):
    """Builds a service's front for one listening socket."""

    def __call__(self, settings: Settings) -> Front: ...


FRONT = web.AppKey("trunk8.front", FrontFactory)


def routed_segments(router: web.UrlDispatcher) -> frozenset[str]:
    """The first path segments owned by the router's routes, other than the `/{code}` route.

    `/-/ready` gives `-`, `/f/{code}` gives `f`, `/add` gives `add`, a static prefix its
    first segment. A route whose first segment is variable, other than `/{code}` and not
    deeper than one segment, cannot be told from a short code: that is refused at start.
    """
    segments: set[str] = set()
    for resource in router.resources():
        path = resource.canonical
        if path == CODE_ROUTE:
            continue
        first, slash, _ = path.lstrip("/").partition("/")
        if "{" not in first:
            if first:
                segments.add(first)
        elif not slash:
            raise ValueError(f"route {path!r} cannot be told apart from a short code")
    return frozenset(segments)
