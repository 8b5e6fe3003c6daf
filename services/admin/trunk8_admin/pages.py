"""What every admin page goes through: session, freshness, CSRF, sign-in checks, errors.

Admin routes are wrapped one by one with `admin_page(...)` instead of app middleware, so
the hot path (`/{code}`, `/f/…`, `/-/…`) never pays for sessions or CSRF. The wrapper, in
order: sees past a trusted reverse proxy (`proxies`), loads the encrypted cookie session
with aiohttp-session's storage (and saves it after the handler; its middleware is not
used, it keeps state under string request keys that aiohttp now warns about), ends expired
sessions, re-checks the account against users.toml (T8-W12), refuses cross-site POSTs
and POSTs without the CSRF token (T8-W05), applies the login-required and admin-only
redirects with Trunk8's flashes (T8-025, T8-026), and is the one place that maps the
admin's errors to an HTTP answer. Handlers get a `Page` with the session and helpers.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import Session
from multidict import MultiDictProxy
from yarl import URL

from trunk8_shared.ops import route_name

from .accounts import Identity
from .errors import AdminError, CsrfError, FormError, RequestTooLarge
from .forms import CSRF_FIELD, check_length
from .state import ADMIN, Admin

JINJA = web.AppKey("trunk8.admin.jinja", aiohttp_jinja2.jinja2.Environment)

# Session keys (Trunk8's names where it had one, §3.1).
AUTHENTICATED = "authenticated"
USERNAME = "username"
ACTIVE_USER = "active_user"
REMEMBER = "remember"
SEEN = "seen"
CSRF = "csrf"
FLASHES = "_flashes"
# The field a form error belongs to, kept in the session across a redirect.
FORM_ERROR = "_form_error"

# Pages load only this site's scripts (no inline script anywhere), so an injected
# `<script>` would not run; inline styles are allowed for the progress bar and the QR SVG.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SAFE_THEME = re.compile(r"[a-z0-9_-]{1,40}")
# Forms sent urlencoded (login, logout, delete; scripts posting links) have no files.
SMALL_FORM_LIMIT = 1024 * 1024

PageHandler = Callable[[web.Request, "Page"], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Page:
    """One admin request: its session, who is signed in, and the rendering helpers."""

    def __init__(
        self, request: web.Request, admin: Admin, session: Session, user: Identity | None
    ) -> None:
        self.request = request
        self.admin = admin
        self.session = session
        self.user = user
        self.effective: Identity | None = user
        self.theme = "cerulean"
        # Set by handlers that record their own audit event (switching, accounts).
        self.audited = False
        self.audit_detail = ""
        self.form: MultiDictProxy[str | bytes | bytearray | web.FileField] | None = None

    @property
    def switched(self) -> bool:
        """True while an admin acts as another user (§3.2)."""
        return (
            self.user is not None
            and self.effective is not None
            and self.effective.username != self.user.username
        )

    @property
    def client(self) -> str:
        """The client's address (past trusted proxies, see `proxies`)."""
        return self.request.remote or "unknown"

    def flash(self, category: str, message: str) -> None:
        """Show `message` once on the next rendered page (T8-087)."""
        self.session[FLASHES] = [*self.session.get(FLASHES, []), [category, message]]

    def field_error(self, field: str, message: str) -> None:
        """Flash `message` (as Trunk8 did) and show it next to `field` on the next page."""
        self.flash("error", message)
        self.session[FORM_ERROR] = [field, message]

    def take_field_error(self) -> tuple[str, str]:
        """The (field, message) a redirected form is to show, removed from the session."""
        value = self.session.pop(FORM_ERROR, None)
        if isinstance(value, list) and len(value) == 2:
            return str(value[0]), str(value[1])
        return "", ""

    def take_flashes(self) -> list[tuple[str, str]]:
        """The pending flashes, removed from the session."""
        flashes = self.session.pop(FLASHES, [])
        return [(category, message) for category, message in flashes]

    @property
    def csrf_token(self) -> str:
        """The session's CSRF token, made on first use."""
        token = self.session.get(CSRF)
        if not isinstance(token, str):
            token = self.session[CSRF] = secrets.token_urlsafe(32)
        return token

    def redirect(self, location: str) -> NoReturn:
        """Answer 302 to `location` (the session is saved on the way out)."""
        raise web.HTTPFound(location)

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        """A page of the admin layout."""
        context.update(
            page=self,
            flashes=self.take_flashes(),
            default_password=self.admin.admin_settings.default_password,
            broken_files=self.broken_files(),
            static=self.admin.static_urls,
        )
        response = aiohttp_jinja2.render_template(
            template, self.request, context, status=status, app_key=JINJA
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response

    async def save_session(self, response: web.StreamResponse) -> None:
        """Put the session cookie on a response about to stream (sent with its headers)."""
        await _save_session(self, response)

    def broken_files(self) -> list[tuple[str, str]]:
        """Data files that do not parse (last good state in use), for an admin's banner."""
        if self.user is None or not self.user.is_admin:
            return []
        admin = self.admin
        cached = (admin.accounts.file, admin.themes.site, admin.themes.catalogue)
        return [
            (admin.data.relative(file.path), file.error)
            for file in cached
            if file.error is not None
        ]

    def base_url(self) -> str:
        """Scheme and host as the request was received (Trunk8's `request.host_url`)."""
        return f"{self.request.scheme}://{self.request.host}/"


def _check_origin(request: web.Request) -> None:
    """A browser POST from another site names that site in Origin: refuse it.

    `Origin: null` is refused too: sandboxed pages send it, and the HTML links the files
    service serves on this very host are sandboxed.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if URL(origin).host_port_subcomponent != URL(f"//{request.host}").host_port_subcomponent:
        raise CsrfError()


async def _check_small_form(page: Page) -> None:
    """Read an urlencoded POST and check its CSRF token (multipart forms check their own)."""
    request = page.request
    if request.content_type.startswith("multipart/"):
        return  # forms.read_upload_form checks the token before storing any file
    check_length(request, SMALL_FORM_LIMIT)
    try:
        form = page.form = await request.post()
    except web.HTTPRequestEntityTooLarge as err:
        raise RequestTooLarge(SMALL_FORM_LIMIT) from err
    except ValueError as err:  # a body that does not decode as a form
        raise FormError("The form could not be read.") from err
    token = form.get(CSRF_FIELD, "")
    if not isinstance(token, str) or not secrets.compare_digest(token, page.csrf_token):
        raise CsrfError()


async def _refresh(page: Page) -> None:
    """End idle sessions, keep "remember me" cookies sliding, re-check the account."""
    admin, session = page.admin, page.session
    now = time.time()
    lifetime_days = admin.startup_config.permanent_lifetime_days
    if session.get(AUTHENTICATED):
        remember = bool(session.get(REMEMBER))
        limit = (
            lifetime_days * 86400 if remember else admin.admin_settings.session_idle_hours * 3600
        )
        seen = session.get(SEEN, 0)
        user = await admin.accounts.identity(str(session.get(USERNAME, "")))
        if not isinstance(seen, int | float) or now - seen > limit or user is None:
            session.invalidate()  # expired, or the account is gone (T8-W12)
        else:
            page.user = page.effective = user
            session.max_age = lifetime_days * 86400 if remember else None
            session[SEEN] = int(now)  # sliding, as Trunk8's permanent sessions are (T8-023)
            active = session.get(ACTIVE_USER)
            if user.is_admin and isinstance(active, str) and active != user.username:
                page.effective = await admin.accounts.identity(active) or user
    theme = await admin.themes.ui_theme(page.effective.username if page.effective else None)
    page.theme = theme if SAFE_THEME.fullmatch(theme) else "cerulean"


def admin_page(*, login: bool = True, admin_only: bool = False) -> Callable[[PageHandler], Handler]:
    """Wrap a page handler with the admin's session, checks and error answers."""

    def wrap(handler: PageHandler) -> Handler:
        async def guarded(request: web.Request, page: Page) -> web.StreamResponse:
            try:
                await _refresh(page)
                if request.method == "POST":
                    _check_origin(request)
                    await _check_small_form(page)
                if login and page.user is None:
                    page.flash("warning", "Please log in to access this page.")
                    page.redirect("/auth/login")
                if admin_only and page.user is not None and not page.user.is_admin:
                    page.flash("error", "Admin access required for this page.")
                    page.redirect("/")
                try:
                    return await handler(request, page)
                finally:
                    if request.method == "POST":
                        await _audit_switched(page)
            except AdminError as err:
                return _error_page(page, err)

        async def route(request: web.Request) -> web.StreamResponse:
            admin = request.app[ADMIN]
            # Behind a trusted proxy: the client's address and scheme, for every check.
            request = admin.proxies.resolve(request)
            started = time.perf_counter()
            status = 500
            session = await admin.storage.load_session(request)
            page = Page(request, admin, session, None)
            try:
                try:
                    response = await guarded(request, page)
                except web.HTTPException as exc:
                    await _save_session(page, exc)
                    raise
                await _save_session(page, response)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                label = route_name(request)
                admin.metrics.requests.labels(label, str(status)).inc()
                admin.metrics.latency.labels(label).observe(time.perf_counter() - started)

        route.__name__ = handler.__name__
        route.__doc__ = handler.__doc__
        return route

    return wrap


async def _audit_switched(page: Page) -> None:
    """A change made while switched to a user names both accounts in the trail (T8-032)."""
    if not page.switched or page.audited:
        return
    assert page.user is not None and page.effective is not None
    resource = page.request.match_info.route.resource
    action = resource.canonical if resource is not None else page.request.path
    await page.admin.audit.record(
        page.user.username,
        f"POST {action}",
        client=page.client,
        user=page.effective.username,
        target=page.request.path,
        detail=page.audit_detail,
    )


async def _save_session(page: Page, response: web.StreamResponse | web.HTTPException) -> None:
    """Write the session cookie, unless nothing was ever stored in it."""
    session = page.session
    if session.new and session.empty:
        return
    if isinstance(response, web.StreamResponse) and response.prepared:
        return  # a streamed answer has sent its headers already
    await page.admin.storage.save_session(page.request, response, session)  # type: ignore[arg-type]


def _error_page(page: Page, err: AdminError) -> web.Response:
    """The one place the admin's errors become HTTP answers."""
    if isinstance(err, CsrfError):
        status, title = 403, "Form expired"
    elif isinstance(err, RequestTooLarge):
        status, title = 413, "Upload too large"
    elif isinstance(err, FormError):
        status, title = 400, "Form not accepted"
    else:
        status, title = 500, "Something went wrong"
    response = page.render("error.html", status=status, title=title, message=str(err))
    if status == 413:
        # The rest of a refused body is not read: tell the client the connection ends.
        response.force_close()
    return response
