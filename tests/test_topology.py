"""Topology: the split deployment as shipped, on loopback, every part its own process.

Three nats-servers clustered with `deploy/nats/nats-server.conf` (as shipped, the node's
own values in its environment), Trunk8's buckets made with 3 replicas by
`python -m trunk8.deploy buckets`, then a config-watcher, two redirectors (accel mode),
the files service and the admin as separate `trunk8 run --target …` processes, and nginx
in front with `deploy/nginx/`. Everything a user does goes through nginx: a redirect, a
download handed off by X-Accel, a markdown page, signing in and creating a link, which
both redirectors then serve. Every process is stopped at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import nats
import pytest
from conftest import wait_until, write
from nginxkit import NginxEdge, free_port
from test_admin_support import Browser

from trunk8.deploy import Upstreams
from trunk8.embedded_nats import find_nats_server

ROOT = Path(__file__).resolve().parent.parent
NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
TRUNK8 = Path(sys.executable).parent / "trunk8"
TOKEN = "topology-token"
ADMIN_PASSWORD = "topology-admin-pw"


class Processes:
    """Child processes of one test, each in its own session, logs in files; all stopped."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Start `argv` as `name`, stdout and stderr to `<logs>/<name>.log`."""
        with (self.logs / f"{name}.log").open("wb") as out:
            self.started[name] = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip

    def log(self, name: str) -> str:
        """The end of a process's log, for failure messages."""
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        """Stop the services, then the NATS nodes (as an operator would): SIGTERM, then
        SIGKILL whatever is left after 10 s."""
        services = [p for n, p in self.started.items() if not n.startswith("nats-")]
        nodes = [p for n, p in self.started.items() if n.startswith("nats-")]
        for group in (services, nodes):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's TRUNK8_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNK8_")}
    return {**env, **extra}


def start_nats_cluster(processes: Processes, tmp_path: Path) -> list[str]:
    """Three clustered nodes from the shipped config; their client URLs (with the token)."""
    client_ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    routes = {
        f"TRUNK8_NATS_ROUTE_{n + 1}": f"nats-route://route:route-pw@127.0.0.1:{port}"
        for n, port in enumerate(route_ports)
    }
    for n in range(3):
        env = _clean_env(
            TRUNK8_NATS_NAME=f"nats-{n + 1}",
            TRUNK8_NATS_LISTEN=f"127.0.0.1:{client_ports[n]}",
            TRUNK8_NATS_MONITOR=f"127.0.0.1:{free_port()}",
            TRUNK8_NATS_CLUSTER_LISTEN=f"127.0.0.1:{route_ports[n]}",
            TRUNK8_NATS_ROUTE_PASSWORD="route-pw",
            TRUNK8_NATS_TOKEN=TOKEN,
            TRUNK8_NATS_STORE=str(tmp_path / f"nats-{n + 1}"),
            **routes,
        )
        argv = [find_nats_server(), "-c", str(NATS_CONF)]
        processes.start(f"nats-{n + 1}", argv, env, tmp_path)
    return [f"nats://{TOKEN}@127.0.0.1:{port}" for port in client_ports]


