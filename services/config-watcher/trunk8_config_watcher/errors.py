"""The config-watcher's start-up error, importable without the service (for `trunk8.cli`)."""


class ConfigLoadError(Exception):
    """The first load cannot produce a usable state (users.toml unreadable)."""
