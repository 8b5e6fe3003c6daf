"""Backup archives in Trunk8's layout (§4.14, T8-077), streamed as they are made.

Entries, in Trunk8's order and with no folder entries: `links.toml` (a copy, or
`[links]`), `config.toml` (only for users other than `admin`: a copy, or `[app]`),
`assets/<path>` for every regular file under the user's `assets/` (sub-folders kept;
links and half-written uploads skipped), and `backup_metadata.toml` with
`[backup_info]`. The standard library's `zipfile` writes to a non-seekable sink (sizes
go in data descriptors, which Trunk8's `zipfile` reads), so the archive goes to the
client in chunks while it is made: no copy of it in memory or on disk (T8-W15). The
zip is built on a worker thread; a bounded queue hands chunks to the event loop, so a
slow client slows the reading of files instead of filling memory.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import tomlkit

from trunk8_shared.datadir import DataDir, local_timestamp

from .accounts import ADMIN

CHUNK = 256 * 1024
QUEUE_CHUNKS = 4
TRUNK8_VERSION = "0.7.0"
UPLOAD_TEMP_PREFIX = ".upload-"


class BackupAborted(Exception):
    """The client went away: stop making the archive."""


def backup_filename(target: str) -> str:
    """`trunk8_backup_<user>_<YYYYMMDD_HHMMSS>.zip` in local time (T8-077)."""
    return f"trunk8_backup_{target}_{time.strftime('%Y%m%d_%H%M%S')}.zip"


def asset_files(assets: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of each regular file under `assets/`, sorted, no links."""
    if assets.is_symlink():
        return  # a linked assets/ could lead anywhere on the machine
    for root, dirs, names in os.walk(assets):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(names):
            if name.startswith(UPLOAD_TEMP_PREFIX):
                continue  # an upload still streaming in
            path = Path(root, name)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
            except OSError:
                continue
            yield "assets/" + path.relative_to(assets).as_posix(), path


def metadata(created_by: str, target: str) -> bytes:
    """`backup_metadata.toml` as Trunk8 writes it."""
    document = tomlkit.document()
    info = tomlkit.table()
    info["created_by"] = created_by
    info["target_user"] = target
    info["created_at"] = local_timestamp()
    info["trunk8_version"] = TRUNK8_VERSION
    document["backup_info"] = info
    return tomlkit.dumps(document).encode("utf-8")


def _info(name: str, mtime: float | None = None, size: int = 0) -> zipfile.ZipInfo:
    moment = time.localtime(mtime if mtime is not None else time.time())
    info = zipfile.ZipInfo(name, date_time=moment[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size  # lets zipfile choose zip64 for files over 2 GiB up front
    return info


def _read_or(path: Path, default: bytes) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return default


def write_backup(data: DataDir, target: str, created_by: str, sink: io.RawIOBase) -> int:
    """Write the zip of `target`'s data to `sink` (blocking); the number of asset files."""
    folder = data.users_dir / target
    files = 0
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(_info("links.toml"), _read_or(folder / "links.toml", b"[links]\n"))
        if target != ADMIN:
            archive.writestr(_info("config.toml"), _read_or(folder / "config.toml", b"[app]\n"))
        for name, path in asset_files(folder / "assets"):
            try:
                source = open(path, "rb")
            except FileNotFoundError:
                continue  # deleted since the listing
            with source:
                found = os.fstat(source.fileno())
                info = _info(name, found.st_mtime, found.st_size)
                with archive.open(info, "w") as entry:
                    while chunk := source.read(CHUNK):
                        entry.write(chunk)
            files += 1
        archive.writestr(_info("backup_metadata.toml"), metadata(created_by, target))
    return files


class ChunkQueue(io.RawIOBase):
    """A write-only stream that hands chunks of `CHUNK` bytes to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
        self.buffer = bytearray()
        self.aborted = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Collect bytes; hand over a chunk once one is full (blocks while the queue is)."""
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self._hand_over(bytes(self.buffer))
            self.buffer.clear()
        return len(data)

    def finish(self) -> None:
        """Hand over what is left, then the end marker (called by the worker thread)."""
        if self.buffer and not self.aborted:
            self._hand_over(bytes(self.buffer))
            self.buffer.clear()
        asyncio.run_coroutine_threadsafe(self.queue.put(None), self.loop).result()

    def _hand_over(self, chunk: bytes) -> None:
        if self.aborted:
            raise BackupAborted()
        asyncio.run_coroutine_threadsafe(self.queue.put(chunk), self.loop).result()

    async def drain(self) -> None:
        """After the client left: let the worker run into `BackupAborted` and end."""
        self.aborted = True
        while await self.queue.get() is not None:
            pass
