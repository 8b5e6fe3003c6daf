"""`--workers N`: N serving processes share the public port, as nginx's `worker_processes`.

One Python process serves on one core. With `--workers N` (or `auto`: one per core this
process may run on) the `trunk8` process starts N copies of itself as workers, each
binding the port with `SO_REUSEPORT` (the kernel spreads new connections over them) and
loading its own state (the snapshot, then the bucket). The parent serves nothing; it keeps
what must exist once: for `up`, the embedded NATS server and the config-watcher child
(the workers' `/-/ready`, `/-/rejected` and config-watcher metrics go to that child, as a
single `up` process's do). It also holds the port, bound but never listening, so a port
in use (by anything, another group too) fails at once and port 0 stays the same port
across worker restarts.

Workers are supervised: one that exits is started again after a backoff; one that keeps
exiting (`MAX_QUICK_EXITS` times in a row, each within `STABLE_AFTER` s of its start)
stops everything with one line. They die with the parent (`PR_SET_PDEATHSIG`) and on a
stop get SIGTERM, so each drains as a single process would; a second signal is passed on
and ends their drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any

from trunk8_shared.background import Backoff
from trunk8_shared.settings import Settings, SettingsError

from .childproc import die_with_parent_fn, terminate
from .embedded_nats import EmbeddedNats, start_for
from .errors import ServiceFailed, StartupError
from .server import SHUTDOWN_TIMEOUT, bind, drain_period
from .watcherproc import MAX_QUICK_EXITS, STABLE_AFTER, WatcherProcess

log = logging.getLogger("trunk8")

# Beyond the drain and aiohttp's own shutdown bound: then a worker is killed.
STOP_MARGIN = 5.0


def worker_count(value: str) -> int:
    """`--workers`: a count of at least 1, or `auto` (the cores this process may use)."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise SettingsError(f"--workers must be a number of at least 1 or 'auto', not {value!r}")
    return count


class WorkerGroup:
    """N worker processes: started, restarted when one exits, stopped together."""

    def __init__(self, count: int, arguments: list[str], env: dict[str, str]) -> None:
        self.arguments = arguments  # `trunk8 run ...` without the worker's number
        self.env = env
        self.processes: list[asyncio.subprocess.Process | None] = [None] * count
        self.stopping = False

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (for logs and tests)."""
        return [p.pid for p in self.processes if p is not None]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "trunk8.cli", *self.arguments, "--worker", str(index)]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches the parent, which stops them in order
            preexec_fn=die_with_parent_fn(),
        )
        self.processes[index] = process
        return process

    async def run(self) -> None:
        """Start every worker and keep them running; raises when one keeps exiting."""
        keepers = [asyncio.create_task(self._keep(index)) for index in range(len(self.processes))]
        try:
            await asyncio.gather(*keepers)
        finally:
            for keeper in keepers:
                keeper.cancel()
            await asyncio.wait(keepers)

    async def _keep(self, index: int) -> None:
        backoff = Backoff()
        quick_exits = 0
        while True:
            process = await self._spawn(index)
            started = time.monotonic()
            code = await process.wait()
            if self.stopping:
                return
            quick_exits = quick_exits + 1 if time.monotonic() - started < STABLE_AFTER else 1
            if quick_exits >= MAX_QUICK_EXITS:
                raise ServiceFailed(f"worker {index} keeps exiting (status {code})")
            log.warning(
                "worker %d (pid %d) exited with status %s; starting it again",
                index,
                process.pid,
                code,
            )
            await backoff.wait()

    def signal_all(self, signum: int) -> None:
        """Send a signal to every running worker."""
        for process in self.processes:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each drains, then stops); SIGKILL those left after `grace`."""
        self.stopping = True
        await asyncio.gather(*(terminate(p, grace) for p in self.processes))


def _reserve(host: str, port: int) -> socket.socket:
    """The port for the workers, bound with `SO_REUSEPORT` (never listening).

    A plain bind first: `SO_REUSEPORT` alone would let a second group (another `trunk8
    --workers` of this user) share the port silently instead of failing.
    """
    probe = bind(host, port)  # StartupError when anything holds the port
    port = probe.getsockname()[1]
    probe.close()
    return bind(host, port, shared=True)


def _worker_arguments(target: str, settings: Settings, port: int) -> list[str]:
    return [
        "run", "--target", target,
        "--data", os.path.abspath(settings.data_dir),
        "--host", settings.host, "--port", str(port),
    ]  # fmt: skip


async def serve_workers(
    target: str, settings: Settings, count: int, embedded: EmbeddedNats | None, all_in_one: bool
) -> None:
    """Run `count` workers of `target` on one port until SIGINT/SIGTERM, then stop them all.

    For `up` (`all_in_one`) the embedded NATS server and the config-watcher child run here,
    and each worker runs the other services against them.
    """
    sock = _reserve(settings.host, settings.port)
    port: int = sock.getsockname()[1]
    stop = asyncio.Event()
    failures: list[BaseException] = []
    group: WorkerGroup | None = None
    watcher: WatcherProcess | None = None
    watched: list[asyncio.Task[Any]] = []

    def on_signal() -> None:
        if stop.is_set() and group is not None:
            group.signal_all(signal.SIGTERM)  # a second signal ends the workers' drains
        stop.set()

    def watch(name: str, work: Coroutine[Any, Any, Any]) -> None:
        """Run a part that must keep running; when it ends, everything stops."""

        def ended(task: asyncio.Task[Any]) -> None:
            if not task.cancelled():
                error = task.exception()
                failures.append(error or ServiceFailed(f"{name} stopped"))
            stop.set()

        task = asyncio.create_task(work, name=name)
        task.add_done_callback(ended)
        watched.append(task)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    env = dict(os.environ)
    try:
        if embedded is not None:
            settings = await start_for(embedded, settings)
            watch("the embedded NATS server", embedded.supervise())
        worker_target = target
        arguments = _worker_arguments(target, settings, port)
        if all_in_one:
            watcher = WatcherProcess(settings)
            await watcher.start()  # its first publication and snapshot, before any worker
            watch("the config-watcher process", watcher.run())
            worker_target = "all"
            arguments += ["--watcher-port", str(watcher.port)]
        # The URL (and token) travels in the environment, never on a command line; the
        # drain is the parent command's, not `run`'s default.
        env["TRUNK8_NATS_URL"] = settings.nats_url
        drain = drain_period(settings, worker_target, all_in_one)
        env["TRUNK8_DRAIN_SECONDS"] = f"{drain:g}"
        group = WorkerGroup(count, arguments, env)
        watch("the workers", group.run())
        log.info(
            "trunk8 %s serving on http://%s:%d with %d workers", target, settings.host, port, count
        )
        await stop.wait()
        if not failures:
            log.info("stopping %d workers", count)
    finally:
        for task in watched:
            task.cancel()
        await asyncio.gather(*watched, return_exceptions=True)
        if group is not None:
            await group.stop(
                drain_period(settings, target, all_in_one) + SHUTDOWN_TIMEOUT + STOP_MARGIN
            )
        if watcher is not None:
            await watcher.stop()
        if embedded is not None:
            await embedded.stop()
        sock.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if failures:
        failure = failures[0]
        if isinstance(failure, (ServiceFailed, StartupError)):
            raise failure
        raise ServiceFailed(str(failure)) from failure
