"""Download and markdown benchmark: Trunk8's files service against nginx ``sendfile``.

What it does, in order:

1. makes sure ``wrk`` and ``nginx`` are installed (``apt-get`` if not), through the
   helpers of ``bench/common.py``;
2. writes a throw-away data directory with a 1 MB and a 100 MB file link and a
   markdown link (a ~12 KB page with headings, tables, lists and code), and an nginx
   config serving the same two files from the same folder with ``sendfile on``;
3. starts its own nginx (one worker, no access log) and ``trunk8 up`` (all-in-one,
   embedded NATS), and checks each answer once by hand (sizes, 200s, a rendered page);
4. warms every URL up once, then measures ``--rounds`` rounds of: nginx 1 MB, Trunk8
   1 MB, nginx 100 MB, Trunk8 100 MB, Trunk8 markdown page (odd rounds nginx first in
   each pair, even rounds Trunk8 first) with ``wrk --latency``;
5. prints medians over the rounds and the median of per-round ratios, then the budgets:
   each download at least 0.8x nginx's throughput, the cached markdown page's p99 under
   5 ms at 32 connections.

Every process it started is stopped and the temp dir removed on exit. A missed budget
still exits 0 (this is a measurement); anything that could not run exits non-zero.

Usage: ``.venv/bin/python bench/downloads.py [--quick] [--duration S] [--rounds N]
[--json PATH]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CLEANUP,
    ROOT,
    BenchError,
    WrkResult,
    cpu_count,
    ensure_tools,
    free_port,
    load_average,
    nginx_temp_paths,
    parse_wrk,
    run_main,
    start,
    tool_version,
    wait_port,
    wait_ready,
)

SMALL, LARGE = 1024 * 1024, 100 * 1024 * 1024
DOWNLOAD_VS_NGINX_MIN = 0.8
MARKDOWN_P99_MAX_MS = 5.0
DEFAULT_DURATION, DEFAULT_WARMUP, DEFAULT_ROUNDS = 5, 2, 3
QUICK = (2, 1, 1)
# Fewer connections for 100 MB bodies: 32 of them would only queue behind each other.
LARGE_CONNECTIONS = 4

SMALL_NAME, LARGE_NAME, PAGE_NAME = "file-1mb.bin", "file-100mb.bin", "page.md"


def markdown_page() -> str:
    """A realistic page: headings, a table, task lists, code, about 12 KB."""
    parts = ["# Release notes\n\nSome *emphasis*, **strong** text and `inline code`.\n"]
    for n in range(1, 13):
        parts.append(f"\n## Section {n}\n\nA paragraph with a [link](https://example.com/{n}).\n")
        parts.append("\n| name | value | note |\n|:--|--:|---|\n")
        parts += [f"| row {i} | {i * n} | ~~old~~ new |\n" for i in range(4)]
        parts.append("\n- [x] done\n- [ ] todo\n\n```python\n")
        parts.append(f"def section_{n}(x: int) -> int:\n    return x * {n}  # comment\n```\n")
    return "".join(parts)


def write_data_dir(data: Path) -> Path:
    """The data directory (admin only) with the three links; returns the assets folder."""
    assets = data / "users" / "admin" / "assets"
    assets.mkdir(parents=True)
    (data / "users" / "users.toml").write_text(
        '[users.admin]\nis_admin = true\ndisplay_name = "Administrator"\n'
    )
    (data / "users" / "admin" / "links.toml").write_text(
        "[links]\n"
        f'f1m = {{ type = "file", path = "{SMALL_NAME}" }}\n'
        f'f100m = {{ type = "file", path = "{LARGE_NAME}" }}\n'
        f'md = {{ type = "markdown", path = "{PAGE_NAME}" }}\n'
    )
    for name, size in ((SMALL_NAME, SMALL), (LARGE_NAME, LARGE)):
        with open(assets / name, "wb") as out:
            for _ in range(size // SMALL):
                out.write(os.urandom(SMALL))
    (assets / PAGE_NAME).write_text(markdown_page())
    return assets


def write_nginx_conf(prefix: Path, port: int, assets: Path) -> Path:
    """One worker serving the assets folder with sendfile, as a download server would."""
    conf = "\n".join(
        [
            "daemon off;",
            "worker_processes 1;",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/error.log warn;",
            "events { worker_connections 1024; }",
            "http {",
            "    access_log off;",
            "    sendfile on;",
            "    tcp_nopush on;",
            "    keepalive_requests 1000000;",
            "    default_type application/octet-stream;",
            *nginx_temp_paths(prefix),
            "    server {",
            f"        listen 127.0.0.1:{port};",
            f"        root {assets};",
            "    }",
            "}",
            "",
        ]
    )
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def get(port: int, path: str) -> tuple[int, bytes]:
    """One GET: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sanity_check(trunk8: int, nginx: int) -> None:
    """Both servers answer the files whole; the markdown page is rendered."""
    deadline = time.monotonic() + 15
    while get(trunk8, "/f1m")[0] != 200:  # links reach the files service through NATS
        if time.monotonic() > deadline:
            raise BenchError("trunk8 never served /f1m")
        time.sleep(0.2)
    for port, path, size in (
        (trunk8, "/f1m", SMALL),
        (trunk8, "/f100m", LARGE),
        (nginx, f"/{SMALL_NAME}", SMALL),
        (nginx, f"/{LARGE_NAME}", LARGE),
    ):
        status, body = get(port, path)
        if status != 200 or len(body) != size:
            raise BenchError(f"port {port} {path}: {status}, {len(body)} bytes (want {size})")
    status, body = get(trunk8, "/md")
    if status != 200 or b"<table" not in body:
        raise BenchError(f"/md answered {status} without a rendered table")
    print("  sanity check ok: both servers send 1 MB and 100 MB whole; /md is rendered")


