"""The admin service's factory: sessions, templates, the link index, and its routes.

`setup_admin` adds the admin to an application (alone or beside the other services);
`create_app` is the stand-alone application. Admin routes are wrapped one by one
(`pages.admin_page`), so nothing of the admin runs for `/{code}`, `/f/…` or `/-/…`.
The admin's own static files (script, stylesheet, logo, favicon) are served under
`/static/admin/` with fingerprinted names and a year of caching, and the vendored
Bootstrap Icons under a path naming their version, cached as long; Bootswatch themes come
from the shared `/static/bootswatch/`. No page needs a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from functools import partial
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from trunk8_shared.background import task_ctx
from trunk8_shared.bus import setup_bus
from trunk8_shared.datadir import DataDir
from trunk8_shared.kvmirror import KvMirror
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import LINKS_BUCKET
from trunk8_shared.settings import Settings, environment
from trunk8_shared.static import StaticFiles

from . import views_auth, views_backup, views_links, views_profile, views_switch, views_users
from .accounts import AccountBook
from .audit import AuditTrail
from .linkindex import LinkIndex
from .linkstore import LinkStore
from .metrics import AdminMetrics
from .pages import JINJA, Handler
from .proxies import TrustedProxies, parse_networks
from .publish import LinkPublisher
from .purge import purge_forever
from .settings import AdminSettings, admin_settings_from, session_key
from .siteconfig import Themes
from .state import ADMIN, Admin
from .throttle import LoginThrottle
from .viewerthemes import ThemeSource, ViewerMarkdownTheme

log = logging.getLogger("trunk8.admin")

PACKAGE = Path(__file__).parent
STATIC_DIR = PACKAGE / "static"
TEMPLATES_DIR = PACKAGE / "templates"
STATIC_PREFIX = "/static/admin/"
SESSION_COOKIE = "trunk8_session"
IMMUTABLE = "public, max-age=31536000, immutable"
ICONS_VERSION = "1.13.2"  # the npm package bootstrap-icons, see vendor/bootstrap-icons/
ICONS_DIR = PACKAGE / "vendor" / "bootstrap-icons"
# Under the admin's prefix, so the edge's `/static/admin/` route reaches it too.
ICONS_PREFIX = f"{STATIC_PREFIX}bootstrap-icons-{ICONS_VERSION}/"
# Trunk8's fixed asset paths (T8-086) and the files answering them; not fingerprinted, so
# revalidated on each use.
TRUNK8_STATIC_PATHS = {
    "/static/css/style.css": "admin.css",
    "/static/js/main.js": "admin.js",
    "/static/img/trunk8_logo.png": "trunk8_logo.png",
    "/static/favicon.ico": "favicon.ico",
}


class IndexMirror(KvMirror):
    """The links bucket mirrored into the admin's index, telling it each revision reached."""

    def __init__(self, admin_index: LinkIndex, metrics: AdminMetrics, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.admin_index = admin_index
        self.metrics = metrics

    def _reached(self, revision: int) -> None:
        super()._reached(revision)
        self.admin_index.reached(revision)
        self.metrics.revision.set(revision)


def fingerprinted_static() -> tuple[dict[str, str], dict[str, Path]]:
    """URLs of the admin's static files by name, and files by served name."""
    urls: dict[str, str] = {}
    files: dict[str, Path] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        served = f"{path.stem}.{digest}{path.suffix}"
        urls[path.name] = STATIC_PREFIX + served
        files[served] = path
    urls["bootstrap-icons.css"] = ICONS_PREFIX + "bootstrap-icons.min.css"
    return urls, files


def _static_handler(files: dict[str, Path]) -> Handler:
    async def static_file(request: web.Request) -> web.StreamResponse:
        """GET /static/admin/<name>.<hash>.<ext>: cached for a year (the name changes)."""
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": IMMUTABLE})

    return static_file


def _trunk8_static_handler(path: Path) -> Handler:
    async def trunk8_static_file(request: web.Request) -> web.StreamResponse:
        """One of Trunk8's fixed asset paths (revalidated: the content may change)."""
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return trunk8_static_file


def setup_admin(
    app: web.Application, settings: Settings, admin_settings: AdminSettings | None = None
) -> Admin:
    """Add the admin to an application; without `admin_settings` they come from the environment."""
    if admin_settings is None:
        # The composition root calls this once at start; handlers never read the environment.
        admin_settings = admin_settings_from(environment())
    data = DataDir(settings.data_path)
    bus = setup_bus(app, settings, "trunk8-admin")
    metrics = AdminMetrics()
    index = LinkIndex()
    mirror = IndexMirror(index, metrics, bus, LINKS_BUCKET, index)
    themes = Themes(data)
    startup_config = themes.site.get_now()
    fernet = Fernet(base64.urlsafe_b64encode(session_key(admin_settings, data.state_dir)))
    storage = EncryptedCookieStorage(
        fernet,
        cookie_name=SESSION_COOKIE,
        httponly=True,
        samesite="Lax",
        max_age=None,
    )
    urls, files = fingerprinted_static()
    admin = Admin(
        settings=settings,
        admin_settings=admin_settings,
        data=data,
        accounts=AccountBook(data, admin_settings.admin_password),
        themes=themes,
        index=index,
        store=LinkStore(data),
        publisher=LinkPublisher(bus, data, index, metrics, admin_settings.publish_timeout),
        audit=AuditTrail(bus),
        throttle=LoginThrottle(admin_settings.login_attempts, admin_settings.login_window),
        proxies=TrustedProxies(parse_networks(admin_settings.trusted_proxies)),
        metrics=metrics,
        storage=storage,
        session_fernet=fernet,
        startup_config=startup_config,
        static_urls=urls,
        index_ready=mirror.ready,
    )
    app[ADMIN] = admin
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(default=True),
        app_key=JINJA,
        undefined=jinja2.StrictUndefined,
    )
    setup_ops(app).add_service("admin", mirror.ready.is_set, metrics.registry)
    _add_routes(app, files)
    # Its own folder set (not the shared one): Bootswatch stays the files service's route.
    StaticFiles(app).add_folder(ICONS_PREFIX, ICONS_DIR, IMMUTABLE)
    app.cleanup_ctx.append(task_ctx("admin-link-index", mirror.run))
    app.cleanup_ctx.append(task_ctx("admin-index-settle", index.settle_load))
    app.cleanup_ctx.append(task_ctx("admin-expiry-purge", partial(purge_forever, admin)))
    if admin_settings.default_password:
        log.warning(
            "the admin password is the public default 'admin': set TRUNK8_ADMIN_PASSWORD "
            "before exposing Trunk8"
        )
    return admin


