"""The config-watcher as a child process of `trunk8 up`: parsing never runs on the serving loop.

Re-parsing a 100,000-link file holds the interpreter for about a second; in the process
that answers redirects that is a second of queued requests (the GIL). So `up` runs the
config-watcher as `trunk8 run --target config-watcher` in its own process, on a loopback
port of its own, and the serving process treats it as one of its services: `/-/ready`
includes it, `/-/rejected` and its metrics are fetched from it. Its first publication, and
a snapshot of it, is awaited before our services start, so they load the snapshot rather
than follow a first import one message at a time (a million messages into the serving
process made NATS drop it as a slow consumer); a users.toml it cannot load ends `up` with
the watcher's one-line error. Later it is supervised like a background task, restarted
when it exits. Its log lines go to our stderr. The NATS URL (with its token) travels in
the environment, not on a command line. `up` spawns it before importing its own services
(`spawn`), so at a warm restart its first load runs beside theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import nats.errors
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from trunk8_config_watcher.parsememo import MEMO_FILE
from trunk8_shared.background import Backoff, task_ctx
from trunk8_shared.bus import server_list
from trunk8_shared.datadir import DataDir
from trunk8_shared.datafiles import DataFileError, check_users
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import LINKS_BUCKET
from trunk8_shared.settings import Settings
from trunk8_shared.snapshot import MIN_CHANGES, snapshot_lag

from .childproc import die_with_parent_fn, terminate
from .errors import StartupError

log = logging.getLogger("trunk8")

ERROR_PREFIX = "trunk8: "
POLL_INTERVAL = 0.1
STOP_TIMEOUT = 10.0
SCRAPE_TIMEOUT = 2.0
MAX_QUICK_EXITS = 5
STABLE_AFTER = 60.0
SNAPSHOT_CHECK_TIMEOUT = 2.0
# Parsing a large file in the child must not take CPU time from the redirects we answer.
# Its first load runs at our own priority: nothing is served until both sides have loaded
# (a warm restart at 1M waits for the slower one), so it is lowered once the child is ready.
WATCHER_NICENESS = 10

# Seconds between readiness checks of a child that another process started (`--workers`).
FOLLOW_INTERVAL = 1.0


def _child_setup(die_with_parent: Callable[[], None] | None, niceness: int) -> None:
    """In the child before exec: die with us, at `niceness` above ours."""
    if die_with_parent is not None:
        die_with_parent()
    if niceness:
        os.nice(niceness)


def lower_priority(pid: int, niceness: int) -> None:
    """Raise the niceness of every thread of `pid` to ours plus `niceness`.

    Linux keeps a niceness per thread and a new thread takes its creator's, so each thread
    already running is set; threads started later inherit it from the main thread.
    """
    target = os.getpriority(os.PRIO_PROCESS, 0) + niceness
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]  # no /proc: the main thread only
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.setpriority(os.PRIO_PROCESS, tid, max(target, os.getpriority(os.PRIO_PROCESS, tid)))


async def _quiet(err: Exception) -> None:
    """A failed snapshot check only means waiting for the watcher: no traceback for it."""


def _users_usable(data: DataDir) -> bool:
    """Whether users.toml names at least one valid account (as the child's first load needs)."""
    try:
        return bool(check_users(data.users_file.read_bytes()).entries)
    except (OSError, DataFileError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WatcherLink:
    """A config-watcher child answering on a loopback port: its readiness and `/-/rejected`."""

    kind = "link"  # names its supervised task

    def __init__(self, port: int) -> None:
        self.port = port
        self.is_ready = False
        self._http: ClientSession | None = None

    @property
    def base(self) -> str:
        """The child's own HTTP address."""
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        """Ready when last asked."""
        return self.is_ready

    async def _answers(self, path: str) -> bool:
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=2))
        try:
            async with self._http.get(self.base + path) as response:
                return response.status == 200
        except (ClientError, OSError, TimeoutError):
            return False

    async def start(self) -> None:
        """Nothing to start: another process runs the child."""

    async def run(self) -> None:
        """Ask the child whether it is ready, every `FOLLOW_INTERVAL` seconds."""
        while True:
            self.is_ready = await self._answers("/-/ready")
            await asyncio.sleep(FOLLOW_INTERVAL)

    async def stop(self) -> None:
        """Close the HTTP client (the child is not ours to stop)."""
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def rejected(self, request: web.Request) -> web.Response:
        """`/-/rejected`, as the child answers it."""
        if self._http is None:
            self._http = ClientSession(timeout=ClientTimeout(total=2))
        try:
            async with self._http.get(self.base + "/-/rejected") as response:
                body = await response.read()
                return web.Response(
                    status=response.status, body=body, content_type="application/json"
                )
        except (ClientError, OSError, TimeoutError):
            raise web.HTTPServiceUnavailable(text="the config-watcher is not answering\n") from None


