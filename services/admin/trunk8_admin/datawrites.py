"""Writes to Trunk8's TOML files that lose nothing: locked, checked, atomic (T8-W08).

`edit_toml` is the one way the admin changes a data file. Under an exclusive lock on the
file's folder (shared by every admin process on this machine) it reads the file, lets the
caller change the parsed `tomlkit` document (comments, order and unknown keys kept), and
replaces the file atomically: a temp file in the same folder with the old file's mode and
owner, fsync, a check that nobody (a hand edit) changed the file since it was read, rename,
fsync of the folder. If the file did change, the edit is re-applied to the new content.
Everything here blocks: callers run it in an executor.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.toml_document import TOMLDocument

_T = TypeVar("_T")
# A file edited by hand again and again while we try: give up after this many re-reads.
MAX_ATTEMPTS = 5


class DataWriteError(Exception):
    """A data file could not be changed; the message says why, for the person saving."""


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (flock: released if the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def parse_document(data: bytes | None, path: Path) -> TOMLDocument:
    """A tomlkit document of the file (empty when missing); clear error when it is broken."""
    if data is None:
        return tomlkit.document()
    try:
        return tomlkit.parse(data.decode("utf-8"))
    except (UnicodeDecodeError, TOMLKitError) as err:
        raise DataWriteError(f"{path.name} cannot be read as TOML ({err}); fix it first") from err


def edit_toml(path: Path, edit: Callable[[TOMLDocument], _T]) -> _T:
    """Apply `edit` to the file's document and save it; returns what `edit` returned.

    `edit` may raise to abandon the change (nothing is written). It may be called more
    than once if the file changes under it, so it must only change the document.
    """
    with folder_lock(path.parent):
        for _ in range(MAX_ATTEMPTS):
            before = _read(path)
            document = parse_document(before, path)
            result = edit(document)
            if replace_if_unchanged(path, tomlkit.dumps(document).encode("utf-8"), before):
                return result
    raise DataWriteError(f"{path.name} keeps changing on disk; try again")


def replace_if_unchanged(path: Path, data: bytes, expected: bytes | None) -> bool:
    """Atomically replace `path` with `data` unless its content is no longer `expected`."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            if old is not None:
                os.fchmod(temp.fileno(), old.st_mode & 0o7777)
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    try:
                        os.fchown(temp.fileno(), old.st_uid, old.st_gid)
                    except PermissionError:
                        pass  # not root: the file becomes ours, as any editor would leave it
            else:
                os.fchmod(temp.fileno(), 0o666 & ~_umask())
            os.fsync(temp.fileno())
        # A hand edit since we read it wins: the caller re-applies its change on top.
        if _read(path) != expected:
            os.unlink(temp_name)
            return False
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return True


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    # Linux reports it here; setting it to read it back would race other threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
