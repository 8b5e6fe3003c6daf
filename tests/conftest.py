"""Fixtures: a real nats-server per test, a real data directory, the real HTTP server.

Nothing is mocked: services run in the test's event loop (uvloop, as in production) and
talk to a nats-server child process over loopback; HTTP goes over real sockets. Every
test fails if anything logged an ERROR with a traceback, or anything CRITICAL (a crashed
handler, a dead task, a failing loop callback), unless it declares what it provokes with
`@pytest.mark.allow_logged_errors(...)`. Plain ERROR lines without a traceback (a data file
rejected, say) are the product reporting bad input, not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import nats
import pytest
import uvloop
from aiohttp import web
from nats.js.errors import NoKeysError
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import Connect, raw_connections

from trunk8.embedded_nats import EmbeddedNats
from trunk8.server import HttpServer
from trunk8.targets import build_app
from trunk8_shared.background import cancel_and_wait
from trunk8_shared.bus import Bus
from trunk8_shared.kvmirror import KvMirror, MirrorSink
from trunk8_shared.records import LINKS_BUCKET
from trunk8_shared.settings import Settings

if TYPE_CHECKING:
    from topologykit import Topology

USERS_TOML = """\
[users.admin]
is_admin = true
display_name = "Administrator"
created_at = "2025-01-01T09:00:00.000001"

[users.bob]
password_hash = "pbkdf2$600000$00$00"
is_admin = false
display_name = "Bob"
created_at = "2025-01-02T10:00:00"

[users.carol]
is_admin = false
display_name = "Carol"
created_at = "2025-01-03T10:00:00"
"""

ADMIN_LINKS = """\
[links]
ex_redirect = { type = "redirect", url = "https://example.com/admin" }
ex_text = { type = "file", path = "example.txt" }
"""

BOB_LINKS = """\
[links.docs]
type = "redirect"
url = "https://example.com/docs"
created_at = "2025-01-02T10:00:00"

[links.report]
type = "file"
path = "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf"
original_filename = "Q4_Report.pdf"
file_size = 48213
mime_type = "application/pdf"
upload_date = "2025-01-15T10:30:00.123456"
"""

CAROL_LINKS = """\
[links.carol1]
type = "redirect"
url = "https://example.org/carol"
"""


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Run every test on uvloop, like the real processes."""
    return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_logged_errors(*patterns, types=()): logged tracebacks the test provokes on "
        "purpose: a regex searched in '<logger>: <message>', or the exception's types",
    )


