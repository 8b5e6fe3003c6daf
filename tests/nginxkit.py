"""Debian's nginx for tests: found (or installed by apt-get as root), configured, run.

`NginxEdge` runs nginx in the foreground with the shipped `deploy/nginx/` files as they
are (the routes) and only what a test must choose itself rendered by `trunk8.deploy`
(upstream addresses, the cache folder), plus a minimal main config on a loopback port.
Without nginx and without a way to install it, tests that need it are skipped with why.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from trunk8.deploy import Upstreams, render_http, render_upstreams

DEPLOY_NGINX = Path(__file__).resolve().parent.parent / "deploy" / "nginx"


def require_nginx() -> str:
    """The nginx binary; installs Debian's package when missing and root, else skips."""
    sbin = Path("/usr/sbin/nginx")  # not on PATH for every user
    found = shutil.which("nginx") or (str(sbin) if sbin.exists() else "")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("nginx is not installed (as root on Debian: apt-get install nginx-light)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300)
    for package in ("nginx-light", "nginx"):
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], env=env, check=False, timeout=300
        )
        if done.returncode == 0:
            break
    found = shutil.which("nginx") or ""
    if not found:
        pytest.skip("nginx could not be installed with apt-get")
    return found


# Ports handed out below the kernel's ephemeral range (32768-60999 here): a port the kernel
# picked for us can be taken again for any outgoing connection (a NATS route dialling, a
# client) before the process we hand it to binds it, which once killed a cluster node at
# start ("address already in use"). Outgoing connections never take these.
_PORTS_FROM, _PORTS_TO = 20000, 32000
_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback TCP port, not handed out before by this process."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(_PORTS_FROM, _PORTS_TO)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {_PORTS_FROM} and {_PORTS_TO}")


def _missing_modules(binary: str) -> set[str]:
    out = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    return set(re.findall(r"--without-http_(\w+)_module", out.stdout + out.stderr))


class NginxEdge:
    """nginx with the shipped routes on a loopback port, in front of the given upstreams."""

    def __init__(self, prefix: Path, upstreams: Upstreams) -> None:
        self.binary = require_nginx()
        self.prefix = prefix
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "trunk8-http.conf").write_text(render_http(str(prefix / "cache")))
        (prefix / "trunk8-upstreams.conf").write_text(render_upstreams(upstreams))
        temp_paths = [f"client_body_temp_path {prefix}/client_body;"] + [
            f"{module}_temp_path {prefix}/{module};"
            for module in ("proxy", "fastcgi", "uwsgi", "scgi")
            if module not in _missing_modules(self.binary)
        ]
        self.config = prefix / "nginx.conf"
        self.config.write_text(
            "\n".join(
                [
                    "daemon off;",
                    # As root the workers would be `nobody`, shut out of pytest's 0700 temp.
                    "user root;" if os.geteuid() == 0 else "",
                    "worker_processes 1;",
                    f"pid {prefix}/nginx.pid;",
                    f"error_log {prefix}/error.log warn;",
                    "events { worker_connections 1024; }",
                    "http {",
                    f"    access_log {prefix}/access.log;",
                    *(f"    {line}" for line in temp_paths),
                    f"    include {prefix}/trunk8-http.conf;",
                    f"    include {prefix}/trunk8-upstreams.conf;",
                    "    server {",
                    f"        listen 127.0.0.1:{self.port};",
                    f"        include {DEPLOY_NGINX}/trunk8-routes.conf;",  # as shipped
                    "    }",
                    "}",
                    "",
                ]
            )
        )

    @property
    def base(self) -> str:
        """The edge's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the config."""
        return subprocess.run(
            [self.binary, "-t", "-p", str(self.prefix), "-c", str(self.config)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Start nginx and return once it accepts connections."""
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nginx did not start listening in time")

    def error_log(self) -> str:
        """What nginx logged (for failure messages)."""
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop nginx (graceful quit, then kill)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
