"""The module map: each target name and the function that adds that service to an app.

`all` is every service in one application and one process; the order below is the
order of their startup (the config-watcher publishes, the redirector follows). With
`watcher_process`, `all` runs the config-watcher as a child process instead (what
`trunk8 up` does, so parsing never holds the serving interpreter); with `watcher_port`, it
links to the one child of a `--workers` parent.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from trunk8_admin import Admin, setup_admin, viewer_markdown_theme
from trunk8_config_watcher import setup_config_watcher
from trunk8_files import Files, setup_files
from trunk8_redirector import setup_redirector
from trunk8_shared.bus import setup_bus
from trunk8_shared.settings import Settings

from .watcherproc import WatcherLink, WatcherProcess, setup_watcher_child

SERVICES: dict[str, Callable[[web.Application, Settings], object]] = {
    "config-watcher": setup_config_watcher,
    "redirector": setup_redirector,
    "files": setup_files,
    "admin": setup_admin,
}
TARGETS = (*SERVICES, "all")


def build_app(
    target: str,
    settings: Settings,
    watcher_process: bool = False,
    watcher_port: int | None = None,
) -> web.Application:
    """One application running `target` (a service name, or `all`).

    `watcher_port`: the config-watcher is a child of another process (the parent of `up
    --workers`), answering on that loopback port.
    """
    names = list(SERVICES) if target == "all" else [target]
    app = web.Application()
    setup_bus(app, settings, f"trunk8-{target}")  # one connection, named after the process
    setup = SERVICES
    if watcher_port is not None:
        port = watcher_port
        setup = {
            **SERVICES,
            "config-watcher": lambda app, _: setup_watcher_child(app, WatcherLink(port)),
        }
    elif watcher_process:
        setup = {
            **SERVICES,
            "config-watcher": lambda app, s: setup_watcher_child(app, WatcherProcess(s)),
        }
    built = {name: setup[name](app, settings) for name in names}
    files, admin = built.get("files"), built.get("admin")
    if isinstance(files, Files) and isinstance(admin, Admin):
        # Markdown pages use a signed-in viewer's own theme; only the admin reads sessions.
        files.content.themes = viewer_markdown_theme(admin, files.themes)
    return app
