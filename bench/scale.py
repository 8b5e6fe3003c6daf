"""Scale benchmark: start-up, joining, memory and hand-edit propagation with many links.

`.venv/bin/python bench/scale.py --links 1000000 [--users 100] [--edited-links 100000]
[--json PATH] [--keep-tmp]` writes a data directory of `--links` redirect links over
`--users` users in a temp folder (the first user, whose file is edited, holding
`--edited-links` of them if given), then, as an operator would:

1. cold `trunk8 up` (first import): seconds until `/-/ready` and the last link served,
   and the resident memory (RSS) of the serving process and of its config-watcher child;
2. a hand edit of one link in the first user's file: seconds until it is served, and the
   CPU seconds the config-watcher child spent on it (from `/proc`, until a second after);
3. redirect latency while that file is re-parsed, idle first, then while the file is
   rewritten three times, two ways (skipped when wrk is missing): `wrk -t1 -c32
   --latency` on a hit, which saturates the machine (its p99 is mostly queueing: on 2
   cores wrk and the server already take both, so any other work lengthens the queue),
   and a paced load, `wrk -t1 -c4` whose connections each wait a millisecond after every
   answer (about 3,000 requests/s, far below capacity): with spare CPU its p99 shows
   what the re-parse itself costs a request; the watcher child's CPU seconds in each
   window are reported beside;
4. a redirector joining the running system (`trunk8 run --target redirector`): seconds
   until it is ready and serves the last link, and its RSS;
5. a warm restart of `trunk8 up` on the unchanged directory: seconds until ready.

Every started process is stopped (SIGTERM, then SIGKILL) and the temp folder removed.
Loops are bounded by timeouts; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, free_port, to_ms

START_TIMEOUT = 600.0


def link_counts(links: int, users: int, edited_links: int = 0) -> list[int]:
    """Links per user: the first (edited) user holds `edited_links` if given, the rest share."""
    if not edited_links:
        return [links // users] * users
    return [edited_links] + [(links - edited_links) // (users - 1)] * (users - 1)


def write_data(root: Path, links: int, users: int, edited_links: int = 0) -> tuple[str, str]:
    """The data directory; returns the last code and the user whose file is edited."""
    counts = link_counts(links, users, edited_links)
    names = [f"user{u:03d}" for u in range(users)]
    (root / "users").mkdir(parents=True)
    (root / "users" / "users.toml").write_text(
        "".join(
            f"[users.{name}]\nis_admin = {str(i == 0).lower()}\n" for i, name in enumerate(names)
        )
    )
    code = ""
    for u, name in enumerate(names):
        folder = root / "users" / name
        folder.mkdir()
        parts = []
        for i in range(counts[u]):
            code = f"u{u:03d}c{i:07d}"
            parts.append(
                f'[links.{code}]\ntype = "redirect"\nurl = "https://example.com/{name}/{i}?src=bench"\n'
            )
        (folder / "links.toml").write_text("".join(parts))
    return code, names[0]


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of one process so far (0 when it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in task.read_text().split()]
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def http(port: int, path: str) -> tuple[int, str | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.headers.get("Location")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location")
    except OSError:
        return 0, None


def wait_until(condition, timeout: float, what: str, interval: float = 0.01) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"scale: {what} not within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - started


class Processes:
    """Started processes, stopped at the end whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "trunk8"), *args],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env or os.environ.copy(),
        )  # fmt: skip
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def served(port: int, code: str, url: str) -> bool:
    return http(port, f"/{code}") == (302, url)


# A paced load: 4 connections, each waiting this long after every answer (wrk's `delay`).
PACED_CONNECTIONS = 4
PACED_DELAY_MS = 1


