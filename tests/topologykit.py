"""The split deployment on loopback for system tests: NATS cluster, service processes, nginx.

`Topology` starts three nats-servers clustered with `deploy/nats/nats-server.conf` (as
shipped, each node's own values in its environment), makes Trunk8's buckets with 3
replicas (`python -m trunk8.deploy buckets`), runs two config-watchers (one active, one
standing by: the lease), two redirectors (accel mode), the files service and the admin as
separate `trunk8 run --target …` processes, and nginx in front with `deploy/nginx/`.
Tests kill, signal and restart any of them by name. `Processes` starts each child in its
own session with its log in a file and stops every one at the end, also on failure:
SIGTERM, then SIGKILL of its process group. The `topology` fixture of conftest.py gives a
test one, stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import nats
import pytest
from conftest import wait_until
from nginxkit import NginxEdge, free_port
from prometheus_client.parser import text_string_to_metric_families
from test_admin_support import Browser

from trunk8.deploy import Upstreams
from trunk8.embedded_nats import find_nats_server

ROOT = Path(__file__).resolve().parent.parent
NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
TRUNK8 = Path(sys.executable).parent / "trunk8"
TOKEN = "topology-token"
ADMIN_PASSWORD = "topology-admin-pw"
WATCHERS = ("config-watcher-1", "config-watcher-2")  # one active, one standing by
SERVICES = (*WATCHERS, "redirector-1", "redirector-2", "files", "admin")
REDIRECTORS = ("redirector-1", "redirector-2")
# Seconds: a standby takes over about this long after the active one died (3 s, as
# test_lease.py: a renewal delayed that long on a loaded machine costs the lease).
LEASE_TTL = 3.0
STOP_TIMEOUT = 10.0


class Processes:
    """Child processes of one test, each in its own session, logs in files; all stopped."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self._how: dict[str, tuple[list[str], dict[str, str], Path]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Start `argv` as `name`, stdout and stderr appended to `<logs>/<name>.log`."""
        self._how[name] = (argv, env, cwd)
        with (self.logs / f"{name}.log").open("ab") as out:
            self.started[name] = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip

    def restart(self, name: str) -> None:
        """Start `name` again as it was started before (it must have ended)."""
        assert self.started[name].poll() is not None, f"{name} is still running"
        self.start(name, *self._how[name])

    def log(self, name: str) -> str:
        """The end of a process's log, for failure messages."""
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        """Stop the services, then the NATS nodes (as an operator would): SIGTERM, then
        SIGKILL of the process group of whatever is left after STOP_TIMEOUT."""
        services = [p for n, p in self.started.items() if not n.startswith("nats-")]
        nodes = [p for n, p in self.started.items() if n.startswith("nats-")]
        for group in (services, nodes):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # its children too
                    proc.wait(timeout=5)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's TRUNK8_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNK8_")}
    return {**env, **extra}