def _add_routes(app: web.Application, files: dict[str, Path]) -> None:
    router = app.router
    router.add_get("/", views_links.dashboard)
    router.add_get("/auth/login", views_auth.login_form)
    router.add_post("/auth/login", views_auth.login)
    router.add_get("/auth/logout", views_auth.logout_confirm)
    router.add_post("/auth/logout", views_auth.logout)
    router.add_get("/add", views_links.add_form)
    router.add_post("/add", views_links.add)
    router.add_get("/links", views_links.links)
    router.add_get("/edit_link/{code}", views_links.edit_form)
    router.add_post("/edit_link/{code}", views_links.edit)
    for prefix in ("/delete_link/", "/delete/"):
        router.add_get(prefix + "{code}", views_links.delete_confirm)
        router.add_post(prefix + "{code}", views_links.delete)
    router.add_get("/auth/register", views_users.register_form)
    router.add_post("/auth/register", views_users.register)
    router.add_get("/users", views_users.users)
    router.add_get("/users/{username}", views_users.user_detail)
    router.add_get("/users/{username}/delete", views_users.delete_preview)
    router.add_post("/users/{username}/delete", views_users.delete_user)
    router.add_get("/auth/switch-user/{username}", views_switch.switch_user_confirm)
    router.add_post("/auth/switch-user/{username}", views_switch.switch_user)
    router.add_get("/auth/switch-back", views_switch.switch_back_confirm)
    router.add_post("/auth/switch-back", views_switch.switch_back)
    router.add_get("/profile", views_profile.profile)
    router.add_post("/profile", views_profile.profile_update)
    router.add_get("/settings", views_profile.settings)
    router.add_post("/settings", views_profile.settings_update)
    router.add_get("/backup/create", views_backup.backup_form)
    router.add_post("/backup/create", views_backup.backup_create)
    router.add_get("/backup/restore", views_backup.restore_form)
    router.add_post("/backup/restore", views_backup.restore)
    router.add_get(STATIC_PREFIX + "{name}", _static_handler(files))
    for legacy_path, name in TRUNK8_STATIC_PATHS.items():
        router.add_get(legacy_path, _trunk8_static_handler(STATIC_DIR / name))


def viewer_markdown_theme(admin: Admin, fallback: ThemeSource) -> ViewerMarkdownTheme:
    """A markdown theme source that knows signed-in viewers (for the files service)."""
    return ViewerMarkdownTheme(admin, fallback, SESSION_COOKIE, admin.session_fernet)


def create_app(settings: Settings, admin_settings: AdminSettings | None = None) -> web.Application:
    """A stand-alone admin application (`trunk8 run --target admin`)."""
    app = web.Application()
    setup_admin(app, settings, admin_settings)
    return app
