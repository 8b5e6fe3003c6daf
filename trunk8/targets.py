"""The module map: each target name and the function that adds that service to an app.

`all` is every service in one application and one process; the order below is the
order of their startup (the config-watcher publishes, the redirector follows). Given a
`watcher`, `all` runs the config-watcher as a child process instead (what `trunk8 up`
does, so parsing never holds the serving interpreter), or links to the one child of a
`--workers` parent.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from trunk8_shared.bus import setup_bus
from trunk8_shared.settings import Settings

from .watcherproc import WatcherLink, setup_watcher_child

# Each service's package is imported only when a process runs it: a redirector, or the
# serving side of `up` (whose config-watcher is a child), never imports the watcher's
# parsing stack, and the child imports none of the serving services.


def _setup_config_watcher(app: web.Application, settings: Settings) -> object:
    from trunk8_config_watcher.app import setup_config_watcher

    return setup_config_watcher(app, settings)


def _setup_redirector(app: web.Application, settings: Settings) -> object:
    from trunk8_redirector import setup_redirector

    return setup_redirector(app, settings)


def _setup_files(app: web.Application, settings: Settings) -> object:
    from trunk8_files import setup_files

    return setup_files(app, settings)


def _setup_admin(app: web.Application, settings: Settings) -> object:
    from trunk8_admin import setup_admin

    return setup_admin(app, settings)


SERVICES: dict[str, Callable[[web.Application, Settings], object]] = {
    "config-watcher": _setup_config_watcher,
    "redirector": _setup_redirector,
    "files": _setup_files,
    "admin": _setup_admin,
}
TARGETS = (*SERVICES, "all")


def build_app(
    target: str, settings: Settings, watcher: WatcherLink | None = None
) -> web.Application:
    """One application running `target` (a service name, or `all`).

    `watcher`: the config-watcher runs as a child process instead, ours (`WatcherProcess`,
    `up`) or another process's followed on its loopback port (a worker of `up --workers`).
    """
    names = list(SERVICES) if target == "all" else [target]
    app = web.Application()
    setup_bus(app, settings, f"trunk8-{target}")  # one connection, named after the process
    setup = SERVICES
    if watcher is not None:
        child = watcher
        setup = {**SERVICES, "config-watcher": lambda app, _: setup_watcher_child(app, child)}
    built = {name: setup[name](app, settings) for name in names}
    if "files" in built and "admin" in built:
        from trunk8_admin import Admin, viewer_markdown_theme
        from trunk8_files import Files

        files, admin = built["files"], built["admin"]
        assert isinstance(files, Files) and isinstance(admin, Admin)
        # Markdown pages use a signed-in viewer's own theme; only the admin reads sessions.
        files.content.themes = viewer_markdown_theme(admin, files.themes)
    return app
