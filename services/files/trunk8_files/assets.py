"""Finding a link's asset on disk, confined to its owner's `assets/` folder (T8-W03).

The stored `path` is checked as text first (no absolute paths, no `..`), then resolved
with every symlink followed; the result must still lie inside the real assets folder and
be a regular file. Directories, FIFOs and devices are never opened (a FIFO would block a
worker forever). These functions touch the disk: call them in an executor.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trunk8_shared.datafiles import asset_path_problem

from .errors import AssetMissing, AssetOutside


@dataclass(frozen=True, slots=True)
class Asset:
    """A regular file inside its owner's assets folder, as found just now."""

    path: Path  # fully resolved
    stat: os.stat_result

    @property
    def identity(self) -> tuple[str, int, int, int]:
        """Changes whenever the file's content may have changed (a cache key)."""
        return (str(self.path), self.stat.st_ino, self.stat.st_mtime_ns, self.stat.st_size)


def assets_folder(users_dir: Path, owner: str) -> Path:
    """users/<owner>/assets, refusing owner names that are not one plain folder name."""
    if not owner or owner in (".", "..") or "/" in owner or "\\" in owner or "\x00" in owner:
        raise AssetOutside(f"owner {owner!r} is not a folder name")
    return users_dir / owner / "assets"


def locate_asset(users_dir: Path, owner: str, path: str) -> Asset:
    """The asset `path` of `owner`, resolved and checked; raises an `AssetError`."""
    if problem := asset_path_problem(path):
        raise AssetOutside(problem)
    folder = os.path.realpath(assets_folder(users_dir, owner))
    resolved = os.path.realpath(os.path.join(folder, path))
    if not resolved.startswith(folder + os.sep):
        raise AssetOutside(f"asset path {path!r} resolves outside the assets folder")
    try:
        found = os.stat(resolved)
    except OSError as err:  # missing, a dangling link, a symlink loop, no permission
        raise AssetMissing(f"asset {path!r}: {err.strerror or err}") from err
    if not stat.S_ISREG(found.st_mode):
        raise AssetMissing(f"asset {path!r} is not a regular file")
    return Asset(Path(resolved), found)
