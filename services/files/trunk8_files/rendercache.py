"""Rendered markdown kept per file content, rendered in a thread with a time limit.

The key is an asset's identity (real path, inode, mtime, size), so an edited file is
rendered again and an unchanged one never is. Entries are bounded in number and bytes.
Concurrent requests for a page not cached yet share one rendering; a rendering that
fails is remembered too, so a file that cannot be rendered is not retried per request.
A waiter gives up after `RENDER_TIMEOUT` seconds; the rendering goes on and its result
is still kept for the next request.

Rendering runs in one dedicated thread, so at most one page renders at a time. It still
shares the GIL with the event loop: hostile input near the size cap costs a few seconds
of CPU once, during which the loop runs slower (see docs/files.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("trunk8.files")

RENDER_TIMEOUT = 10.0
MAX_FAILED = 10_000


class RenderFailed(Exception):
    """This content could not be rendered (now, or earlier)."""


class RenderCache:
    """Key -> rendered bytes, least recently used first out."""

    def __init__(self, max_entries: int = 512, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="trunk8-files-render")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self.size = 0  # bytes held
        self.hits = 0
        self.misses = 0
        self._pending: dict[Hashable, asyncio.Future[bytes]] = {}
        self._failed: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self.entries)

    async def get(self, key: Hashable, render: Callable[[str], bytes], path: str) -> bytes:
        """The bytes cached for `key`, else `render(path)` run once aside and kept."""
        cached = self.entries.get(key)
        if cached is not None:
            self.entries.move_to_end(key)
            self.hits += 1
            return cached
        if key in self._failed:
            raise RenderFailed("rendering failed before")
        pending = self._pending.get(key)
        if pending is None:
            self.misses += 1
            pending = asyncio.get_running_loop().run_in_executor(self.executor, render, path)
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settle(key, done))
        else:
            self.hits += 1
        try:
            return await asyncio.wait_for(asyncio.shield(pending), RENDER_TIMEOUT)
        except TimeoutError as err:
            raise RenderFailed(f"still rendering after {RENDER_TIMEOUT:.0f} s") from err
        except Exception as err:  # raised by the renderer
            raise RenderFailed(f"{type(err).__name__}: {err}") from err

    def _settle(self, key: Hashable, done: asyncio.Future[bytes]) -> None:
        """Keep a finished rendering (even if nobody waits for it any more)."""
        self._pending.pop(key, None)
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            log.warning("markdown not rendered: %s: %s", type(error).__name__, error)
            if len(self._failed) >= MAX_FAILED:
                self._failed.clear()
            self._failed.add(key)
            return
        self._keep(key, done.result())

    def _keep(self, key: Hashable, rendered: bytes) -> None:
        if len(rendered) > self.max_bytes // 4 or key in self.entries:
            return  # one huge page must not evict everything else
        self.entries[key] = rendered
        self.size += len(rendered)
        while len(self.entries) > self.max_entries or self.size > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.size -= len(evicted)

    def close(self) -> None:
        """Stop the rendering thread (after the page it is rendering, if any)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
