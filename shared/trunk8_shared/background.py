"""Long-running tasks of a service: supervised cleanup contexts, and a retry backoff.

`task_ctx` runs a coroutine function as a task for the application's lifetime, started in
a cleanup context and cancelled and awaited after its `yield`, so teardown mirrors
startup. The task is supervised: if it raises (or returns, which a lifetime task must
not), it is logged and started again after a capped exponential `Backoff`. A task that
keeps dying (`max_failures` in a row) or is declared `critical` is given up: the
application's `Supervision` records it, `/-/ready` answers 503 naming it, and the
composition root, which waits on `Supervision.gave_up`, stops the process with status 1.
A dead task is never silent. Tasks started outside a cleanup context (a front's clock, say)
get the same supervision from `start_supervised` and stop with `cancel_and_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("trunk8.tasks")

CleanupContext = Callable[[web.Application], AsyncIterator[None]]

# Failures in a row after which a task is given up, and how long a run must last for its
# next failure to count as a new incident rather than one more in a row.
MAX_FAILURES = 5
STABLE_AFTER = 60.0
# Seconds a cancelled task may take to finish before it is cancelled again.
CANCEL_GRACE = 1.0


class Backoff:
    """Capped exponential delays: 0.1 s, 0.2 s, ... up to `cap`; `reset` after a success.

    With `jitter` (0 to 1) each sleep is shortened by a random part of up to that share,
    so many clients that failed together do not retry together (1.0: "full jitter").
    """

    def __init__(self, first: float = 0.1, cap: float = 5.0, jitter: float = 0.0) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.delay = first

    async def wait(self) -> None:
        """Sleep the current delay (less its jitter), then double it (up to the cap)."""
        await asyncio.sleep(self.delay * (1.0 - self.jitter * random.random()))
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        """Start again from the first delay."""
        self.delay = self.first


class Supervision:
    """The supervised tasks of one application: their state, restarts, and the given up."""

    def __init__(self) -> None:
        self.running: dict[str, bool] = {}
        self.restarts: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # task name -> why it was given up
        # Set when a task is given up; the composition root stops the process on it.
        self.gave_up = asyncio.Event()

    def states(self) -> dict[str, str]:
        """Each task's state for `/-/ready`: running, restarting, or failed with the reason."""
        return {
            name: f"failed: {self.failed[name]}"
            if name in self.failed
            else ("running" if up else "restarting")
            for name, up in self.running.items()
        }

    @property
    def failure(self) -> str:
        """One line naming the first task given up, or "" while none is."""
        name = next(iter(self.failed), None)
        return "" if name is None else f"background task {name} {self.failed[name]}"

    def give_up(self, name: str, reason: str) -> None:
        """Record `name` as dead for good; readiness fails and the process is to stop."""
        self.running[name] = False
        self.failed[name] = reason
        self.gave_up.set()

    def collect(self) -> Iterator[Metric]:
        """Prometheus families: restarts and up-ness of each task."""
        restarts = CounterMetricFamily(
            "trunk8_task_restarts",
            "Background tasks started again after they failed.",
            labels=["task"],
        )
        up = GaugeMetricFamily(
            "trunk8_task_up", "1 while a background task runs, 0 while it is down.", labels=["task"]
        )
        for name, running in self.running.items():
            restarts.add_metric([name], self.restarts.get(name, 0))
            up.add_metric([name], 1 if running else 0)
        yield restarts
        yield up


SUPERVISION = web.AppKey("trunk8.supervision", Supervision)


def setup_supervision(app: web.Application) -> Supervision:
    """The application's `Supervision`, created once (at setup, before the app starts)."""
    if SUPERVISION not in app:
        app[SUPERVISION] = Supervision()
    return app[SUPERVISION]


def task_ctx(
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    *,
    critical: bool = False,
    max_failures: int = MAX_FAILURES,
    stable_after: float = STABLE_AFTER,
    backoff: Callable[[], Backoff] = Backoff,
) -> CleanupContext:
    """A cleanup context that runs `run()` as a supervised task for the app's lifetime.

    A failure restarts it after a backoff; `max_failures` in a row (each run shorter than
    `stable_after` seconds), or any failure of a `critical` task, gives it up.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        supervision = app.get(SUPERVISION)
        if supervision is None:
            raise RuntimeError(
                f"task {name}: the application has no Supervision; call setup_ops(app) "
                "(or setup_supervision) while setting it up"
            )
        task = start_supervised(
            supervision, name, run, critical=critical, max_failures=max_failures,
            stable_after=stable_after, backoff=backoff(),
        )  # fmt: skip
        yield
        await cancel_and_wait(name, task)

    context.__name__ = f"{name.replace('-', '_')}_ctx"
    return context


def start_supervised(
    supervision: Supervision,
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    *,
    critical: bool = False,
    max_failures: int = MAX_FAILURES,
    stable_after: float = STABLE_AFTER,
    backoff: Backoff | None = None,
) -> asyncio.Task[None]:
    """Start `run()` supervised, outside a cleanup context; stop it with `cancel_and_wait`."""
    supervision.running[name] = False
    supervision.restarts.setdefault(name, 0)
    limit = 1 if critical else max_failures
    supervise = _supervise(name, run, supervision, limit, stable_after, backoff or Backoff())
    return asyncio.create_task(supervise, name=name)


async def cancel_and_wait(name: str, task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it, cancelling again if a cancellation was swallowed.

    Python 3.11's `asyncio.wait_for` (used inside nats-py too) drops a cancellation that
    arrives just as the awaited future completes; the task then runs on. One more
    `cancel()` reaches it at its next await, so shutdown never hangs on it.
    """
    task.cancel()
    while True:
        done, _ = await asyncio.wait([task], timeout=CANCEL_GRACE)
        if done:
            break
        log.warning("background task %s went on after it was cancelled; cancelling again", name)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _stopping() -> bool:
    """True once the current (supervisor) task has been asked to cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _supervise(
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    supervision: Supervision,
    limit: int,
    stable_after: float,
    backoff: Backoff,
) -> None:
    """Run `run()` until cancelled, restarting it after failures, or give it up."""
    failures = 0
    while True:
        started = time.monotonic()
        supervision.running[name] = True
        try:
            await run()
        except asyncio.CancelledError:
            if _stopping():
                raise  # the application is stopping
            reason = "was cancelled from inside"
            log.error("background task %s %s", name, reason)
        except Exception as err:
            if _stopping():  # it failed while being stopped: stopping wins
                raise asyncio.CancelledError from err
            reason = f"{type(err).__name__}: {err}"
            log.error("background task %s failed", name, exc_info=err)
        else:
            if _stopping():  # it swallowed our cancellation and returned: stop all the same
                raise asyncio.CancelledError
            reason = "returned, but must run for the application's lifetime"
            log.error("background task %s %s", name, reason)
        supervision.running[name] = False
        if time.monotonic() - started >= stable_after:
            failures = 0  # it had been running well: a new incident
            backoff.reset()
        failures += 1
        if failures >= limit:
            times = "once" if limit == 1 else f"{failures} times in a row"
            why = f"failed {times} (last: {reason})"
            log.critical("background task %s %s; giving up, the process stops", name, why)
            supervision.give_up(name, why)
            return
        log.warning("restarting background task %s (failure %d of %d)", name, failures, limit)
        await backoff.wait()
        supervision.restarts[name] += 1
