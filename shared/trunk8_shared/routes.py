"""The public route table: which service answers which URL prefix at the edge.

One table, kept here only: the nginx edge config in `deploy/nginx/` is generated from it
(`python -m trunk8.deploy nginx`) and a test checks it against the routes the services
really register, so a route added to a service without a row here fails CI instead of
landing on the redirector. `service_for` resolves a path with nginx's own rules (an exact
location first, then the longest matching prefix), so the check sees what nginx will do.
`/-/` (health, readiness, metrics) is per process and never public: the edge answers 404
and monitoring scrapes each process directly.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Service = Literal["redirector", "files", "admin"]


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """One edge location: a path (exact, or a prefix ending in `/`) and who answers it."""

    path: str
    service: Service
    exact: bool = False
    # Tight rate limit (sign-in, registration, switching users: password work per request).
    auth_limited: bool = False
    # Long-lived public assets: the edge may cache them.
    static: bool = False


# Everything not below is a short code: the redirector's catch-all.
CATCH_ALL = Route(path="/", service="redirector")

PUBLIC_ROUTES: tuple[Route, ...] = (
    Route(path="/", service="admin", exact=True),
    Route(path="/add", service="admin", exact=True),
    Route(path="/links", service="admin", exact=True),
    Route(path="/users", service="admin", exact=True),
    Route(path="/profile", service="admin", exact=True),
    Route(path="/settings", service="admin", exact=True),
    Route(path="/edit_link/", service="admin"),
    Route(path="/delete_link/", service="admin"),
    Route(path="/delete/", service="admin"),
    Route(path="/users/", service="admin"),
    Route(path="/backup/", service="admin"),
    Route(path="/auth/", service="admin", auth_limited=True),
    Route(path="/static/admin/", service="admin", static=True),
    # Trunk8's own asset paths (T8-086), kept for pages and bookmarks that name them.
    Route(path="/static/css/", service="admin", static=True),
    Route(path="/static/js/", service="admin", static=True),
    Route(path="/static/img/", service="admin", static=True),
    Route(path="/static/favicon.ico", service="admin", exact=True, static=True),
    Route(path="/f/", service="files"),
    Route(path="/static/bootswatch/", service="files", static=True),
    CATCH_ALL,
)

# Per-process paths the edge refuses (scrape and probe each process directly).
PRIVATE_PREFIX = "/-/"


def service_for(path: str, routes: tuple[Route, ...] = PUBLIC_ROUTES) -> Service | None:
    """The service nginx sends `path` to (None for `/-/`), by nginx's location rules."""
    for route in routes:
        if route.exact and route.path == path:
            return route.service
    if path.startswith(PRIVATE_PREFIX):
        return None
    prefixes = [r for r in routes if not r.exact and path.startswith(r.path)]
    return max(prefixes, key=lambda r: len(r.path)).service if prefixes else None
