"""Rendered markdown kept per file content, rendered in a separate process with a time limit.

The key is an asset's identity (real path, inode, mtime, size), so an edited file is
rendered again and an unchanged one never is. Entries are bounded in number and bytes.
Concurrent requests for a page not cached yet share one rendering; a rendering that
fails is remembered too, so a file that cannot be rendered is not retried per request.

Rendering runs in a process pool (`forkserver`, markdown modules preloaded): markdown-it
on hostile input can take seconds of CPU, and in a thread that would hold the GIL the
event loop needs (redirects share it in the all-in-one shape). A waiter gives up after
`RENDER_TIMEOUT` seconds; the rendering goes on and its result is still kept. A pool
whose worker died is replaced. Starting a process blocks for most of a second, so the
pool is started from a thread at start-up, and submissions go through a thread too.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .markdown import warm_up

log = logging.getLogger("trunk8.files")

RENDER_TIMEOUT = 10.0
MAX_FAILED = 10_000


class RenderFailed(Exception):
    """This content could not be rendered (now, or earlier)."""


def render_pool(processes: int = 1) -> ProcessPoolExecutor:
    """A pool of rendering processes (started on first use)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["trunk8_files.markdown"])
    return ProcessPoolExecutor(processes, mp_context=context)


class RenderCache:
    """Key -> rendered bytes, least recently used first out."""

    def __init__(
        self,
        pool_factory: Callable[[], ProcessPoolExecutor] = render_pool,
        max_entries: int = 512,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.pool_factory = pool_factory
        self.pool: ProcessPoolExecutor | None = None
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self.size = 0  # bytes held
        self.hits = 0
        self.misses = 0
        self._pending: dict[Hashable, asyncio.Future[bytes]] = {}
        self._failed: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    async def get(self, key: Hashable, render: Callable[[str], bytes], path: str) -> bytes:
        """The bytes cached for `key`, else `render(path)` run once in the pool and kept."""
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
            pending = self._submit(key, render, path)
        else:
            self.hits += 1
        try:
            return await asyncio.wait_for(asyncio.shield(pending), RENDER_TIMEOUT)
        except TimeoutError as err:
            raise RenderFailed(f"still rendering after {RENDER_TIMEOUT:.0f} s") from err
        except Exception as err:  # raised by the renderer, or its process died
            raise RenderFailed(f"{type(err).__name__}: {err}") from err

    def _submit(
        self, key: Hashable, render: Callable[[str], bytes], path: str
    ) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[bytes] = loop.create_future()
        self._pending[key] = pending
        pending.add_done_callback(lambda done: self._settle(key, done))
        task = loop.create_task(self._render_aside(pending, render, path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    async def _render_aside(
        self, pending: asyncio.Future[bytes], render: Callable[[str], bytes], path: str
    ) -> None:
        """Hand one rendering to the pool (from a thread) and report its outcome."""
        try:
            # Starting a process blocks for a moment: never on the event loop.
            submitted = await asyncio.to_thread(self._submit_to_pool, render, path)
            rendered = await asyncio.wrap_future(submitted)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as err:
            if not pending.done():
                pending.set_exception(err)
        else:
            if not pending.done():
                pending.set_result(rendered)

    def _submit_to_pool(self, render: Callable[[str], bytes], path: str) -> Future[bytes]:
        """Submit to the pool, starting it, or a new one if its process died (blocking)."""
        with self._pool_lock:
            if self.pool is None:
                self.pool = self.pool_factory()
            try:
                return self.pool.submit(render, path)
            except BrokenProcessPool:
                log.warning("the markdown rendering process died; starting a new one")
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self.pool_factory()
                return self.pool.submit(render, path)

    def start(self) -> None:
        """Start the rendering process now (blocking: call it in a thread at start-up)."""
        self._submit_to_pool(warm_up, "").result()

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

    async def close(self) -> None:
        """Stop waiting for renderings and stop the pool (its process ends its current job)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with self._pool_lock:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
