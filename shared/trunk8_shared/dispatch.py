"""The one `/{code}` route of an application, shared by every service that answers codes.

A short code may be a redirect (the redirector's), or a file, markdown or HTML link (the
files service's). Services never import each other; each fills this registry instead:

- a *finder* tells the type of a code's live record (`"redirect"`, `"file"`, ...), or
  None when it does not know the code (unknown, expired, or not its business);
- a *handler* answers a request for a code of one type.

The dispatcher asks the finders in registration order and calls the handler registered
for the first type found. A handler registered with `fallback=True` answers only while
no regular handler claims its type: the redirector running alone uses that to send file
links on to a files service elsewhere. Codes nobody knows answer the friendly not-found
page; so do paths that match no route at all, while a 404 raised by another service's
own handler is left as that service made it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .pages import not_found_response

TypeFinder = Callable[[str], str | None]
CodeHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]

CODE_ROUTE = "/{code}"


class CodeRoutes:
    """Finders of link types and handlers by type, for the application's `/{code}` route."""

    def __init__(self) -> None:
        self.finders: list[TypeFinder] = []
        self.handlers: dict[str, CodeHandler] = {}
        self.fallbacks: dict[str, CodeHandler] = {}

    def add_finder(self, finder: TypeFinder) -> None:
        """Ask `finder` for the type of codes (after the finders added before it)."""
        self.finders.append(finder)

    def add_handler(self, link_type: str, handler: CodeHandler, *, fallback: bool = False) -> None:
        """Answer codes of `link_type` with `handler`; a fallback yields to a regular one."""
        table = self.fallbacks if fallback else self.handlers
        if link_type in table:
            raise ValueError(f"a handler for {link_type!r} links is already registered")
        table[link_type] = handler

    def handler_for(self, code: str) -> CodeHandler | None:
        """The handler that answers `code` now, or None when no service knows it."""
        for finder in self.finders:
            link_type = finder(code)
            if link_type is not None:
                return self.handlers.get(link_type) or self.fallbacks.get(link_type)
        return None

    def answers_type(self, link_type: str) -> bool:
        """Whether some handler (regular or fallback) answers links of this type."""
        return link_type in self.handlers or link_type in self.fallbacks

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """`GET`/`HEAD /{code}`: the handler of the code's type, else the not-found page."""
        code = request.match_info["code"]
        handler = self.handler_for(code)
        if handler is None:
            return not_found_response()
        return await handler(request, code)


CODE_ROUTES = web.AppKey("trunk8.code_routes", CodeRoutes)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def unmatched_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Paths that match no route answer the friendly not-found page, not aiohttp's text."""
    if isinstance(request.match_info.http_exception, web.HTTPNotFound):
        return not_found_response()
    return await handler(request)


def setup_code_routes(app: web.Application) -> CodeRoutes:
    """The application's code registry, adding the `/{code}` route on first use."""
    if CODE_ROUTES in app:
        return app[CODE_ROUTES]
    routes = CodeRoutes()
    app[CODE_ROUTES] = routes
    app.router.add_get(CODE_ROUTE, routes.dispatch)  # HEAD too
    app.middlewares.append(unmatched_not_found)
    return routes