async def provision(seeds: str, processes: Processes, cwd: Path) -> bool:
    """`python -m trunk8.deploy buckets --replicas 3`; False until the cluster has a leader."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trunk8.deploy", "buckets", "--nats", seeds, "--replicas", "3",
        cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    (processes.logs / "provision.log").write_bytes(output)
    return proc.returncode == 0


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


async def test_split_topology_through_nginx(
    data_dir: Path, tmp_path: Path, processes: Processes
) -> None:
    assets = data_dir / "users" / "bob" / "assets"
    report = b"%PDF-1.4 quarterly\n" * 2000
    write(assets / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf", "")
    (assets / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf").write_bytes(report)
    write(data_dir / "users" / "carol" / "assets" / "notes.md", "# Carol's notes\n\n*hi*\n")
    write(
        data_dir / "users" / "carol" / "links.toml",
        '[links]\ncarol1 = { type = "redirect", url = "https://example.org/carol" }\n'
        'notes = { type = "markdown", path = "notes.md" }\n',
    )
    started = time.monotonic()
    seeds = ",".join(start_nats_cluster(processes, tmp_path))

    async def provisioned() -> bool:
        return await provision(seeds, processes, tmp_path)

    await wait_until(provisioned, timeout=30, interval=0.5)
    client = await nats.connect(servers=seeds.split(","))
    try:
        info = await client.jetstream().stream_info("KV_trunk8_links")
        assert info.config.num_replicas == 3 and info.cluster is not None
        assert len(info.cluster.replicas or []) == 2  # the leader and two copies
    finally:
        await client.close()

    ports = {
        name: free_port()
        for name in ("config-watcher", "redirector-1", "redirector-2", "files", "admin")
    }
    common = {
        "TRUNK8_NATS_URL": seeds,
        "TRUNK8_DATA_DIR": str(data_dir),
        "TRUNK8_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "TRUNK8_SECRET_KEY": "topology-secret-key",
        # No traffic is moved during this test's stop: draining would only slow teardown.
        "TRUNK8_DRAIN_SECONDS": "0",
    }
    for name, port in ports.items():
        target = name.split("-")[0] if name.startswith("redirector") else name
        env = _clean_env(**common, TRUNK8_PORT=str(port))
        if target == "redirector":
            env["TRUNK8_FILES_MODE"] = "accel"
        argv = [str(TRUNK8), "run", "--target", target]
        processes.start(name, argv, env, tmp_path)

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10),
    ) as http:
        for name, port in ports.items():

            async def up(port: int = port) -> bool:
                return await ready(http, port)

            try:
                await wait_until(up, timeout=30)
            except pytest.fail.Exception:
                pytest.fail(f"{name} not ready:\n{processes.log(name)}")

        upstreams = Upstreams(
            redirector=(f"127.0.0.1:{ports['redirector-1']}", f"127.0.0.1:{ports['redirector-2']}"),
            files=(f"127.0.0.1:{ports['files']}",),
            admin=(f"127.0.0.1:{ports['admin']}",),
        )
        edge = NginxEdge(tmp_path / "nginx", upstreams)
        edge.start()
        try:
            await _through_the_edge(http, edge, ports, report)
        finally:
            edge.stop()
    elapsed = time.monotonic() - started
    print(f"topology: 3 NATS nodes, 5 services and nginx checked in {elapsed:.1f} s")


async def _through_the_edge(
    http: aiohttp.ClientSession, edge: NginxEdge, ports: dict[str, int], report: bytes
) -> None:
    base = edge.base
    for _ in range(4):  # both redirectors take turns behind the edge
        assert await location(http, base, "/docs") == "https://example.com/docs"

    async with http.get(base + "/report", headers={"Range": "bytes=0-8"}) as response:
        assert response.status == 206, edge.error_log()
        assert await response.read() == report[:9]
        assert "X-Accel-Redirect" not in response.headers
    async with http.get(base + "/report") as response:
        assert response.status == 200 and await response.read() == report
        assert "Q4_Report.pdf" in response.headers.get("Content-Disposition", "")
    async with http.get(base + "/notes") as response:
        page = await response.text()
        assert response.status == 200 and "<em>hi</em>" in page, page[-500:]

    browser = Browser(SimpleNamespace(base=base))  # type: ignore[arg-type]
    try:
        status, _, _ = await browser.get("/auth/login")
        assert status == 200
        status, _, _ = await browser.post(
            "/auth/login", {"username": "", "password": ADMIN_PASSWORD}
        )
        assert status == 302, "sign-in through nginx"
        browser.stale = True
        status, _, body = await browser.post_multipart(
            "/add",
            {"link_type": "redirect", "url": "https://example.net/new", "short_code": "fresh"},
        )
        assert status in (200, 302), body[-500:]
    finally:
        await browser.close()

    # The admin answers once the link is served: both redirectors have it, straight away.
    for name in ("redirector-1", "redirector-2"):
        direct = f"http://127.0.0.1:{ports[name]}"
        assert await location(http, direct, "/fresh") == "https://example.net/new", name
    assert await location(http, base, "/fresh") == "https://example.net/new"
    counts: dict[str, Any] = {}
    for name in ("redirector-1", "redirector-2"):
        async with http.get(f"http://127.0.0.1:{ports[name]}/-/metrics") as response:
            text = await response.text()
        counts[name] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('trunk8_redirector_requests_total{route="/{code}",status="302"}')
        )
    assert all(count >= 1 for count in counts.values()), counts  # the edge used both
