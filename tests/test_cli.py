"""System tests of the real `trunk8` command: subprocesses, temp data dirs, real ports.

Each test starts `trunk8 up | run | serve | tap` as a child process with its own data
directory and free ports, talks to it over HTTP (or reads its output), and stops it with
a signal. Every wait is bounded; failures show the process's stderr; the `launch`
fixture stops whatever is still running at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from conftest import ADMIN_LINKS, BOB_LINKS, CAROL_LINKS, USERS_TOML, write
from nginxkit import free_port

from trunk8.embedded_nats import EmbeddedNats
from trunk8_shared.settings import load_dotenv

BIN = Path(sys.executable).parent
TRUNK8 = (
    [str(BIN / "trunk8")] if (BIN / "trunk8").exists() else [sys.executable, "-m", "trunk8.cli"]
)
NATS_SERVER = BIN / "nats-server"

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

CONFIG_TOML = """\
[app]
theme = "darkly"
markdown_theme = "darkly"
max_file_size_mb = 20

[session]
permanent_lifetime_days = 7
"""

THEMES_TOML = """\
[themes.darkly]
name = "Darkly"
description = "Flatly in night mode"
"""


# --- processes -----------------------------------------------------------------------


class Proc:
    """A child process whose stdout and stderr are read line by line by two threads."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.pid = self.popen.pid
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, pipe: object) -> None:
        for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            with self._changed:
                self.lines[name].append(raw.decode("utf-8", errors="replace"))
                self._changed.notify_all()

    @property
    def stdout(self) -> str:
        return "".join(self.lines["stdout"])

    @property
    def stderr(self) -> str:
        return "".join(self.lines["stderr"])

    def describe(self) -> str:
        return f"{' '.join(self.args)} (exit {self.popen.poll()})\n--- stderr:\n{self.stderr}"

    def wait_line(self, stream: str, predicate: Callable[[str], bool], timeout: float) -> str:
        """The first line of `stream` for which `predicate` holds; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[stream]:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"no matching line on {stream} within {timeout} s: {self.describe()}"
                    )
                self._changed.wait(min(left, 0.1))

    def wait(self, timeout: float) -> int:
        """Wait for the exit and for the output to be read; returns the exit status."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s: {self.describe()}")
        for reader in self._readers:
            reader.join(5)
        return code

    def signal_and_wait(self, signum: int, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """Send `signum`; returns the exit status and the seconds it took to exit."""
        started = time.monotonic()
        self.popen.send_signal(signum)
        code = self.wait(timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        """Stop the process if it still runs (SIGTERM, then SIGKILL) and close its pipes."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any TRUNK8_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNK8_")}
    env.update(extra)
    return env


Launch = Callable[..., Proc]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start `trunk8 <args>` (cwd: a temp dir, no TRUNK8_* variables unless given)."""
    started: list[Proc] = []
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        proc = Proc([*TRUNK8, *args], cwd or workdir, env if env is not None else clean_env())
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        # The nats-server of `up` dies with its parent; make sure of it even after a SIGKILL.
        children = nats_children(proc.pid) if proc.popen.poll() is None else set()
        proc.close()
        for pid, start_time in children:
            if alive(pid, start_time):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- /proc -----------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time), to tell a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def nats_children(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of each nats-server child of `pid`."""
    found = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, children.read_text().split()):
                start_time = _start_time(child)
                if start_time and _cmdline(child)[0].endswith("nats-server"):
                    found.add((child, start_time))
    return found


def alive(pid: int, start_time: str) -> bool:
    """True while that process (not a reuse of its pid) exists, zombie included."""
    return _start_time(pid) == start_time


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the processes whose arguments contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            cmdline = _cmdline(int(entry.name))
            if any(text in arg for arg in cmdline):
                found.append(" ".join(cmdline))
    return found


# --- HTTP ------------------------------------------------------------------------------


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def location(port: int, path: str) -> str | None:
    status, headers, _ = get(port, path)
    return headers.get("location") if status == 302 else None


def wait_ready(proc: Proc, port: int, timeout: float = READY_TIMEOUT) -> float:
    """Poll /-/ready until 200; fails with the stderr if the process exits or time runs out."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout:
        if proc.popen.poll() is not None:
            proc.wait(5)
            pytest.fail(f"exited before ready: {proc.describe()}")
        try:
            status, _, body = get(port, "/-/ready", timeout=2)
            if status == 200:
                return time.monotonic() - started
            last = f"{status} {body!r}"
        except OSError as err:
            last = repr(err)
        time.sleep(0.05)
    pytest.fail(f"not ready within {timeout} s (last: {last}): {proc.describe()}")


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, *procs: Proc, interval: float = 0.02
) -> float:
    """Poll `condition` until it holds; returns the seconds it took (fails showing `procs`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            details = "\n".join(proc.describe() for proc in procs)
            pytest.fail(f"{what}: not within {timeout} s\n{details}")
        time.sleep(interval)
    return time.monotonic() - started


# --- data ------------------------------------------------------------------------------


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """A complete data directory in Trunk8's layout, config included (nothing to create)."""
    root = tmp_path / "data"
    write(root / "config" / "config.toml", CONFIG_TOML)
    write(root / "config" / "themes.toml", THEMES_TOML)
    write(root / "users" / "users.toml", USERS_TOML)
    write(root / "users" / "admin" / "links.toml", ADMIN_LINKS)
    write(root / "users" / "bob" / "links.toml", BOB_LINKS)
    write(root / "users" / "carol" / "links.toml", CAROL_LINKS)
    (root / "users" / "bob" / "assets").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path under `root` except `.trunk8/`: (content or None for folders, mtime, inode)."""
    state = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative == ".trunk8" or relative.startswith(".trunk8/"):
            continue
        info = path.stat()
        content = path.read_bytes() if path.is_file() else None
        state[relative] = (content, info.st_mtime_ns, info.st_ino)
    return state


def append_link(data: Path, user: str, code: str, url: str) -> None:
    """Append a link to a user's links.toml, as someone editing it by hand would."""
    with (data / "users" / user / "links.toml").open("a", encoding="utf-8") as out:
        out.write(f'\n[links.{code}]\ntype = "redirect"\nurl = "{url}"\n')


def up(launch: Launch, data: Path, port: int, *extra: str, **kwargs: object) -> Proc:
    """`trunk8 up` on `data` and `port`, ready."""
    proc = launch("up", "--data", str(data), "--port", str(port), *extra, **kwargs)
    wait_ready(proc, port)
    return proc


def assert_one_line_error(proc: Proc, *needles: str) -> str:
    """Exit 1, and stderr is a single `trunk8: ...` line containing every needle."""
    code = proc.wait(20)
    lines = proc.stderr.strip().splitlines()
    assert code == 1, proc.describe()
    assert "Traceback" not in proc.stderr, proc.describe()
    assert len(lines) == 1 and lines[0].startswith("trunk8: "), proc.describe()
    for needle in needles:
        assert needle in lines[0], proc.describe()
    return lines[0]


# --- the tests -------------------------------------------------------------------------


def test_a_process_imports_only_the_services_it_runs(tmp_path: Path) -> None:
    """The serving side of `up` and a redirector never import the watcher's parsing stack."""
    script = (
        "import sys\n"
        "from trunk8.cli import build_app\n"
        "from trunk8_shared.settings import settings_from\n"
        f"build_app('redirector', settings_from({{}}, data_dir={str(tmp_path)!r}))\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(result.stdout.split())
    assert "trunk8_redirector.app" in modules
    assert not modules & {"trunk8_config_watcher.app", "tomlkit", "trunk8_admin", "trunk8_files"}


def test_up_initialises_an_empty_data_dir(launch: Launch, tmp_path: Path) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    port = free_port()
    proc = up(launch, data, port)

    config = tomllib.loads((data / "config" / "config.toml").read_text())
    assert config["app"]["theme"] == "cerulean"
    themes = tomllib.loads((data / "config" / "themes.toml").read_text())["themes"]
    assert len(themes) == 26 and "darkly" in themes
    users = tomllib.loads((data / "users" / "users.toml").read_text())["users"]
    assert list(users) == ["admin"]
    assert users["admin"]["is_admin"] is True and "password_hash" not in users["admin"]
    links_text = (data / "users" / "admin" / "links.toml").read_text()
    assert "[links]" in links_text and tomllib.loads(links_text) == {"links": {}}

    assert get(port, "/-/healthz")[0] == 200
    assert get(port, "/-/ready")[0] == 200
    assert get(port, "/no-such-code")[0] == 404
    assert proc.signal_and_wait(signal.SIGTERM)[0] == 0, proc.describe()


def test_up_serves_existing_data_and_leaves_it_unchanged(launch: Launch, sample_dir: Path) -> None:
    before = snapshot(sample_dir)
    port = free_port()
    proc = up(launch, sample_dir, port)

    status, headers, _ = get(port, "/docs")
    assert (status, headers.get("location")) == (302, "https://example.com/docs")
    assert location(port, "/carol1") == "https://example.org/carol"
    assert location(port, "/ex_redirect") == "https://example.com/admin"
    assert proc.signal_and_wait(signal.SIGTERM)[0] == 0, proc.describe()

    assert snapshot(sample_dir) == before
    added = {p.name for p in sample_dir.iterdir()} - {"config", "users"}
    assert added == {".trunk8"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_up_and_its_nats_server(launch: Launch, tmp_path: Path, signum: int) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = up(launch, data, port)
    children = nats_children(proc.pid)
    assert len(children) == 1, f"nats-server children: {children}: {proc.describe()}"

    code, _ = proc.signal_and_wait(signum)  # within STOP_TIMEOUT, or the test fails
    assert code == 0, proc.describe()
    assert not [pid for pid, start in children if alive(pid, start)], proc.describe()
    assert not processes_mentioning(str(data))
    assert port_is_free(port)


def test_port_in_use_is_one_line_error(launch: Launch, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = launch("up", "--data", str(tmp_path / "data"), "--port", str(port))
        line = assert_one_line_error(proc, f":{port}", "address already in use")
    assert line == f"trunk8: cannot listen on 127.0.0.1:{port}: address already in use"


def test_missing_nats_server_is_one_line_error(launch: Launch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = clean_env(TRUNK8_NATS_SERVER="/nonexistent/nats-server")
    proc = launch("up", "--data", str(data), "--port", str(port), env=env)
    assert_one_line_error(proc, "nats-server")
    assert port_is_free(port)
    assert not processes_mentioning(str(data))
    assert not (data / ".trunk8" / "nats.url").exists()


def test_hand_edit_is_served_without_restart(launch: Launch, sample_dir: Path) -> None:
    """How fast is measured in docs/benchmarks.md ("Propagation"), not asserted here."""
    port = free_port()
    proc = up(launch, sample_dir, port)
    assert get(port, "/fresh")[0] == 404

    append_link(sample_dir, "bob", "fresh", "https://example.com/fresh")
    wait_for(
        lambda: location(port, "/fresh") == "https://example.com/fresh",
        10,
        "hand edit served",
        proc,
    )
    assert location(port, "/docs") == "https://example.com/docs"


def test_tap_prints_events_of_a_running_up(launch: Launch, sample_dir: Path) -> None:
    port = free_port()
    up(launch, sample_dir, port)
    url_file = sample_dir / ".trunk8" / "nats.url"
    assert url_file.stat().st_mode & 0o777 == 0o600
    url = url_file.read_text().strip()
    assert url.startswith("nats://")

    by_data = launch("tap", "--data", str(sample_dir))
    by_url = launch("tap", "--nats", url, "trunk8.events.>")
    # A seed list whose first server is down: the tap reaches the one that answers.
    by_seeds = launch("tap", "--nats", f"nats://127.0.0.1:{free_port()},{url}")
    taps = (by_data, by_url, by_seeds)
    for tap in taps:
        tap.wait_line("stderr", lambda line: line.startswith("tapping"), READY_TIMEOUT)

    append_link(sample_dir, "bob", "tapped", "https://example.com/tapped")

    def created(line: str) -> bool:
        event = json.loads(line)
        return (
            event["subject"] == "trunk8.events.link.created"
            and event["data"]["link"]["code"] == "tapped"
        )

    for tap in taps:
        line = tap.wait_line("stdout", created, 10)
        assert json.loads(line)["data"]["link"]["url"] == "https://example.com/tapped"
    for tap in taps:
        assert tap.signal_and_wait(signal.SIGTERM)[0] == 0, tap.describe()


@pytest.fixture
def external_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server of the test's own (no token), as a separate deployment would run."""
    ports_dir = tmp_path / "nats-ports"
    ports_dir.mkdir()
    command = [
        str(NATS_SERVER), "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(tmp_path / "nats-js"),
        "--ports_file_dir", str(ports_dir), "-l", str(tmp_path / "nats-server.log"),
    ]  # fmt: skip
    server = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = ""

        def listening() -> bool:
            nonlocal url
            assert server.poll() is None, "nats-server exited at start"
            for ports_file in ports_dir.glob("*.ports"):
                with contextlib.suppress(ValueError, OSError, KeyError, IndexError):
                    url = json.loads(ports_file.read_text())["nats"][0]
                    return True
            return False

        wait_for(listening, 10, "nats-server listening")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(STOP_TIMEOUT)


def test_services_as_separate_processes(
    launch: Launch, sample_dir: Path, external_nats: str
) -> None:
    ports = {name: free_port() for name in ("watcher", "redirector", "served")}
    watcher = launch(
        "run", "--target", "config-watcher", "--data", str(sample_dir),
        "--nats", external_nats, "--port", str(ports["watcher"]),
    )  # fmt: skip
    redirector = launch(
        "run", "--target", "redirector", "--nats", external_nats, "--port", str(ports["redirector"])
    )
    served = launch("serve", "redirector", "--nats", external_nats, "--port", str(ports["served"]))
    for proc, port in zip((watcher, redirector, served), ports.values(), strict=True):
        wait_ready(proc, port)

    # The redirectors answer from what the watcher published (they may have become ready on
    # the bucket before the watcher filled it; then the updates follow within moments).
    for name in ("redirector", "served"):
        wait_for(
            lambda port=ports[name]: (location(port, "/docs"), location(port, "/carol1"))
            == ("https://example.com/docs", "https://example.org/carol"),
            5, f"{name} serves the published links", watcher, redirector, served,
        )  # fmt: skip
    assert get(ports["watcher"], "/docs")[0] == 404

    watcher_metrics = get(ports["watcher"], "/-/metrics")[2].decode()
    redirector_metrics = get(ports["redirector"], "/-/metrics")[2].decode()
    assert "trunk8_config_watcher_links" in watcher_metrics
    assert "trunk8_redirector_links" not in watcher_metrics
    assert "trunk8_redirector_links" in redirector_metrics
    assert "trunk8_config_watcher_links" not in redirector_metrics
    assert "trunk8_config_watcher_links 5.0" in watcher_metrics
    # The redirector knows every code (file links by type only, to hand them over).
    assert "trunk8_redirector_links 5.0" in redirector_metrics

    # The redirector has no data directory: nothing appeared in its working directory.
    assert not any((sample_dir.parent / "cwd").iterdir())
    for proc in (watcher, redirector, served):
        assert proc.signal_and_wait(signal.SIGTERM)[0] == 0, proc.describe()


def test_broken_users_toml_stops_start(launch: Launch, sample_dir: Path) -> None:
    users_file = sample_dir / "users" / "users.toml"
    users_file.write_text("[users.admin\nis_admin = true\n")
    proc = launch("up", "--data", str(sample_dir), "--port", str(free_port()))
    code = proc.wait(20)
    assert code == 1, proc.describe()
    assert "Traceback" not in proc.stderr, proc.describe()
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("trunk8:")]
    assert errors == [lines[-1]], proc.describe()
    assert str(users_file) in errors[0] or "users/users.toml" in errors[0], proc.describe()
    assert not processes_mentioning(str(sample_dir)), proc.describe()


def test_settings_from_environment_and_dotenv(launch: Launch, tmp_path: Path) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    port, dotenv_port = free_port(), free_port()
    # .env gives the data directory (relative to the working directory) and a port that the
    # real environment overrides.
    (workdir / ".env").write_text(
        f"# make run\nTRUNK8_PORT={dotenv_port}\nexport TRUNK8_DATA_DIR='envdata'\n"
    )
    proc = launch("up", env=clean_env(TRUNK8_PORT=str(port)), cwd=workdir)
    wait_ready(proc, port)
    assert (workdir / "envdata" / "users" / "users.toml").is_file()
    assert (workdir / "envdata" / ".trunk8" / "nats.url").is_file()
    assert port_is_free(dotenv_port)
    assert f"serving on http://127.0.0.1:{port}" in proc.stderr
    assert proc.signal_and_wait(signal.SIGTERM)[0] == 0, proc.describe()

    # Without .env, the real environment alone.
    data = tmp_path / "from-env"
    env = clean_env(TRUNK8_PORT=str(port), TRUNK8_DATA_DIR=str(data))
    proc = launch("up", env=env)
    wait_ready(proc, port)
    assert (data / "config" / "themes.toml").is_file()
    assert proc.signal_and_wait(signal.SIGTERM)[0] == 0, proc.describe()


def test_port_out_of_range_is_one_line_error(launch: Launch, tmp_path: Path) -> None:
    proc = launch("up", "--data", str(tmp_path / "data"), "--port", "70000")
    assert_one_line_error(proc, "127.0.0.1:70000", "0-65535")
    assert not (tmp_path / "data").exists()


def test_tap_without_a_reachable_nats_is_one_line_error(launch: Launch, tmp_path: Path) -> None:
    # A stale URL file, left by a `trunk8 up` that has stopped since.
    data = tmp_path / "data"
    up(launch, data, free_port()).signal_and_wait(signal.SIGTERM)
    stale = (data / ".trunk8" / "nats.url").read_text().strip()
    token = stale.removeprefix("nats://").split("@")[0]
    started = time.monotonic()
    by_data = launch("tap", "--data", str(data))
    by_url = launch("tap", "--nats", f"nats://127.0.0.1:{free_port()}")
    for tap in (by_data, by_url):
        assert_one_line_error(tap, "trunk8: cannot connect to NATS at nats://")
        assert token not in tap.stderr
    assert time.monotonic() - started < 15
    assert f"***@127.0.0.1:{stale.rsplit(':', 1)[1]}" in by_data.stderr


# --- the embedded nats-server ----------------------------------------------------------


def fake_nats_server(folder: Path, script: str) -> Path:
    """An executable `nats-server` that runs `script` (sh), for start-up failures."""
    path = folder / "nats-server"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_killed_nats_server_is_restarted(launch: Launch, sample_dir: Path) -> None:
    port = free_port()
    proc = up(launch, sample_dir, port)
    store = sample_dir / ".trunk8" / "nats"
    url = (sample_dir / ".trunk8" / "nats.url").read_text().strip()
    token = url.removeprefix("nats://").split("@")[0]
    [(old_pid, old_start)] = nats_children(proc.pid)
    # The token is in an owner-only config file, not in argv (which `ps` shows to anyone).
    assert token not in "\0".join(_cmdline(old_pid)), _cmdline(old_pid)
    assert (store / "nats-server.conf").stat().st_mode & 0o777 == 0o600

    os.kill(old_pid, signal.SIGKILL)
    append_link(sample_dir, "bob", "after", "https://example.com/after")
    wait_for(
        lambda: location(port, "/after") == "https://example.com/after",
        15, "hand edit served after the nats-server was killed", proc, interval=0.1,
    )  # fmt: skip
    assert location(port, "/docs") == "https://example.com/docs"
    [(new_pid, new_start)] = nats_children(proc.pid)
    assert new_pid != old_pid and not alive(old_pid, old_start)
    assert token not in "\0".join(_cmdline(new_pid))
    assert (sample_dir / ".trunk8" / "nats.url").read_text().strip() == url  # same port, token
    assert "embedded nats-server exited with status -9" in proc.stderr, proc.describe()
    assert "embedded nats-server restarted" in proc.stderr, proc.describe()

    assert proc.signal_and_wait(signal.SIGTERM)[0] == 0, proc.describe()
    assert not alive(new_pid, new_start)
    assert not processes_mentioning(str(sample_dir))
    assert "Error cleaning up ports file" not in (store / "nats-server.log").read_text()


def test_nats_server_that_cannot_restart_stops_up(launch: Launch, tmp_path: Path) -> None:
    # A nats-server that starts once, then fails every time, as a broken store would make it.
    started = tmp_path / "started-once"
    binary = fake_nats_server(
        tmp_path,
        f'if [ -e "{started}" ]; then echo "fake: cannot start again" >&2; exit 1; fi\n'
        f'touch "{started}"\nexec "{NATS_SERVER}" "$@"',
    )
    data, port = tmp_path / "data", free_port()
    proc = up(launch, data, port, env=clean_env(TRUNK8_NATS_SERVER=str(binary)))
    [(pid, _)] = nats_children(proc.pid)

    os.kill(pid, signal.SIGKILL)
    assert proc.wait(30) == 1, proc.describe()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trunk8: embedded nats-server failed 5 restarts"), proc.describe()
    assert "fake: cannot start again" in last, proc.describe()
    assert "Traceback" not in proc.stderr, proc.describe()
    assert proc.stderr.count("restarting the embedded nats-server failed") == 5
    assert port_is_free(port)
    assert not processes_mentioning(str(data))


def test_nats_server_dies_with_a_killed_up(launch: Launch, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    proc = up(launch, data, port)
    [(pid, start_time)] = nats_children(proc.pid)
    proc.popen.kill()  # no cleanup runs: only the parent-death signal stops the child
    proc.wait(STOP_TIMEOUT)
    wait_for(lambda: not alive(pid, start_time), 10, "nats-server gone with its parent", proc)
    assert not processes_mentioning(str(data))


async def test_embedded_server_child_setup_loads_no_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between fork and exec nothing is loaded (a threaded parent could deadlock there)."""
    first = EmbeddedNats(tmp_path / "first")
    await first.start()  # the parent resolves what the child setup needs, once
    await first.stop()

    def load_library(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a library was loaded in the child setup")

    monkeypatch.setattr(ctypes, "CDLL", load_library)
    second = EmbeddedNats(tmp_path / "second")
    try:
        url = await second.start()
        client = await nats.connect(url)
        await client.close()
    finally:
        await second.stop()


def test_nats_server_start_error_is_one_line_error(launch: Launch, tmp_path: Path) -> None:
    binary = fake_nats_server(tmp_path, 'echo "fake: listen tcp: permission denied" >&2\nexit 1')
    data = tmp_path / "data"
    # An earlier run's failure stays in the (appended) log; only this start's lines count.
    write(data / ".trunk8" / "nats" / "nats-server.log", "[1] [FTL] an earlier failure\n")
    env = clean_env(TRUNK8_NATS_SERVER=str(binary))
    proc = launch("up", "--data", str(data), "--port", str(free_port()), env=env)
    line = assert_one_line_error(proc, "nats-server exited at start")
    assert line.endswith("fake: listen tcp: permission denied"), proc.describe()


def test_nats_server_from_dotenv(launch: Launch, tmp_path: Path) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / ".env").write_text("TRUNK8_NATS_SERVER=/nonexistent/nats-server  # not here\n")
    proc = launch("up", "--port", str(free_port()), cwd=workdir)
    assert_one_line_error(proc, "nats-server not found at /nonexistent/nats-server:")


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("TRUNK8_PORT=5080 # public port", "5080"),
        ("TRUNK8_PORT=5080\t# tab, then a comment", "5080"),
        ("TRUNK8_PORT=a#b", "a#b"),
        ("TRUNK8_PORT=#all of it", "#all of it"),
        ("TRUNK8_PORT='a # b'  # comment", "a # b"),
        ('TRUNK8_PORT="a # b"', "a # b"),
        ('export TRUNK8_PORT = "say \\"hi\\"\\n"', 'say "hi"\n'),
        ("TRUNK8_PORT='raw \\n'", "raw \\n"),
        ("TRUNK8_PORT=  spaced value  ", "spaced value"),
        ("TRUNK8_PORT=", ""),
    ],
)
def test_dotenv_values_as_python_dotenv_reads_them(tmp_path: Path, line: str, value: str) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"# Trunk8\n{line}\n")
    assert load_dotenv(dotenv, {}) == {"TRUNK8_PORT": value}
    assert load_dotenv(dotenv, {"TRUNK8_PORT": "1"}) == {"TRUNK8_PORT": "1"}


def test_dotenv_multiline_values_interpolation_and_bare_names(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        'TRUNK8_DATA_DIR="/srv/first\nsecond"\n'
        "TRUNK8_BASE=/srv/trunk8\n"
        "TRUNK8_NATS_SERVER=${TRUNK8_BASE}/bin/nats-server\n"
        "TRUNK8_FORCE_POLLING\n"
    )
    assert load_dotenv(dotenv, {}) == {
        "TRUNK8_DATA_DIR": "/srv/first\nsecond",
        "TRUNK8_BASE": "/srv/trunk8",
        "TRUNK8_NATS_SERVER": "/srv/trunk8/bin/nats-server",
    }
    assert load_dotenv(tmp_path, {"A": "1"}) == {"A": "1"}  # a folder named .env: ignored


def test_a_bad_service_setting_is_a_one_line_error(launch: Launch, tmp_path: Path) -> None:
    """A service's own setting (the admin's) that does not parse: exit 2, one line, no trace."""
    env = clean_env(TRUNK8_LOGIN_ATTEMPTS="abc")
    proc = launch("up", "--data", str(tmp_path / "data"), "--port", str(free_port()), env=env)
    code = proc.wait(20)
    lines = proc.stderr.strip().splitlines()
    assert code == 2, proc.describe()
    assert "Traceback" not in proc.stderr, proc.describe()
    assert lines[-1].startswith("trunk8: ") and "login_attempts" in lines[-1], proc.describe()
