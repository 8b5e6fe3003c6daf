"""Serving an application on one port, with the redirector's fast path in front when present.

Used by `trunk8 up`, `trunk8 run` and the tests alike. The socket is bound before anything
else starts, so a port in use fails at once with a clear message.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from aiohttp import web

from trunk8_redirector import REDIRECTOR
from trunk8_redirector.fastpath import FastPathServer
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
    """An aiohttp application served on a socket, fast path first if it has a redirector."""

    def __init__(
        self, app: web.Application, settings: Settings, sock: socket.socket | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.sock = sock
        self.runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=settings.keepalive_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        self._front: FastPathServer | None = None
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
        protocol_factory = handler_factory
        if REDIRECTOR in self.app:
            self._front = self.app[REDIRECTOR].front(handler_factory, self.settings)
            self._front.start()
            protocol_factory = self._front.protocol  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol_factory, sock=self.sock)

    async def stop(self) -> None:
        """Stop accepting, close connections, then run the app's cleanup."""
        if self._server is not None:
            self._server.close()
        if self._front is not None:
            await self._front.close()
        await self.runner.cleanup()
