"""Rendered markdown kept per file content: a bounded LRU with one render per key at a time.

The key is an asset's identity (real path, inode, mtime, size), so an edited file is
rendered again and an unchanged one never is. Entries are bounded in number and in
bytes. Concurrent requests for a page that is not cached yet share one render.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Executor


class RenderCache:
    """Key -> rendered bytes, least recently used first out."""

    def __init__(self, max_entries: int = 512, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self.size = 0  # bytes held
        self.hits = 0
        self.misses = 0
        self._pending: dict[Hashable, asyncio.Future[bytes]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    async def get(self, key: Hashable, render: Callable[[], bytes], executor: Executor) -> bytes:
        """The bytes cached for `key`, else `render()` run once in `executor` and kept."""
        cached = self.entries.get(key)
        if cached is not None:
            self.entries.move_to_end(key)
            self.hits += 1
            return cached
        pending = self._pending.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future = asyncio.get_running_loop().run_in_executor(executor, render)
        self._pending[key] = future
        try:
            # Shielded: a client that goes away does not cancel a render others wait for.
            rendered = await asyncio.shield(future)
        finally:
            self._pending.pop(key, None)
        self._keep(key, rendered)
        return rendered

    def _keep(self, key: Hashable, rendered: bytes) -> None:
        if len(rendered) > self.max_bytes // 4:
            return  # one huge page must not evict everything else
        if key in self.entries:
            return
        self.entries[key] = rendered
        self.size += len(rendered)
        while len(self.entries) > self.max_entries or self.size > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.size -= len(evicted)
