"""Serving an application on one port, behind the front a service provides, if any.

Used by `trunk8 up`, `trunk8 run` and the tests alike. The socket is bound before anything
else starts, so a port in use fails at once with a clear message. A service may set
`trunk8_shared.front.FRONT` on the application (the redirector's fast path does); the
port is then served by that front, which hands what it does not answer to aiohttp. Either
way aiohttp's per-request tracebacks for malformed requests become brief, rate-limited lines.
A stop is graceful: first a drain period, during which `/-/ready` answers 503 and every
answer carries `Connection: close` (front and aiohttp alike) so a load balancer moves the
traffic away; then the port stops accepting, requests under way finish (`SHUTDOWN_TIMEOUT`
in all) and the application's cleanup runs. A front waits for heads still arriving too;
aiohttp alone (a service without a front) finishes the requests it is handling and closes
connections whose next head has not fully arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from trunk8_shared.front import FRONT, Front, MalformedRequests, ProtocolFactory, ServerLog
from trunk8_shared.ops import OPS
from trunk8_shared.settings import Settings

from .errors import StartupError

SHUTDOWN_TIMEOUT = 10.0
BACKLOG = 1024
READY_POLL = 0.02
# Names the worker process of a `--workers` group that answered (aiohttp's answers only).
WORKER_HEADER = "X-Trunk8-Worker"
# The drain of `trunk8 run` when TRUNK8_DRAIN_SECONDS is not set: longer than a load
# balancer's usual readiness interval (2-3 s) times its failures threshold (2).
DRAIN_SECONDS = 5.0
# Serves no public traffic (no load balancer sends it any), so it never drains.
UNBALANCED_TARGETS = frozenset({"config-watcher"})


def drain_period(settings: Settings, target: str, all_in_one: bool) -> float:
    """Seconds to drain before a stop: the setting, else 5 for `run` and 0 for `up`."""
    if target in UNBALANCED_TARGETS:
        return 0.0
    if settings.drain_seconds is not None:
        return settings.drain_seconds
    # `up` is usually the only instance: no load balancer has anywhere else to send traffic.
    return 0.0 if all_in_one else DRAIN_SECONDS


def bind(host: str, port: int, shared: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one).

    `shared`: bound with `SO_REUSEPORT` beside the other workers of a `--workers` group and
    not listening yet: `HttpServer.start` listens once the application has loaded, so the
    kernel never hands a connection to a worker that is still starting.
    """
    try:
        if not shared:
            return socket.create_server((host, port), backlog=BACKLOG)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return sock
    except OverflowError as err:  # a port outside 0-65535
        raise StartupError(f"cannot listen on {host}:{port}: port must be 0-65535") from err
    except OSError as err:
        reason = (
            "address already in use" if err.errno == errno.EADDRINUSE else err.strerror or str(err)
        )
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from err


class HttpServer:
    """An aiohttp application served on a socket, behind its front if a service set one."""

    def __init__(
        self,
        app: web.Application,
        settings: Settings,
        sock: socket.socket | None = None,
        worker: str | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.sock = sock
        self.front: Front | None = app[FRONT](settings) if FRONT in app else None
        server_log = self.front.server_log if self.front else ServerLog(MalformedRequests())
        # aiohttp's parser limits are left at their defaults: a front relies on them.
        self.runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=settings.keepalive_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            logger=server_log,
        )
        self._server: asyncio.Server | None = None
        self._protocol_factory: ProtocolFactory | None = None
        self.draining = False
        self._stopped = False
        app.on_response_prepare.append(self._close_when_draining)
        if worker is not None:
            app.on_response_prepare.append(self._worker_header_hook(worker))

    @property
    def port(self) -> int:
        """The port actually listened on."""
        assert self.sock is not None
        port: int = self.sock.getsockname()[1]
        return port

    async def start(self, until_ready: asyncio.Event | None = None) -> None:
        """Run the app's startup, then accept connections.

        With `until_ready`, accept them only once every service has loaded its state (or
        that event is set): a worker joining a `--workers` group must not answer 404 for
        links it has not loaded yet, as the kernel hands it new connections at once.
        """
        if self.sock is None:
            self.sock = bind(self.settings.host, self.settings.port)
        await self.runner.setup()
        if until_ready is not None and OPS in self.app:
            ops = self.app[OPS]
            # Readiness is a set of checks (`/-/ready`'s), with no event to wait on: poll it.
            while not (all(ops.readiness().values()) or until_ready.is_set()):  # noqa: ASYNC110
                await asyncio.sleep(READY_POLL)
        handler_factory = self.runner.server
        assert handler_factory is not None
        protocol_factory: ProtocolFactory = handler_factory
        if self.front is not None:
            protocol_factory = self.front.serve(self.app, handler_factory)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol_factory, sock=self.sock, backlog=BACKLOG)
        self._protocol_factory = protocol_factory

    def begin_drain(self) -> None:
        """From now on `/-/ready` answers 503 and every answer closes its connection."""
        if self.draining:
            return
        self.draining = True
        if OPS in self.app:
            self.app[OPS].draining = True
        if self.front is not None:
            self.front.drain()

    async def drain(self, seconds: float, cut_short: asyncio.Event) -> None:
        """Drain (still serving) for `seconds`, or until `cut_short` is set."""
        self.begin_drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cut_short.wait(), seconds)

    async def _close_when_draining(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        # Keep-alive clients of aiohttp's answers (handed over by a front, or without one)
        # leave too: the answer says `Connection: close` and the connection closes after it.
        if self.draining:
            response.force_close()
            # aiohttp has already written the header from the request by now.
            response.headers[hdrs.CONNECTION] = "close"

    @staticmethod
    def _worker_header_hook(
        worker: str,
    ) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
        async def name_the_worker(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[WORKER_HEADER] = worker

        return name_the_worker

    async def stop(self) -> None:
        """Stop accepting, let requests under way finish, then run the app's cleanup (once).

        Requests under way get `SHUTDOWN_TIMEOUT` seconds in all, the front's and aiohttp's
        together: a head still arriving, pipelined requests held back, a download being sent.
        """
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_TIMEOUT
        self.begin_drain()
        if self._server is not None:
            # Connections the kernel completed but the loop has not taken yet would be reset
            # by the close, their requests lost: take them first (nothing awaits in between).
            waiting = self._take_waiting_connections()
            self._server.close()
            assert self._protocol_factory is not None
            for connection in waiting:
                try:
                    await loop.connect_accepted_socket(self._protocol_factory, connection)
                except OSError:  # the client has gone already
                    connection.close()
        if self.front is not None:
            await self.front.close(max(0.0, deadline - loop.time()))
        handlers = self.runner.server
        if handlers is not None:
            # aiohttp's idle connections close now, busy ones after their answer; the runner's
            # own wait below then finds none left, so the two waits share one deadline.
            handlers.pre_shutdown()
            # Never 0: aiohttp takes a timeout of 0 or less as none, and would wait for ever
            # for a handler that never ends once the front has spent the whole deadline.
            await handlers.shutdown(max(0.01, deadline - loop.time()))
        await self.runner.cleanup()

    def _take_waiting_connections(self) -> list[socket.socket]:
        """Accept every connection waiting in the listening socket's queue, without waiting."""
        waiting: list[socket.socket] = []
        if self.sock is None:
            return waiting
        while True:
            try:
                connection, _ = self.sock.accept()  # non-blocking, as the loop made it
            except OSError:  # none waiting (EAGAIN), or the socket is gone
                return waiting
            connection.setblocking(False)
            waiting.append(connection)
