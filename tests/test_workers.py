"""`--workers N`: N processes serve one port (SO_REUSEPORT), supervised, stopped together.

System tests of the real `trunk8` command: which worker answered is read from the
`X-Trunk8-Worker: <n>/<pid>` header of aiohttp's answers; a keep-alive connection asks
for a redirect (answered by that worker's fast path) and then for `/-/healthz`, so each
redirect is attributed to the worker whose table served it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import (
    Launch,
    append_link,
    clean_env,
    free_port,
    launch,  # noqa: F401 (a fixture)
    port_is_free,
    sample_dir,  # noqa: F401 (a fixture)
    up,
    wait_for,
)

WORKER_HEADER = "x-trunk8-worker"
# New connections opened to see every worker at least once (the kernel spreads them by a
# hash of the client's port: 2 workers are both seen within a few dozen, nearly always).
CONNECTION_BUDGET = 400


def served_by(port: int, path: str) -> tuple[str, int, str | None]:
    """On one new keep-alive connection: (worker, status, Location) of a GET of `path`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        status, target = response.status, response.getheader("Location")
        conn.request("GET", "/-/healthz")  # the same connection, so the same worker
        health = conn.getresponse()
        health.read()
        return health.getheader(WORKER_HEADER) or "", status, target
    finally:
        conn.close()


def workers_answering(
    port: int, path: str, count: int, budget: int = CONNECTION_BUDGET
) -> dict[str, tuple[int, str | None]]:
    """What each worker reached answers to `path`: stops at `count` workers or `budget`."""
    answers: dict[str, tuple[int, str | None]] = {}
    for _ in range(budget):
        worker, status, target = served_by(port, path)
        answers[worker] = (status, target)
        if len(answers) == count:
            break
    return answers


def every_worker_answering(port: int, path: str, count: int) -> dict[str, tuple[int, str | None]]:
    """`workers_answering` until all `count` workers were reached, failing after 30 s.

    `up` is ready once one worker listens; another may still be loading its state (it
    listens only then), so the kernel gives every connection to the first meanwhile.
    """
    answers: dict[str, tuple[int, str | None]] = {}
    deadline = time.monotonic() + 30
    while len(answers) < count and time.monotonic() < deadline:
        answers.update(workers_answering(port, path, count))
        if len(answers) < count:
            time.sleep(0.2)
    assert len(answers) == count, f"only {sorted(answers)} answered within 30 s"
    return answers


def pid_of(worker: str) -> int:
    return int(worker.partition("/")[2])


@pytest.fixture
def worker_pids() -> Iterator[set[int]]:
    """Worker pids seen by a test: any still alive at its end are killed."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def is_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] == "Z"
    except OSError:
        return True


def test_up_with_two_workers_serves_every_link_from_both_and_restarts_a_killed_one(
    launch: Launch,  # noqa: F811
    sample_dir: Path,  # noqa: F811
    worker_pids: set[int],
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = up(launch, sample_dir, port, "--workers", "2")
    answers = every_worker_answering(port, "/docs", 2)
    worker_pids.update(pid_of(worker) for worker in answers)
    assert set(answers.values()) == {(302, "https://example.com/docs")}, answers
    assert os.getpid() not in worker_pids and proc.pid not in worker_pids

    # Another group on the same port is refused, not let in beside these by SO_REUSEPORT.
    other = launch("up", "--data", str(tmp_path / "other"), "--port", str(port), "--workers", "2")
    assert other.wait(20) == 1, other.describe()
    assert "address already in use" in other.stderr.strip().splitlines()[-1], other.describe()

    # A link added after the start reaches every worker's table.
    append_link(sample_dir, "bob", "later", "https://later.example/")
    wait_for(
        lambda: (
            set(workers_answering(port, "/later", 2).values()) == {(302, "https://later.example/")}
        ),
        20,
        "the new link served by both workers",
        proc,
    )

    # kill -9 of one worker: the parent starts another, which serves too.
    victim = next(iter(answers))
    os.kill(pid_of(victim), signal.SIGKILL)
    proc.wait_line("stderr", lambda line: "exited with status -9" in line, 20)

    def replaced() -> bool:
        seen = workers_answering(port, "/later", 2, budget=50)
        worker_pids.update(pid_of(worker) for worker in seen)
        return (
            len(seen) == 2
            and victim not in seen
            and all(answer == (302, "https://later.example/") for answer in seen.values())
        )

    wait_for(replaced, 30, "a new worker in place of the killed one", proc, interval=0.2)

    # SIGTERM stops every worker (and the embedded NATS server) and frees the port.
    code, _ = proc.signal_and_wait(signal.SIGTERM, timeout=30)
    assert code == 0, proc.describe()
    wait_for(lambda: all(map(is_gone, worker_pids)), 10, "every worker gone", proc)
    assert port_is_free(port)
    assert "Traceback" not in proc.stderr, proc.describe()


def test_a_worker_that_keeps_exiting_stops_trunk8_with_one_line(
    launch: Launch,  # noqa: F811
    sample_dir: Path,  # noqa: F811
) -> None:
    # An admin setting is read when a worker builds its application: every worker fails.
    env = clean_env(TRUNK8_LOGIN_ATTEMPTS="several")
    started = time.monotonic()
    proc = launch("up", "--data", str(sample_dir), "--port", "0", "--workers", "2", env=env)
    code = proc.wait(60)
    assert code == 1, proc.describe()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trunk8: worker ") and "keeps exiting (status 2)" in last, last
    assert "login_attempts" in proc.stderr  # the worker's own reason was shown as well
    assert "Traceback" not in proc.stderr, proc.describe()
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--target", "all", "--workers", "2"], "per data directory"),
        (["run", "--target", "config-watcher", "--workers", "auto"], "per data directory"),
        (["up", "--workers", "2", "--watcher-in-process"], "--watcher-in-process"),
        (["up", "--workers", "0"], "at least 1"),
        (["up", "--workers", "many"], "at least 1"),
    ],
)
def test_workers_where_they_cannot_be_is_a_one_line_error(
    launch: Launch,  # noqa: F811
    tmp_path: Path,
    args: list[str],
    needle: str,
) -> None:
    proc = launch(*args, "--data", str(tmp_path / "data"), "--port", "0")
    assert proc.wait(20) == 2, proc.describe()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trunk8: ") and needle in lines[0], lines
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_run_redirector_with_workers_shares_the_port(
    launch: Launch,  # noqa: F811
    sample_dir: Path,  # noqa: F811
    worker_pids: set[int],
) -> None:
    """`run --target redirector --workers 2` beside a `trunk8 up` (its NATS)."""
    system_port, port = free_port(), free_port()
    up(launch, sample_dir, system_port)
    nats_url = (sample_dir / ".trunk8" / "nats.url").read_text().strip()
    env = clean_env(TRUNK8_NATS_URL=nats_url, TRUNK8_DRAIN_SECONDS="0")
    proc = launch("run", "--target", "redirector", "--port", str(port), "--workers", "2", env=env)
    wait_for(lambda: _ready(port), 30, "the redirectors ready", proc, interval=0.1)
    answers = every_worker_answering(port, "/docs", 2)
    worker_pids.update(pid_of(worker) for worker in answers)
    assert set(answers.values()) == {(302, "https://example.com/docs")}, answers
    code, _ = proc.signal_and_wait(signal.SIGTERM, timeout=30)
    assert code == 0, proc.describe()
    wait_for(lambda: all(map(is_gone, worker_pids)), 10, "every worker gone", proc)


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/-/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
