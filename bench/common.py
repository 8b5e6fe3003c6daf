"""What the benchmarks share: started processes and their cleanup, tools, nginx, wrk, polling.

`bench/redirect.py`, `bench/downloads.py` and `bench/scale.py` import these: a child is
started in its own session with its output in log files (`start`), and `CLEANUP` stops
every child (SIGTERM, then SIGKILL of its session) and removes temp dirs on any exit;
`ensure_tools` installs wrk and nginx with apt-get when missing; `parse_wrk` reads
`wrk --latency` output; `run_main` is the common `main`: exit 0 with a report (a missed
budget is a measurement), 1 when something could not run, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
STOP_GRACE = 10.0


class BenchError(Exception):
    """Something needed for the benchmark could not run."""


class Interrupted(BaseException):
    """Raised from the SIGTERM handler so that cleanup runs."""


# --------------------------------------------------------------------------
# Process and temp-dir bookkeeping
# --------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process with its log files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of stderr (and stdout), for error messages."""
        parts = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if text:
                parts.append(f"--- {self.name} {label} (last {lines} lines) ---")
                parts.extend(text[-lines:])
        return "\n".join(parts) if parts else f"({self.name} printed nothing)"


class Cleanup:
    """Stops started processes (newest first) and removes temp dirs; idempotent."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.dirs: list[Path] = []
        self.keep_dirs = False

    def add_proc(self, proc: Proc) -> None:
        self.procs.append(proc)

    def add_dir(self, path: Path) -> None:
        self.dirs.append(path)

    def stop(self, proc: Proc) -> None:
        """SIGTERM the process, SIGKILL it (and its session) after a grace time."""
        if proc in self.procs:
            self.procs.remove(proc)
        popen = proc.popen
        pgid = popen.pid  # started with start_new_session=True
        if popen.poll() is None:
            try:
                popen.send_signal(signal.SIGTERM)
                popen.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                print(
                    f"  {proc.name} ignored SIGTERM for {STOP_GRACE:.0f} s, killing it",
                    file=sys.stderr,
                )
            except ProcessLookupError:
                pass
        # Anything left in its session (the process itself, or children it
        # did not reap) gets a short grace, then SIGKILL.
        deadline = time.monotonic() + (1.0 if popen.poll() is not None else 0.0)
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def run(self) -> None:
        while self.procs:
            self.stop(self.procs[-1])
        while self.dirs:
            path = self.dirs.pop()
            if self.keep_dirs:
                print(f"kept temp dir {path}")
            else:
                shutil.rmtree(path, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


CLEANUP = Cleanup()


def start(name: str, argv: list[str], logdir: Path, cwd: Path | None = None) -> Proc:
    """Start ``argv`` in its own session, logging to files in ``logdir``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    out_path, err_path = logdir / f"{slug}.out", logdir / f"{slug}.err"
    print(f"  starting {name}: {shlex.join(argv)}")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd or ROOT,
            start_new_session=True,
        )
    proc = Proc(name, popen, out_path, err_path)
    CLEANUP.add_proc(proc)
    return proc


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------


def ensure_tools() -> None:
    """Install wrk and nginx with apt-get if either is missing."""
    if shutil.which("wrk") and shutil.which("nginx"):
        return
    if not shutil.which("apt-get"):
        raise BenchError("wrk/nginx missing and apt-get not available; install them by hand")
    if os.geteuid() != 0:
        raise BenchError("wrk/nginx missing; as root: apt-get install wrk nginx-light")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    system_pid = Path("/run/nginx.pid")
    had_system_nginx = system_pid.exists()
    print("  installing wrk and nginx with apt-get ...")
    _apt(["apt-get", "update", "-q"], env)
    try:
        _apt(["apt-get", "install", "-y", "-q", "wrk", "nginx-light"], env)
    except BenchError:
        _apt(["apt-get", "install", "-y", "-q", "wrk", "nginx"], env)
    if not (shutil.which("wrk") and shutil.which("nginx")):
        raise BenchError("apt-get finished but wrk or nginx is still not on PATH")
    if not had_system_nginx and system_pid.exists():
        # The package may have started the distribution's nginx service; this
        # run installed it, so stop it (it is not used, ours has its own config).
        try:
            pid = int(system_pid.read_text().strip())
            os.kill(pid, signal.SIGQUIT)
            print(f"  stopped the system nginx (pid {pid}) that the package install started")
        except (OSError, ValueError):
            pass


def _apt(argv: list[str], env: dict[str, str]) -> None:
    res = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({res.returncode}):\n{res.stderr[-2000:]}")


