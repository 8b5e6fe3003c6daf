"""Long-running tasks of a service: a cleanup context per task, and a retry backoff.

A task started in a cleanup context is cancelled and awaited after the `yield`, so
teardown mirrors startup. Loops that must survive errors (watches, reconciles) wait with
a capped exponential `Backoff` between attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def task_ctx(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> CleanupContext:
    """A cleanup context that runs `run()` as a task for the application's lifetime."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    context.__name__ = f"{name.replace('-', '_')}_ctx"
    return context


class Backoff:
    """Capped exponential delays: 0.1 s, 0.2 s, ... up to `cap`; `reset` after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to the cap)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        """Start again from the first delay."""
        self.delay = self.first
