"""Finding a link's asset on disk, confined to its owner's `assets/` folder (T8-W03).

The stored `path` is checked as text first (no absolute paths, no `..`), then resolved
with every symlink followed; the result must still lie inside the real assets folder and
be a regular file. Directories, FIFOs and devices are never opened (a FIFO would block a
worker forever).

Resolving walks the path one `lstat` per component, so `AssetLocator` remembers each
resolution for `RESOLVE_TTL` seconds and meanwhile checks the remembered real path with
one `lstat`: a real path holds no symlink, so if that file became a symlink (or anything
but a regular file) the path is resolved again at once. These are metadata calls of a
local folder, made on the event loop (see `handlers.py`).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from trunk8_shared.datafiles import asset_path_problem

from .errors import AssetMissing, AssetOutside

RESOLVE_TTL = 1.0
MAX_REMEMBERED = 50_000


@dataclass(frozen=True, slots=True)
class Asset:
    """A regular file inside its owner's assets folder, as found just now."""

    path: str  # fully resolved: no symlink in it
    stat: os.stat_result

    @property
    def identity(self) -> tuple[str, int, int, int]:
        """Changes whenever the file's content may have changed (a cache key)."""
        return (self.path, self.stat.st_ino, self.stat.st_mtime_ns, self.stat.st_size)


def assets_folder(users_dir: Path, owner: str) -> Path:
    """users/<owner>/assets, refusing owner names that are not one plain folder name."""
    if not owner or owner in (".", "..") or "/" in owner or "\\" in owner or "\x00" in owner:
        raise AssetOutside(f"owner {owner!r} is not a folder name")
    return users_dir / owner / "assets"


def resolve_asset(users_dir: Path, owner: str, path: str) -> str:
    """The real path of `owner`'s asset `path`; raises `AssetOutside` if it leaves the folder."""
    if problem := asset_path_problem(path):
        raise AssetOutside(problem)
    folder = os.path.realpath(assets_folder(users_dir, owner))
    resolved = os.path.realpath(os.path.join(folder, path))
    if not resolved.startswith(folder + os.sep):
        raise AssetOutside(f"asset path {path!r} resolves outside the assets folder")
    return resolved


def _regular(resolved: str, path: str) -> os.stat_result:
    try:
        found = os.stat(resolved)
    except OSError as err:  # missing, a dangling link, a symlink loop, no permission
        raise AssetMissing(f"asset {path!r}: {err.strerror or err}") from err
    if not stat.S_ISREG(found.st_mode):
        raise AssetMissing(f"asset {path!r} is not a regular file")
    return found


def locate_asset(users_dir: Path, owner: str, path: str) -> Asset:
    """The asset `path` of `owner`, resolved and checked; raises an `AssetError`."""
    resolved = resolve_asset(users_dir, owner, path)
    return Asset(resolved, _regular(resolved, path))


class AssetLocator:
    """`locate_asset` with each resolution remembered for a moment."""

    def __init__(self, users_dir: Path) -> None:
        self.users_dir = users_dir
        self._resolved: dict[tuple[str, str], tuple[str, float]] = {}

    def locate(self, owner: str, path: str) -> Asset:
        """The asset `path` of `owner`, as `locate_asset` finds it."""
        key = (owner, path)
        remembered = self._resolved.get(key)
        now = time.monotonic()
        if remembered is not None and now - remembered[1] < RESOLVE_TTL:
            try:
                found = os.lstat(remembered[0])
            except OSError:
                found = None
            if found is not None and stat.S_ISREG(found.st_mode):
                return Asset(remembered[0], found)
        resolved = resolve_asset(self.users_dir, owner, path)
        asset = Asset(resolved, _regular(resolved, path))
        if len(self._resolved) >= MAX_REMEMBERED:
            self._resolved.clear()
        self._resolved[key] = (resolved, now)
        return asset
