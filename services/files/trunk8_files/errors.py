"""The files service's domain errors; `handlers.py` is the one place that maps them to HTTP.

An asset that is missing or not a plain file answers the friendly not-found page. An
asset path that leads outside its owner's `assets/` folder answers the same page and is
also reported (log and `config.error` event), since only a crafted record can hold one.
"""

from __future__ import annotations


class AssetError(Exception):
    """A link's asset cannot be served; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AssetMissing(AssetError):
    """No such file, or not a regular file (a directory, a FIFO, a device)."""


class AssetOutside(AssetError):
    """The path resolves outside the owner's assets folder (T8-W03)."""
