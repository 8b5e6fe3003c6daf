"""The config-watcher service: the only reader of Trunk8's TOML files on the serving path.

It loads the data directory once, watches it, re-parses only changed files, and publishes
the differences to JetStream KV plus domain events (docs/architecture.md, "A change flows").
"""

from .app import create_app, setup_config_watcher

__all__ = ["create_app", "setup_config_watcher"]
