"""The NATS connection of a process, as one aiohttp cleanup context.

The connection is opened in the background and retried forever, so a service starts (and
answers `/-/healthz`) while NATS is still away; whoever needs it awaits `wait_connected`.
Listeners registered with `on_reconnect` are told after every reconnect, because JetStream
consumers do not survive a server restart and must be re-created. Reconnects go to the
least-tried server of the list after a random delay of up to `reconnect_wait` * 2^(failed
attempts), capped (nats-py's `reconnect_to_server_handler`): many clients that lost the
same server spread their returns instead of arriving at once. `/-/metrics` says
whether the connection is up and how often it was lost (`trunk8_nats_*`), for alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import msgspec
from aiohttp import web
from nats.aio.client import Client, Server
from nats.js import JetStreamContext
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .ops import setup_ops
from .settings import Settings

log = logging.getLogger("trunk8.bus")

# The longest wait between two reconnect attempts to one server, seconds.
RECONNECT_CAP = 10.0


def server_list(urls: str) -> list[str]:
    """The servers of a NATS URL or of a comma-separated seed list (`a:4222,b:4222`)."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def reconnect_delay(failed: int, first: float, cap: float = RECONNECT_CAP) -> float:
    """A random delay before the next attempt: up to `first` * 2^`failed`, at most `cap`."""
    return random.uniform(0.0, min(cap, first * 2 ** min(failed, 30)))


def redact(urls: str) -> str:
    """A NATS URL, or each URL of a seed list, without its credentials, for logs."""
    return ",".join(_redact_one(url) for url in server_list(urls))


class SeedCredentials(msgspec.Struct, frozen=True):
    """Credentials of a seed list, as nats-py connect options (all None: none given)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None


def seed_credentials(urls: str) -> SeedCredentials:
    """The credentials the seed list carries, when every seed URL with some agrees.

    Servers the client discovers from the cluster come without credentials; given as
    options, they are sent to those too (else each reconnect to one is refused).
    """
    found = set()
    for url in server_list(urls):
        parts = urlsplit(url if "://" in url else "nats://" + url)
        if parts.username is not None:
            found.add((parts.username, parts.password))
    if len(found) != 1:
        return SeedCredentials()
    user, password = found.pop()
    if password is None:
        return SeedCredentials(token=user)
    return SeedCredentials(user=user, password=password)


def _redact_one(url: str) -> str:
    parts = urlsplit(url if "://" in url else "nats://" + url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class Bus:
    """One NATS connection with JetStream, shared by every service of the process."""

    def __init__(self, url: str, name: str, reconnect_wait: float = 1.0) -> None:
        self.url = url  # one URL, or a cluster's seed list: reconnects go to any of them
        self.name = name
        self.reconnect_wait = reconnect_wait
        self.nc = Client()
        self._connected = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.disconnects = 0

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (valid once connected)."""
        return self.nc.jetstream()

    @property
    def is_connected(self) -> bool:
        """True while the client holds a live connection."""
        return self.nc.is_connected

    def on_reconnect(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after each reconnect; returns a function that unregisters it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_connected(self) -> None:
        """Return once the first connection is up."""
        await self._connected.wait()

    def start(self) -> None:
        """Begin connecting in the background."""
        self._task = asyncio.create_task(self._connect(), name="nats-connect")

    async def close(self) -> None:
        """Stop connecting, or close the connection."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), timeout=5)

    async def _connect(self) -> None:
        credentials = seed_credentials(self.url)
        await self.nc.connect(
            servers=server_list(self.url),
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]  # float works
            reconnect_to_server_handler=self._next_server,
            connect_timeout=2,
            user=credentials.user,
            password=credentials.password,
            token=credentials.token,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._last_error = ""
        log.info("connected to NATS at %s", redact(self._current()))
        self._connected.set()

    def _next_server(self, servers: list[Server], _info: dict[str, object]) -> tuple[Server, float]:
        """The server to try next (the least tried; the list is shuffled) and when."""
        server = min(servers, key=lambda candidate: candidate.reconnects)
        return server, reconnect_delay(server.reconnects, self.reconnect_wait)

    def _current(self) -> str:
        """The server the client is connected to now (one of the seed list)."""
        uri = self.nc.connected_url
        return uri.geturl() if uri is not None else self.url

    async def _on_error(self, err: Exception) -> None:
        text = f"{type(err).__name__}: {err}".strip()
        if text != self._last_error:  # one line per distinct problem, not one per retry
            self._last_error = text
            log.warning("NATS %s: %s", redact(self.url), text)

    async def _on_disconnected(self) -> None:
        if self._connected.is_set() and not self._closing:
            self.disconnects += 1
            log.warning("disconnected from NATS; serving the last known state")

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        log.info("reconnected to NATS at %s", redact(self._current()))
        for listener in list(self._listeners):
            listener()


class BusMetrics:
    """The connection's state on scrape: up or not, and disconnects since start."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector protocol."""
        yield GaugeMetricFamily(
            "trunk8_nats_connected",
            "1 while the process holds a NATS connection.",
            value=1.0 if self.bus.is_connected else 0.0,
        )
        yield CounterMetricFamily(
            "trunk8_nats_disconnects",
            "Times the NATS connection was lost after it had been up.",
            value=self.bus.disconnects,
        )


BUS = web.AppKey("trunk8.bus", Bus)


def setup_bus(app: web.Application, settings: Settings, name: str) -> Bus:
    """Give the app its process-wide NATS connection (created once, whatever calls first)."""
    if BUS in app:
        return app[BUS]
    bus = Bus(settings.nats_url, name, settings.nats_reconnect_wait)
    app[BUS] = bus
    setup_ops(app).registry.register(BusMetrics(bus))

    async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
        bus.start()
        yield
        await bus.close()

    # First in, last out: every service's contexts stop before the connection closes.
    app.cleanup_ctx.insert(0, bus_ctx)
    return bus