def tool_version(argv: list[str]) -> str:
    """First line a tool prints for its version flag (stdout or stderr)."""
    res = subprocess.run(argv, capture_output=True, text=True)
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def cpu_count() -> int:
    """What ``nproc`` prints: CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------
# Data, nginx and polling
# --------------------------------------------------------------------------


def toml_str(value: str) -> str:
    """A TOML basic string (JSON escaping is valid TOML for these values)."""
    return json.dumps(value)


def nginx_missing_modules() -> set[str]:
    """Names of http modules this nginx was built without (for temp paths)."""
    res = subprocess.run(["nginx", "-V"], capture_output=True, text=True)
    return set(re.findall(r"--without-http_(\w+)_module", res.stdout + res.stderr))


def nginx_temp_paths(prefix: Path) -> list[str]:
    """nginx temp path lines under ``prefix``, for the modules this nginx was built with."""
    missing = nginx_missing_modules()
    temp_paths = [f"    client_body_temp_path {prefix}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if module not in missing:
            temp_paths.append(f"    {module}_temp_path {prefix}/{module};")
    return temp_paths


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str | None]:
    """One GET without following redirects: (status, Location header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location")
    finally:
        conn.close()


def wait_until(proc: Proc, check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``check`` until it is true; fail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise BenchError(
                f"{proc.name} exited with code {proc.popen.returncode} "
                f"while waiting for {what}\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: no {what} after {timeout:.0f} s\n{proc.log_tail()}")
        time.sleep(0.2)


def wait_ready(proc: Proc, port: int) -> None:
    """Poll ``GET /-/ready`` until it answers 200."""
    start_time = time.monotonic()
    wait_until(
        proc,
        lambda: http_get(port, "/-/ready", timeout=1.0)[0] == 200,
        f"200 from http://127.0.0.1:{port}/-/ready",
        READY_TIMEOUT,
    )
    print(f"  {proc.name} ready on port {port} after {time.monotonic() - start_time:.1f} s")


def wait_port(proc: Proc, port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""

    def accepts() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True

    wait_until(proc, accepts, f"listener on 127.0.0.1:{port}", timeout)


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------


@dataclass
class WrkResult:
    """Numbers parsed from one wrk run."""

    label: str
    system: str
    kind: str  # "hit" or "miss"
    url: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    round: int = 0  # 1-based round of its phase
    ratio_vs_nginx: float | None = None  # vs the nginx run of the same kind and round

    @property
    def bad_responses(self) -> int:
        """Responses that count as errors for this kind of run."""
        errors = sum(self.socket_errors.values())
        return errors + (self.non_2xx_3xx if self.kind == "hit" else 0)


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    """``'812.00us'``, ``'1.20ms'`` or ``'2.01s'`` in milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unrecognised wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(text: str, label: str, system: str, kind: str, url: str) -> WrkResult:
    """Requests/sec, p50/p99 (ms), request count and error counts from wrk's output."""

    def grab(pattern: str) -> str:
        match = re.search(pattern, text, re.MULTILINE)
        if not match:
            raise BenchError(f"could not find {pattern!r} in wrk output:\n{text}")
        return match.group(1)

    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        kinds = ("connect", "read", "write", "timeout")
        errors = dict(zip(kinds, map(int, sock.groups()), strict=True))
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        label=label,
        system=system,
        kind=kind,
        url=url,
        rps=float(grab(r"^Requests/sec:\s+([0-9.]+)")),
        p50_ms=to_ms(grab(r"^\s+50%\s+(\S+)")),
        p99_ms=to_ms(grab(r"^\s+99%\s+(\S+)")),
        requests=int(grab(r"^\s+(\d+) requests in ")),
        non_2xx_3xx=int(non.group(1)) if non else 0,
        socket_errors=errors,
    )


# What a desktop Firefox sends for a link opened from a page: the redirect budget
# (docs/architecture.md, "Budgets") must hold with heads this size (~700 bytes), not only

# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run_main(
    bench: Callable[[argparse.Namespace], dict[str, object]], args: argparse.Namespace
) -> int:
    """Run ``bench(args)``, write its report to ``args.json`` if given; the exit status."""
    CLEANUP.keep_dirs = getattr(args, "keep_tmp", False)
    atexit.register(CLEANUP.run)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        report = bench(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted, cleaning up", file=sys.stderr)
        return 130
    except subprocess.TimeoutExpired as exc:
        print(f"\nbench failed: {shlex.join(map(str, exc.cmd))} timed out", file=sys.stderr)
        return 1
    finally:
        CLEANUP.run()
