"""Supervised background tasks: a task that dies is restarted, one that keeps dying is given up.

Through the real system: the tasks run in the application served on a real port, their
state is read from `/-/ready` and `/-/metrics`, and the process-level consequence (exit
status 1 with one line) from a real `trunk8 up` child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from conftest import RunningSystem, StartSystem, wait_until

from trunk8.embedded_nats import EmbeddedNats
from trunk8.server import HttpServer
from trunk8.targets import build_app
from trunk8_redirector import REDIRECTOR
from trunk8_shared.background import Backoff, task_ctx
from trunk8_shared.kvmirror import KvMirror
from trunk8_shared.settings import Settings


def quick_backoff() -> Backoff:
    return Backoff(first=0.01, cap=0.05)


async def task_state(system: RunningSystem, name: str) -> tuple[int, str | None]:
    """The /-/ready status and the state it reports for task `name`."""
    status, _, body = await system.get("/-/ready")
    return status, json.loads(body)["tasks"].get(name)


async def restarts(system: RunningSystem, name: str) -> float:
    _, _, text = await system.get("/-/metrics")
    for line in text.splitlines():
        if line.startswith(f'trunk8_task_restarts_total{{task="{name}"}} '):
            return float(line.rsplit(" ", 1)[1])
    pytest.fail(f"no restart counter for {name}")


@pytest.mark.allow_logged_errors(r"trunk8\.tasks: background task flaky failed")
async def test_task_that_raises_is_restarted(start_system: StartSystem) -> None:
    runs: list[int] = []
    steady = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError(f"run {len(runs)} fails")
        steady.set()
        await asyncio.Future()

    system = await start_system(
        setup=lambda app: app.cleanup_ctx.append(task_ctx("flaky", flaky, backoff=quick_backoff))
    )
    await asyncio.wait_for(steady.wait(), 5)
    assert len(runs) == 3
    assert await task_state(system, "flaky") == (200, "running")
    assert await restarts(system, "flaky") == 2
    assert await system.location("/docs") == "https://example.com/docs"


@pytest.mark.allow_logged_errors(r"trunk8\.tasks: background task doomed")
async def test_task_that_keeps_failing_fails_readiness(start_system: StartSystem) -> None:
    attempts: list[None] = []

    async def doomed() -> None:
        attempts.append(None)
        raise OSError("disk on fire")

    system = await start_system(
        wait_ready=False,
        setup=lambda app: app.cleanup_ctx.append(
            task_ctx("doomed", doomed, max_failures=3, backoff=quick_backoff)
        ),
    )

    async def given_up() -> bool:
        return (await task_state(system, "doomed"))[0] == 503 and len(attempts) == 3

    await wait_until(given_up)
    _, state = await task_state(system, "doomed")
    assert state == "failed: failed 3 times in a row (last: OSError: disk on fire)"
    _, _, body = await system.get("/-/ready")
    assert json.loads(body)["ready"] is False
    assert 'trunk8_task_up{task="doomed"} 0.0' in (await system.get("/-/metrics"))[2]
    # The other services keep working meanwhile; only readiness says something is wrong.

    async def served() -> bool:
        return await system.location("/docs") == "https://example.com/docs"

    await wait_until(served)
    assert len(attempts) == 3  # nothing more is started after giving up


@pytest.mark.allow_logged_errors(r"trunk8\.tasks: background task (critical-one|quitter)")
async def test_critical_task_and_returning_task(start_system: StartSystem) -> None:
    async def critical_one() -> None:
        raise ValueError("bad state")

    async def quitter() -> None:
        return  # a lifetime task that ends is dead too

    def setup(app: web.Application) -> None:
        app.cleanup_ctx.append(task_ctx("critical-one", critical_one, critical=True))
        app.cleanup_ctx.append(task_ctx("quitter", quitter, max_failures=2, backoff=quick_backoff))

    system = await start_system(wait_ready=False, setup=setup)

    async def both_given_up() -> bool:
        _, body = (await system.get("/-/ready"))[::2]
        tasks = json.loads(body)["tasks"]
        return all(tasks[name].startswith("failed") for name in ("critical-one", "quitter"))

    await wait_until(both_given_up)
    tasks = json.loads((await system.get("/-/ready"))[2])["tasks"]
    assert tasks["critical-one"] == "failed: failed once (last: ValueError: bad state)"
    assert tasks["quitter"].startswith("failed: failed 2 times in a row (last: returned")
    assert tasks["link-mirror"] == "running"


@pytest.mark.allow_logged_errors(r"trunk8\.tasks: background task link-mirror failed")
async def test_real_mirror_task_that_dies_is_restarted_and_follows_again(
    start_system: StartSystem, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = KvMirror.run
    calls: list[None] = []

    redirector_mirror: list[KvMirror] = []  # the files and admin services have their own

    async def dies_once(self: KvMirror) -> None:
        if self in redirector_mirror:
            calls.append(None)
            if len(calls) == 1:
                raise ConnectionResetError("injected: the mirror's first run dies")
        await real_run(self)

    monkeypatch.setattr(KvMirror, "run", dies_once)
    system = await start_system(  # ready: the restarted mirror loaded the bucket
        setup=lambda app: redirector_mirror.append(app[REDIRECTOR].mirror)
    )
    assert len(calls) == 2
    assert await restarts(system, "link-mirror") == 1
    links = data_dir / "users" / "carol" / "links.toml"
    links.write_text(
        links.read_text() + '[links.later]\ntype = "redirect"\nurl = "https://l.example"\n'
    )

    async def followed() -> bool:
        return await system.location("/later") == "https://l.example"

    await wait_until(followed)


async def test_task_that_swallows_its_cancellation_does_not_hang_the_stop(
    data_dir: Path, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled: list[None] = []

    async def stubborn() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:  # as Python 3.11's wait_for can do by accident
            cancelled.append(None)
        await asyncio.Future()

    settings = Settings(data_dir=str(data_dir), port=0, nats_url=nats_server.url)
    app = build_app("all", settings)
    app.cleanup_ctx.append(task_ctx("stubborn", stubborn))
    server = HttpServer(app, settings)
    await server.start()
    await asyncio.wait_for(server.stop(), 10)
    assert len(cancelled) == 1
    assert "background task stubborn went on after it was cancelled" in caplog.text


DOOMED_UP = """\
import sys
from aiohttp import web
from prometheus_client import CollectorRegistry
from trunk8 import cli, targets
from trunk8_shared.background import task_ctx
from trunk8_shared.ops import setup_ops


async def doomed() -> None:
    raise RuntimeError("injected fault")


def setup_doomed(app: web.Application, settings: object) -> None:
    setup_ops(app).add_service("doomed", lambda: True, CollectorRegistry())
    app.cleanup_ctx.append(task_ctx("doomed-task", doomed, critical=True))


targets.SERVICES["doomed"] = setup_doomed
sys.exit(cli.main(sys.argv[1:]))
"""


def test_given_up_task_stops_up_with_one_line(tmp_path: Path) -> None:
    """`trunk8 up` with one extra service whose critical task dies: exit 1, one last line."""
    script = tmp_path / "doomed_up.py"
    script.write_text(DOOMED_UP)
    data = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, str(script), "up", "--data", str(data), "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRUNK8_")},
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[-1] == (
        "trunk8: background task doomed-task failed once (last: RuntimeError: injected fault)"
    ), proc.stderr
    assert "giving up, the process stops" in proc.stderr
    # Everything was stopped in order: the embedded NATS server too.
    assert "stopping" in proc.stderr
    pids = [
        entry.name
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and str(data).encode() in _cmdline(entry)
    ]
    assert not pids


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""