class WatcherProcess(WatcherLink):
    """One config-watcher child: started, watched for readiness, restarted, stopped."""

    kind = "process"

    def __init__(self, settings: Settings) -> None:
        super().__init__(_free_port())
        self.settings = settings
        self.data_dir = os.path.abspath(settings.data_dir)
        self.process: asyncio.subprocess.Process | None = None
        self.last_error: str | None = None  # the child's one-line error, if it printed one
        self._stderr_task: asyncio.Task[None] | None = None
        self.starts = 0
        self._spawned = False  # by `spawn`, not waited for by `start` yet

    def ready(self) -> bool:
        """Published its first full state, and still running."""
        return self.is_ready and self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        """Start the child now; the next `start` waits for this one instead of another.

        `up` spawns it before importing its own services, so both load at once.
        """
        self.is_ready = False
        # Only the first start is unhurried: a restart happens while we serve.
        niceness = 0 if self.starts == 0 else WATCHER_NICENESS
        self.starts += 1
        env = {
            **os.environ,
            "TRUNK8_NATS_URL": self.settings.nats_url,
            # One name for every child of this process: a restarted child takes over the
            # lease of the one that died at once, instead of waiting for it to expire.
            "TRUNK8_LEASE_HOLDER": f"up:{socket.gethostname()}:{os.getpid()}",
        }
        command = [
            sys.executable, "-m", "trunk8.cli", "run", "--target", "config-watcher",
            "--data", self.data_dir,
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop it with the services
            preexec_fn=functools.partial(_child_setup, die_with_parent_fn(), niceness),
        )
        self._stderr_task = asyncio.create_task(self._forward_stderr(self.process))
        self._spawned = True

    async def start(self) -> None:
        """Start the child (unless spawned just before) and wait for its first load.

        StartupError if it cannot load.
        """
        if not self._spawned:
            await self.spawn()
        self._spawned = False
        assert self.process is not None and self._stderr_task is not None
        if await self._warm_start():
            return
        # Answers once its state and a snapshot of it are published: our services then
        # load the snapshot instead of following a first import message by message.
        while not await self._answers("/-/snapshot"):
            if self.process.returncode is not None:
                await self._stderr_task  # every line read, the last error included
                raise StartupError(
                    self.last_error
                    or f"the config-watcher exited with status {self.process.returncode}"
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def _warm_start(self) -> bool:
        """Whether our services may load the stored snapshot now, while the child starts.

        So on a restart: this data directory was imported before (the child's parse memo
        is there), users.toml is usable (otherwise the child's own error must end `up`),
        and the stored snapshot is of the links bucket as it is, or only a few changes
        behind. Those changes, and what the child finds changed in the files meanwhile,
        reach our services through the bucket.
        """
        data = DataDir(self.settings.data_path)
        if not (data.state_dir / MEMO_FILE).is_file():
            return False
        if not await asyncio.to_thread(_users_usable, data):
            return False
        try:
            # Bounded as a whole: nats-py retries an initial connection for minutes.
            client = await asyncio.wait_for(
                nats.connect(
                    servers=server_list(self.settings.nats_url),
                    connect_timeout=SNAPSHOT_CHECK_TIMEOUT,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,
                ),
                SNAPSHOT_CHECK_TIMEOUT,
            )
        except (OSError, TimeoutError, nats.errors.Error):
            return False
        try:
            lag = await asyncio.wait_for(
                snapshot_lag(client.jetstream(), LINKS_BUCKET), SNAPSHOT_CHECK_TIMEOUT
            )
            # As the watcher judges it: a few changes behind is as good as current.
            return lag is not None and lag < MIN_CHANGES
        except (TimeoutError, nats.errors.Error):
            return False
        finally:
            await client.close()

    async def _forward_stderr(self, process: asyncio.subprocess.Process) -> None:
        """Copy the child's log lines to our stderr, keeping its one-line error back."""
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(ERROR_PREFIX):
                self.last_error = line[len(ERROR_PREFIX) :]  # ours to report, once
                continue
            print(line, file=sys.stderr, flush=True)

    async def run(self) -> None:
        """Follow the child, starting it again when it exits (a warning, not a traceback).

        After `MAX_QUICK_EXITS` exits in a row, each within `STABLE_AFTER` seconds of its
        start, it raises: the supervisor then gives the task up and stops `up`.
        """
        backoff = Backoff()
        quick_exits = 0
        while True:
            process = self.process
            if process is None or process.returncode is not None:
                await self.start()
                process = self.process
            assert process is not None
            started = time.monotonic()
            while not self.is_ready and process.returncode is None:
                self.is_ready = await self._answers("/-/ready")
                if not self.is_ready:
                    await asyncio.sleep(POLL_INTERVAL)
            if self.is_ready:
                lower_priority(process.pid, WATCHER_NICENESS)
            code = await process.wait()
            self.is_ready = False
            quick_exits = quick_exits + 1 if time.monotonic() - started < STABLE_AFTER else 1
            if quick_exits >= MAX_QUICK_EXITS:
                raise RuntimeError(f"the config-watcher process keeps exiting (status {code})")
            log.warning("the config-watcher process exited with status %s; starting it again", code)
            await backoff.wait()

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after STOP_TIMEOUT)."""
        process, self.process = self.process, None
        await terminate(process, STOP_TIMEOUT)
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, STOP_TIMEOUT)
        await self.close()


class ChildMetrics(Collector):
    """The child's metrics, scraped from it whenever ours are (loopback, a few ms)."""

    def __init__(self, child: WatcherLink) -> None:
        self.child = child

    def collect(self) -> Iterator[Metric]:
        url = self.child.base + "/-/metrics"
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
                text = response.read().decode()
        except OSError:
            return  # not started, restarting: its metrics are absent meanwhile
        for family in text_string_to_metric_families(text):
            if family.name.startswith("trunk8_config_watcher"):
                yield family


def setup_watcher_child(app: web.Application, child: WatcherLink) -> None:
    """A config-watcher child as a service of this application: readiness, metrics, `/-/rejected`.

    `WatcherProcess` (`up`): started with the application, supervised, stopped with it.
    `WatcherLink` (a worker of `up --workers`): the parent's child, followed on its port.
    """
    setup_ops(app).add_service("config-watcher", child.ready, ChildMetrics(child))
    app.router.add_get("/-/rejected", child.rejected)

    async def watcher_child_ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            await child.start()
            yield
        finally:
            await child.stop()

    app.cleanup_ctx.append(watcher_child_ctx)
    app.cleanup_ctx.append(task_ctx(f"config-watcher-{child.kind}", child.run))