def wrk_p99(port: int, code: str, seconds: int, during, paced: Path | None = None) -> float | None:  # type: ignore[no-untyped-def]
    """p99 in ms of a wrk run on a hit while `during()` runs in a thread; None without wrk.

    Saturating (32 connections, each sending again at once), or paced by the wrk script
    `paced` (see `paced_script`).
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    worker = threading.Thread(target=during)
    load = ["-c32"] if paced is None else [f"-c{PACED_CONNECTIONS}", "-s", str(paced)]
    run = subprocess.Popen(
        [wrk, "-t1", *load, f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/{code}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    worker.start()
    out, _ = run.communicate(timeout=seconds + 30)
    worker.join()
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["99%"]:
            return to_ms(parts[1])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument(
        "--edited-links",
        type=int,
        default=0,
        help="links in the hand-edited file (the first user's; default links/users)",
    )
    parser.add_argument("--wrk-seconds", type=int, default=6)
    parser.add_argument("--json", help="write the figures as JSON here")
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument(
        "--watcher-in-process", action="store_true", help="pass it to `trunk8 up` (to compare)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trunk8-scale-"))
    data, logs = tmp / "data", tmp / "logs"
    logs.mkdir()
    processes = Processes(logs)
    figures: dict[str, object] = {"links": args.links, "users": args.users}
    try:
        started = time.monotonic()
        last, edited_user = write_data(data, args.links, args.users, args.edited_links)
        took = time.monotonic() - started
        print(f"wrote {args.links} links over {args.users} users in {took:.1f} s")
        counts = link_counts(args.links, args.users, args.edited_links)
        last_user = f"user{args.users - 1:03d}"
        last_url = f"https://example.com/{last_user}/{counts[-1] - 1}?src=bench"
        figures["edited_file_links"] = counts[0]
        port = free_port()
        up_args: tuple[str, ...] = ("up", "--data", str(data), "--port", str(port))
        if args.watcher_in_process:
            up_args += ("--watcher-in-process",)

        # 1. cold start
        up = processes.start("up-cold", *up_args)
        cold = wait_until(
            lambda: http(port, "/-/ready")[0] == 200 and served(port, last, last_url),
            START_TIMEOUT,
            "cold start",
        )
        watcher = [p for p in children(up.pid) if "config-watcher" in cmdline(p)]
        watcher_pid = watcher[0] if watcher else None
        figures["cold_start_s"] = round(cold, 2)
        figures["serving_rss_mb"] = round(rss_mb(up.pid), 1)
        figures["watcher_rss_mb"] = round(rss_mb(watcher[0]), 1) if watcher else None
        print(
            f"cold start: ready and serving in {cold:.1f} s; RSS serving "
            f"{figures['serving_rss_mb']} MB, watcher {figures['watcher_rss_mb']} MB"
        )

        # 2. hand edit of one link in a file of links/users links
        edited = data / "users" / edited_user / "links.toml"
        text = edited.read_text()
        first_code = f"u000c{0:07d}"
        new_url = "https://edited.example/1"
        cpu_before = cpu_seconds(watcher_pid)
        edited.write_text(
            text.replace(f"https://example.com/{edited_user}/0?src=bench", new_url, 1)
        )
        edit = wait_until(lambda: served(port, first_code, new_url), 60, "hand edit")
        figures["hand_edit_s"] = round(edit, 3)
        time.sleep(1.0)  # what the watcher does right after publishing counts too
        edit_cpu = cpu_seconds(watcher_pid) - cpu_before
        figures["hand_edit_watcher_cpu_s"] = round(edit_cpu, 3)
        print(
            f"hand edit in a {counts[0]}-link file served after {edit:.3f} s "
            f"(the watcher's CPU for it: {edit_cpu:.3f} s)"
        )

        # 3. redirect p99 idle, then while the file is re-parsed (rewritten three times),
        # under a saturating load, then under a paced one
        rewrites = itertools.count()

        def reparse(edits: list[float]) -> None:
            for _ in range(3):
                url = f"https://edited.example/r{next(rewrites)}"
                edited.write_text(
                    text.replace(f"https://example.com/{edited_user}/0?src=bench", url, 1)
                )
                edits.append(
                    wait_until(lambda url=url: served(port, first_code, url), 60, "re-parse")
                )

        paced = tmp / "paced.lua"
        paced.write_text(f"function delay() return {PACED_DELAY_MS} end\n")
        for label, script in (("", None), ("paced_", paced)):
            edits: list[float] = []
            idle = wrk_p99(port, last, args.wrk_seconds, lambda: None, script)
            cpu_before = cpu_seconds(watcher_pid)
            busy = wrk_p99(port, last, args.wrk_seconds, functools.partial(reparse, edits), script)
            window_cpu = cpu_seconds(watcher_pid) - cpu_before
            figures[f"{label}watcher_cpu_during_reparse_s"] = round(window_cpu, 3)
            figures[f"{label}p99_idle_ms"] = idle
            figures[f"{label}p99_during_reparse_ms"] = busy
            figures[f"{label}hand_edits_under_load_s"] = [round(e, 3) for e in edits]
            print(
                f"redirect p99 ({'paced' if script else 'saturating'} load) idle {idle} ms, "
                f"while re-parsing that file {busy} ms; edits served after "
                f"{figures[f'{label}hand_edits_under_load_s']} s; the watcher's CPU in "
                f"that window {window_cpu:.2f} s"
            )

        # 4. a redirector joining
        nats_url = (data / ".trunk8" / "nats.url").read_text().strip()
        join_port = free_port()
        env = {**os.environ, "TRUNK8_NATS_URL": nats_url}
        joined_at = time.monotonic()
        redirector = processes.start(
            "redirector",
            "run",
            "--target",
            "redirector",
            "--data",
            str(data),
            "--port",
            str(join_port),
            env=env,
        )
        join = wait_until(
            lambda: http(join_port, "/-/ready")[0] == 200 and served(join_port, last, last_url),
            START_TIMEOUT,
            "joining redirector",
        )
        del joined_at
        figures["join_s"] = round(join, 2)
        figures["join_rss_mb"] = round(rss_mb(redirector.pid), 1)
        print(f"redirector joined and serving in {join:.2f} s; RSS {figures['join_rss_mb']} MB")
        processes.stop(redirector)

        # 5. warm restart
        processes.stop(up)
        up = processes.start("up-warm", *up_args)
        warm = wait_until(
            lambda: http(port, "/-/ready")[0] == 200 and served(port, last, last_url),
            START_TIMEOUT,
            "warm restart",
        )
        figures["warm_start_s"] = round(warm, 2)
        figures["serving_rss_warm_mb"] = round(rss_mb(up.pid), 1)
        print(
            f"warm restart: ready and serving in {warm:.1f} s; "
            f"RSS serving {figures['serving_rss_warm_mb']} MB"
        )
    finally:
        processes.stop_all()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
