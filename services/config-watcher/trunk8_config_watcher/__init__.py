"""The config-watcher service: the only reader of Trunk8's TOML files on the serving path.

It loads the data directory once, watches it, re-parses only changed files, and publishes
the differences to JetStream KV plus domain events (docs/architecture.md, "A change flows").

`create_app` and `setup_config_watcher` are imported on first use: a process that only
reads a constant or an error class of this package (the serving side of `trunk8 up`, a
redirector) does not pay for the service's imports (tomlkit, the watcher, about 0.5 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, setup_config_watcher

__all__ = ["create_app", "setup_config_watcher"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".app", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