async def ready(http: aiohttp.ClientSession, port: int) -> bool:
    """Whether the process on `port` answers 200 on /-/ready."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/-/ready") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def location(http: aiohttp.ClientSession, base: str, path: str) -> str | None:
    """The Location of a 302 for `path` at `base`, else None."""
    async with http.get(base + path, allow_redirects=False) as response:
        return response.headers.get("Location") if response.status == 302 else None


class Topology:
    """The whole split deployment of one test; `start` it, `stop` is the fixture's."""

    def __init__(self, data_dir: Path, tmp_path: Path) -> None:
        self.data_dir = data_dir
        self.tmp_path = tmp_path
        self.processes = Processes(tmp_path / "logs")
        self.ports = {name: free_port() for name in SERVICES}
        self.nats_ports = [free_port() for _ in range(3)]
        self.monitor_ports = [free_port() for _ in range(3)]
        self.seeds = ",".join(f"nats://{TOKEN}@127.0.0.1:{port}" for port in self.nats_ports)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.edge: NginxEdge | None = None

    @property
    def base(self) -> str:
        """nginx's base URL."""
        assert self.edge is not None, "the topology is not started"
        return self.edge.base

    def direct(self, name: str) -> str:
        """The base URL of one service process, past nginx."""
        return f"http://127.0.0.1:{self.ports[name]}"

    async def start(self, drain_seconds: float = 0.0) -> float:
        """NATS, buckets, every service (ready), then nginx; the seconds it took."""
        started = time.monotonic()
        self._start_nats_cluster()

        async def provisioned() -> bool:
            return await self._provision()

        await wait_until(provisioned, timeout=30, interval=0.5)
        for name in SERVICES:
            self._start_service(name, drain_seconds)
        for name in SERVICES:
            await self.until_ready(name)
        upstreams = Upstreams(
            redirector=tuple(f"127.0.0.1:{self.ports[name]}" for name in REDIRECTORS),
            files=(f"127.0.0.1:{self.ports['files']}",),
            admin=(f"127.0.0.1:{self.ports['admin']}",),
        )
        self.edge = NginxEdge(self.tmp_path / "nginx", upstreams)
        self.edge.start()
        return time.monotonic() - started

    async def stop(self) -> None:
        """Stop nginx and every process, whatever state the test left them in."""
        await self.http.close()
        if self.edge is not None:
            self.edge.stop()
        self.processes.stop_all()

    async def until_ready(self, name: str, timeout: float = 30.0) -> float:
        """Wait until service `name` answers 200 on /-/ready; the seconds it took."""

        async def up() -> bool:
            return await ready(self.http, self.ports[name])

        try:
            return await wait_until(up, timeout=timeout)
        except pytest.fail.Exception:
            pytest.fail(f"{name} not ready within {timeout} s:\n{self.processes.log(name)}")

    def signal(self, name: str, signum: int) -> subprocess.Popen[bytes]:
        """Send `signum` to process `name` (a service or `nats-N`); its Popen."""
        proc = self.processes.started[name]
        proc.send_signal(signum)
        return proc

    async def exited(self, name: str, timeout: float = 20.0) -> int:
        """Wait for process `name` to end; its exit status."""
        proc = self.processes.started[name]
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} still running after {timeout} s:\n{self.processes.log(name)}")
            await asyncio.sleep(0.05)
        return proc.returncode

    async def active_watchers(self) -> list[str]:
        """The config-watchers that hold the lease (`trunk8_config_watcher_active` 1)."""
        active = []
        for name in WATCHERS:
            if self.processes.started[name].poll() is not None:
                continue
            try:
                async with self.http.get(self.direct(name) + "/-/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientError:
                continue
            samples = {
                sample.name: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            if samples.get("trunk8_config_watcher_active") == 1:
                active.append(name)
        return active

    def rss_mb(self, name: str) -> float:
        """The resident memory of process `name`, in MB (its own, not its children's)."""
        status = Path(f"/proc/{self.processes.started[name].pid}/status").read_text()
        kilobytes = next(
            line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")
        )
        return int(kilobytes) / 1024

    def restart(self, name: str) -> None:
        """Start a process that ended again, as it was (same port, settings, store)."""
        self.processes.restart(name)

    async def browser(self) -> Browser:
        """A signed-in admin session through nginx (close it)."""
        browser = Browser(SimpleNamespace(base=self.base))  # type: ignore[arg-type]
        status, _, _ = await browser.get("/auth/login")
        assert status == 200
        status, _, _ = await browser.post(
            "/auth/login", {"username": "", "password": ADMIN_PASSWORD}
        )
        assert status == 302, "sign-in through nginx"
        browser.stale = True  # a signed-in session has a new CSRF token
        return browser

    async def create_link(self, browser: Browser, code: str, url: str) -> None:
        """Create a redirect link with the admin's add form, as a user would."""
        status, _, body = await browser.post_multipart(
            "/add", {"link_type": "redirect", "url": url, "short_code": code}
        )
        assert status in (200, 302), body[-500:]

    async def served_by_all(self, code: str, url: str) -> bool:
        """Whether every running redirector answers `code` with a 302 to `url` (asked at once)."""

        async def serves(name: str) -> bool:
            try:
                return await location(self.http, self.direct(name), "/" + code) == url
            except aiohttp.ClientError:
                return False

        running = [n for n in REDIRECTORS if self.processes.started[n].poll() is None]
        return all(await asyncio.gather(*map(serves, running)))

    async def links_stream_peers(self) -> tuple[str, dict[str, bool]]:
        """The links stream's leader (a node's process name), and its peers, leader
        included, by name with whether each is current."""

        async def unlogged(err: Exception) -> None:
            """nats-py would log each node that is down with a traceback."""

        client = await nats.connect(
            servers=self.seeds.split(","), connect_timeout=3, error_cb=unlogged
        )
        try:
            info = await client.jetstream().stream_info("KV_trunk8_links")
        finally:
            await client.close()
        assert info.cluster is not None and info.cluster.leader, info.cluster
        peers = {info.cluster.leader: True}
        for replica in info.cluster.replicas or []:
            peers[replica.name] = bool(replica.current) and not replica.offline
        return info.cluster.leader, peers

    def _start_nats_cluster(self) -> None:
        """Three clustered nodes from the shipped config."""
        route_ports = [free_port() for _ in range(3)]
        routes = {
            f"TRUNK8_NATS_ROUTE_{n + 1}": f"nats-route://route:route-pw@127.0.0.1:{port}"
            for n, port in enumerate(route_ports)
        }
        for n in range(3):
            env = clean_env(
                TRUNK8_NATS_NAME=f"nats-{n + 1}",
                TRUNK8_NATS_LISTEN=f"127.0.0.1:{self.nats_ports[n]}",
                TRUNK8_NATS_MONITOR=f"127.0.0.1:{self.monitor_ports[n]}",
                TRUNK8_NATS_CLUSTER_LISTEN=f"127.0.0.1:{route_ports[n]}",
                TRUNK8_NATS_ROUTE_PASSWORD="route-pw",
                TRUNK8_NATS_TOKEN=TOKEN,
                TRUNK8_NATS_STORE=str(self.tmp_path / f"nats-{n + 1}"),
                **routes,
            )
            argv = [find_nats_server(), "-c", str(NATS_CONF)]
            self.processes.start(f"nats-{n + 1}", argv, env, self.tmp_path)

    async def _provision(self) -> bool:
        """`python -m trunk8.deploy buckets --replicas 3`; False until the cluster has a leader."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trunk8.deploy", "buckets", "--nats", self.seeds,
            "--replicas", "3",
            cwd=self.tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
        (self.processes.logs / "provision.log").write_bytes(output)
        return proc.returncode == 0

    def _start_service(self, name: str, drain_seconds: float) -> None:
        target = name.rsplit("-", 1)[0] if name in (*WATCHERS, *REDIRECTORS) else name
        env = clean_env(
            TRUNK8_NATS_URL=self.seeds,
            TRUNK8_DATA_DIR=str(self.data_dir),
            TRUNK8_ADMIN_PASSWORD=ADMIN_PASSWORD,
            TRUNK8_SECRET_KEY="topology-secret-key",
            TRUNK8_DRAIN_SECONDS=str(drain_seconds),
            TRUNK8_PORT=str(self.ports[name]),
            TRUNK8_BUCKET_REPLICAS="3",
            TRUNK8_LEASE_TTL=str(LEASE_TTL),
        )
        if target == "redirector":
            env["TRUNK8_FILES_MODE"] = "accel"
        argv = [str(TRUNK8), "run", "--target", target]
        self.processes.start(name, argv, env, self.tmp_path)