@dataclass
class Target:
    """One URL measured over the rounds."""

    label: str
    url: str
    connections: int
    runs: list[WrkResult] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.runs) if self.runs else 0.0


def run_wrk(target: Target, seconds: int, verbose: bool) -> WrkResult:
    """One wrk run on a target."""
    argv = ["wrk", "-t1", f"-c{target.connections}", f"-d{seconds}s", "--latency", target.url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed:\n{done.stdout}{done.stderr}")
    if verbose:
        print(done.stdout)
    return parse_wrk(done.stdout, target.label, "", "hit", target.url)


def measure(targets: list[tuple[Target, Target | None]], args: argparse.Namespace) -> None:
    """Warm-up, then rounds of neighbouring runs (nginx, Trunk8) per pair."""
    if args.warmup:
        for pair in targets:
            for target in pair:
                if target is not None:
                    run_wrk(target, args.warmup, False)
    for rnd in range(1, args.rounds + 1):
        print(f"  round {rnd}/{args.rounds}" + (" (Trunk8 first)" if rnd % 2 == 0 else ""))
        for reference, own in targets:
            order = [reference, own] if rnd % 2 else [own, reference]
            for target in order:
                if target is None:
                    continue
                result = run_wrk(target, args.duration, args.verbose)
                result.round = rnd
                target.runs.append(result)
                print(
                    f"    {target.label:<28} {result.rps:>9.1f} req/s  p50 {result.p50_ms:.3f} ms"
                    f"  p99 {result.p99_ms:.3f} ms  errors {result.bad_responses}"
                )
            if own is not None:
                ratio = own.runs[-1].rps / reference.runs[-1].rps if reference.runs[-1].rps else 0
                own.ratios.append(ratio)
                print(f"    -> {own.label}: {ratio:.2f}x nginx")


def bench(args: argparse.Namespace) -> dict[str, object]:
    """Set everything up, measure, report."""
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"nproc: {cpu_count()}, load {load_average()}")
    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="trunk8-bench-downloads-"))
    CLEANUP.add_dir(tmp)
    tmp.chmod(0o755)  # nginx's worker (nobody) reads the assets under it
    logs = tmp / "logs"
    logs.mkdir()
    data = tmp / "data"
    assets = write_data_dir(data)
    nginx_port, trunk8_port = free_port(), free_port()
    conf = write_nginx_conf(tmp, nginx_port, assets)
    nginx = start("nginx", ["nginx", "-p", str(tmp), "-c", str(conf)], logs)
    wait_port(nginx, nginx_port)
    trunk8_bin = Path(args.venv) / "bin" / "trunk8"
    up = start(
        "trunk8 up",
        [str(trunk8_bin), "up", "--data", str(data), "--port", str(trunk8_port)],
        logs,
    )
    wait_ready(up, trunk8_port)
    sanity_check(trunk8_port, nginx_port)

    def url(port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"

    c = args.connections
    pairs: list[tuple[Target, Target | None]] = [
        (
            Target("nginx 1 MB", url(nginx_port, f"/{SMALL_NAME}"), c),
            Target("trunk8 1 MB", url(trunk8_port, "/f1m"), c),
        ),
        (
            Target("nginx 100 MB", url(nginx_port, f"/{LARGE_NAME}"), LARGE_CONNECTIONS),
            Target("trunk8 100 MB", url(trunk8_port, "/f100m"), LARGE_CONNECTIONS),
        ),
        (Target("trunk8 markdown (cached)", url(trunk8_port, "/md"), c), None),
    ]
    measure(pairs, args)
    for proc in (up, nginx):
        if not proc.alive():
            raise BenchError(f"{proc.name} died during the run\n{proc.log_tail()}")

    print()
    print(f"{'target':<28} {'req/s':>9} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>16}")
    sizes = {"1 MB": SMALL, "100 MB": LARGE, "markdown": 0}
    rows = []
    for pair in pairs:
        for target in pair:
            if target is None:
                continue
            size = next(v for k, v in sizes.items() if k in target.label)
            rps = target.median("rps")
            ratio = statistics.median(target.ratios) if target.ratios else None
            spread = (
                f" ({min(target.ratios):.2f}-{max(target.ratios):.2f})" if target.ratios else ""
            )
            shown = f"{ratio:.2f}x{spread}" if ratio is not None else "-"
            print(
                f"{target.label:<28} {rps:>9.1f} {rps * size / 1e6:>8.0f} "
                f"{target.median('p50_ms'):>8.3f} {target.median('p99_ms'):>8.3f} {shown:>16}"
            )
            rows.append(
                {
                    "label": target.label,
                    "rps": rps,
                    "mb_per_s": rps * size / 1e6,
                    "p50_ms": target.median("p50_ms"),
                    "p99_ms": target.median("p99_ms"),
                    "ratio_vs_nginx": ratio,
                    "ratios": target.ratios,
                    "errors": sum(r.bad_responses for r in target.runs),
                    "runs": [asdict(r) for r in target.runs],
                }
            )
    budgets = []
    for row in rows:
        if row["ratio_vs_nginx"] is not None:
            ok = float(row["ratio_vs_nginx"]) >= DOWNLOAD_VS_NGINX_MIN  # type: ignore[arg-type]
            budgets.append((f"{row['label']} >= {DOWNLOAD_VS_NGINX_MIN}x nginx", ok))
        if "markdown" in str(row["label"]):
            ok = float(row["p99_ms"]) < MARKDOWN_P99_MAX_MS  # type: ignore[arg-type]
            budgets.append((f"markdown p99 < {MARKDOWN_P99_MAX_MS:g} ms at {c} connections", ok))
        if row["errors"]:
            budgets.append((f"{row['label']} without errors", False))
    print()
    for name, ok in budgets:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "nproc": cpu_count(),
        "wrk": tool_version(["wrk", "-v"]),
        "nginx": tool_version(["nginx", "-v"]),
        "results": rows,
        "budgets": [{"budget": name, "pass": ok} for name, ok in budgets],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, help=f"seconds per run ({DEFAULT_DURATION})")
    parser.add_argument("--warmup", type=int, help=f"warm-up seconds per URL ({DEFAULT_WARMUP})")
    parser.add_argument("--rounds", type=int, help=f"measured rounds ({DEFAULT_ROUNDS})")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-ups, 1 round")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="venv with trunk8")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="print raw wrk output")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else (DEFAULT_DURATION, DEFAULT_WARMUP, DEFAULT_ROUNDS)
    for name, default in zip(("duration", "warmup", "rounds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
