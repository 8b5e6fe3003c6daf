"""Serving an application on one port, behind the front a service provides, if any.

Used by `trunk8 up`, `trunk8 run` and the tests alike. The socket is bound before anything
else starts, so a port in use fails at once with a clear message. A service may set
`trunk8_shared.front.FRONT` on the application (the redirector's fast path does); the
port is then served by that front, which hands what it does not answer to aiohttp. Either
way aiohttp's per-request tracebacks for malformed requests become brief, rate-limited lines.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from aiohttp import web

from trunk8_shared.front import FRONT, Front, MalformedRequests, ProtocolFactory, ServerLog
from trunk8_shared.settings import Settings

from .errors import StartupError

SHUTDOWN_TIMEOUT = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one)."""
    try:
        return socket.create_server((host, port), backlog=1024)
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
        self, app: web.Application, settings: Settings, sock: socket.socket | None = None
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

    @property
    def port(self) -> int:
        """The port actually listened on."""
        assert self.sock is not None
        port: int = self.sock.getsockname()[1]
        return port

    async def start(self) -> None:
        """Run the app's startup (loading state), then accept connections."""
        if self.sock is None:
            self.sock = bind(self.settings.host, self.settings.port)
        await self.runner.setup()
        handler_factory = self.runner.server
        assert handler_factory is not None
        protocol_factory: ProtocolFactory = handler_factory
        if self.front is not None:
            protocol_factory = self.front.serve(self.app, handler_factory)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol_factory, sock=self.sock)

    async def stop(self) -> None:
        """Stop accepting, close connections, then run the app's cleanup."""
        if self._server is not None:
            self._server.close()
        if self.front is not None:
            await self.front.close()
        await self.runner.cleanup()