def _is_failure(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.CRITICAL:
        return True
    return record.levelno >= logging.ERROR and record.exc_info is not None


def _allowed(record: logging.LogRecord, patterns: list[str], types: list[type]) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and isinstance(error, tuple(types)):
        return True
    line = f"{record.name}: {record.getMessage()}"
    return any(re.search(pattern, line) for pattern in patterns)


@pytest.fixture(autouse=True)
def no_logged_errors(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail the test on an undeclared logged traceback or CRITICAL (setup, call, teardown)."""
    yield
    markers = list(request.node.iter_markers("allow_logged_errors"))
    patterns = [pattern for marker in markers for pattern in marker.args]
    types = [t for marker in markers for t in marker.kwargs.get("types", ())]
    errors = [
        record
        for when in ("setup", "call", "teardown")
        for record in caplog.get_records(when)
        if _is_failure(record) and not _allowed(record, patterns, types)
    ]
    if errors:
        pytest.fail(
            "logged errors:\n"
            + "\n".join(
                f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "")
                for r in errors
            ),
            pytrace=False,
        )


def write(path: Path, text: str) -> None:
    """Write a file the way an editor would (plain write, creating folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A Trunk8 data directory with admin, bob and carol and a few links."""
    root = tmp_path / "data"
    write(root / "users" / "users.toml", USERS_TOML)
    write(root / "users" / "admin" / "links.toml", ADMIN_LINKS)
    write(root / "users" / "bob" / "links.toml", BOB_LINKS)
    write(root / "users" / "carol" / "links.toml", CAROL_LINKS)
    return root


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream on a free loopback port."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> float:
    """Poll `condition` until it holds; returns the seconds it took, fails on timeout."""
    started = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def bucket_keys(kv: Any) -> list[str]:
    """The keys of a KV bucket known to hold some.

    nats-py's `KeyValue.keys()` can signal "no more keys" before the first one arrives
    (its watcher compares the consumer's pending count with messages not processed yet)
    and then raises `NoKeysError`: such a spurious empty answer is asked again.
    """
    for _ in range(20):
        try:
            keys: list[str] = await kv.keys()
        except NoKeysError:
            await asyncio.sleep(0.05)
            continue
        return keys
    pytest.fail("the bucket answered no keys twenty times")


@contextlib.asynccontextmanager
async def running_mirror(
    url: str, sink: MirrorSink, reconnect_wait: float = 0.1, use_snapshot: bool = True
) -> AsyncIterator[KvMirror]:
    """A `KvMirror` of the links bucket into `sink` on a bus of its own, ready; stopped after.

    Stopped with `cancel_and_wait`: Python 3.11's `wait_for` (inside nats-py) can drop a
    plain cancel, and the test then hung in its teardown.
    """
    bus = Bus(url, "test-mirror", reconnect_wait=reconnect_wait)
    mirror = KvMirror(bus, LINKS_BUCKET, sink, use_snapshot=use_snapshot)
    bus.start()
    task = asyncio.create_task(mirror.run())
    try:
        await asyncio.wait_for(mirror.ready.wait(), 10)
        yield mirror
    finally:
        await cancel_and_wait("mirror", task)
        await bus.close()


# Services that mirror the links bucket and export `trunk8_<name>_links_revision`.
LINK_READERS = ("redirector", "files", "admin")


@dataclass
class RunningSystem:
    """Services started in-process on a real port."""

    settings: Settings
    server: HttpServer
    http: aiohttp.ClientSession
    base: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        return self.server.app

    async def get(
        self, path: str, method: str = "GET", **kwargs: Any
    ) -> tuple[int, dict[str, str], str]:
        """One request without following redirects: (status, headers, body text)."""
        async with self.http.request(
            method, self.base + path, allow_redirects=False, **kwargs
        ) as response:
            return response.status, dict(response.headers), await response.text()

    async def location(self, path: str) -> str | None:
        """The Location answered for `path`, or None when it is not a redirect."""
        status, headers, _ = await self.get(path)
        return headers.get("Location") if status == 302 else None

    async def ready(self) -> bool:
        status, _, _ = await self.get("/-/ready")
        return status == 200

    async def metrics(self) -> dict[str, float]:
        """Unlabelled metric samples by name (the page parsed by prometheus-client)."""
        _, _, text = await self.get("/-/metrics")
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.labels
        }

    async def in_step(self) -> bool:
        """Ready, and every link mirror in the app has applied all the watcher published.

        With the config-watcher in the app, each reader service there (redirector, files,
        admin) must show its revision metric: a missing one fails the test, it never
        passes for "caught up" by being absent.
        """
        status, _, body = await self.get("/-/ready")
        if status != 200:
            return False
        services = json.loads(body)["services"]
        if "config-watcher" not in services:
            return True
        values = await self.metrics()
        names = ["trunk8_config_watcher_links_revision"] + [
            f"trunk8_{reader}_links_revision" for reader in LINK_READERS if reader in services
        ]
        for name in names:
            if name not in values:
                pytest.fail(f"{name} is missing from /-/metrics")
        published = values[names[0]]
        return all(values[name] >= published for name in names[1:])


StartSystem = Callable[..., Awaitable[RunningSystem]]


@pytest.fixture
async def start_system(data_dir: Path, nats_server: EmbeddedNats) -> AsyncIterator[StartSystem]:
    """Start a target (default `all`) on a free port; everything is stopped at the end."""
    started: list[RunningSystem] = []

    async def start(
        target: str = "all",
        wait_ready: bool = True,
        setup: Callable[[web.Application], None] | None = None,
        **overrides: Any,
    ) -> RunningSystem:
        """`setup`, if given, adds to the built application before it starts (test tasks)."""
        fields: dict[str, Any] = {
            "data_dir": str(data_dir),
            "port": 0,
            "nats_url": nats_server.url,
            "nats_reconnect_wait": 0.2,
        }
        settings = Settings(**{**fields, **overrides})
        app = build_app(target, settings)
        if setup is not None:
            setup(app)
        server = HttpServer(app, settings)
        await server.start()
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        system = RunningSystem(settings, server, http, f"http://127.0.0.1:{server.port}")
        started.append(system)
        if wait_ready:
            await wait_until(system.in_step, timeout=15)
        return system

    yield start
    for system in reversed(started):
        await system.http.close()
        await system.server.stop()


@pytest.fixture
async def system(start_system: StartSystem) -> RunningSystem:
    """The all-in-one system over the sample data directory, ready."""
    return await start_system()


@pytest.fixture
async def bus_client(nats_server: EmbeddedNats) -> AsyncIterator[nats.NATS]:
    """A separate NATS client for the test itself (taps, requests)."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Raw connections to a system's port (`rawhttp.raw_connections`), closed at the end."""
    async with raw_connections() as open_connection:
        yield open_connection


@pytest.fixture
async def topology(data_dir: Path, tmp_path: Path) -> AsyncIterator[Topology]:
    """The split deployment (`topologykit.Topology`), not started; every process it started
    is stopped at the end, also on failure."""
    from topologykit import Topology  # imported here: topologykit imports this module

    running = Topology(data_dir, tmp_path)
    try:
        yield running
    finally:
        await running.stop()
