"""A data file parsed once per change: re-read when its size, mtime or inode move.

Pages ask for users.toml and config.toml on every request (a hand edit applies on the
next click, T8-084), so the check is one `stat`; parsing happens only after a change and
off the event loop. A file that stops parsing keeps its last good value, and the problem
is logged once and kept for the UI to show (T8-W17).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

_T = TypeVar("_T")
log = logging.getLogger("trunk8.admin")

Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class CachedFile(Generic[_T]):
    """The parsed value of one file, refreshed when the file changes."""

    def __init__(self, path: Path, parse: Callable[[bytes | None], _T], default: _T) -> None:
        self.path = path
        self._parse = parse
        self.value = default
        self.error: str | None = None
        self._stamp: Stamp | object = object()  # never equal: the first call reads
        self._lock = asyncio.Lock()

    def _load(self, stamp: Stamp) -> None:
        try:
            data = self.path.read_bytes() if stamp is not None else None
        except OSError as err:
            data, stamp = None, None
            log.debug("cannot read %s: %s", self.path, err)
        try:
            self.value = self._parse(data)
        except Exception as err:
            if self.error != str(err):
                log.error("%s: %s (keeping the last good values)", self.path, err)
            self.error = str(err)
        else:
            self.error = None
        self._stamp = stamp

    async def get(self) -> _T:
        """The current value, re-parsed in an executor when the file changed."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return self.value
        async with self._lock:
            fresh = _stamp(self.path)
            if fresh != self._stamp:
                await asyncio.get_running_loop().run_in_executor(None, self._load, fresh)
        return self.value

    def get_now(self) -> _T:
        """The current value, parsed on the calling thread (blocking code only)."""
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._load(stamp)
        return self.value
