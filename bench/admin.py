"""Admin benchmark: the create-link round trip and `/links`, with 10,000 links for one user.

What it does, in order:

1. writes a throw-away data directory whose `admin` account owns ``--links`` redirect
   links (10,000) in one ``links.toml``, as Trunk8 writes them;
2. starts ``trunk8 up`` (all-in-one, embedded NATS) with a known admin password, waits for
   ``/-/ready`` and for the last link to be served;
3. signs in once (password hashing is not part of any figure) and keeps the session;
4. **create round trip**: ``--creates`` times, POST ``/add`` (a new redirect link, the
   form a script would send) and then GET ``/<code>`` until it answers its 302; the time
   from sending the POST to that 302 is one sample (after ``--warmup`` unmeasured ones).
   The file grows by one link per sample;
5. **/links**: ``--pages`` GETs of the admin's list over all the links (random pages, and
   every fourth one searching or sorting), each timed to its last byte;
6. prints p50, p99 and max of both, the admin's own `save_to_served` histogram (how much of
   a round trip is the reload and the mirror) and the budgets: create round trip p99 under
   100 ms, a `/links` page p99 under 200 ms.

Every process it started is stopped and the temp dir removed on exit. A missed budget
still exits 0 (this is a measurement); anything that could not run exits non-zero.

Usage: ``.venv/bin/python bench/admin.py [--quick] [--links N] [--creates N] [--pages N]
[--json PATH]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shlex
import statistics
import sys
import tempfile
import time
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CLEANUP,
    ROOT,
    BenchError,
    cpu_count,
    free_port,
    http_get,
    load_average,
    run_main,
    start,
    toml_str,
    wait_ready,
    wait_until,
)

CREATE_P99_MAX_MS = 100.0
LINKS_PAGE_P99_MAX_MS = 200.0
DEFAULT_LINKS, DEFAULT_CREATES, DEFAULT_PAGES, DEFAULT_WARMUP = 10_000, 300, 300, 20
QUICK = (10_000, 60, 60, 5)
PASSWORD = "bench-admin-password"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def write_data_dir(data: Path, count: int) -> None:
    """An admin account owning `count` redirect links, in Trunk8's layout."""
    (data / "users" / "admin").mkdir(parents=True)
    (data / "config").mkdir()
    (data / "users" / "users.toml").write_text(
        '[users.admin]\nis_admin = true\ndisplay_name = "Administrator"\n'
    )
    body = ["[links]", ""]
    for i in range(count):
        url = toml_str(f"https://example.com/page/{i}")
        body += [f"[links.c{i:06d}]", 'type = "redirect"', f"url = {url}", ""]
    (data / "users" / "admin" / "links.toml").write_text("\n".join(body))
    (data / "config" / "config.toml").write_text('[app]\ntheme = "cerulean"\n')


class AdminClient:
    """One browser-like keep-alive connection with the session cookie and CSRF token."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        """One request, no redirects followed; keeps cookies and the page's CSRF token."""
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode({"csrf_token": self.csrf, **form})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        for value in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(value).items():
                self.cookies[name] = morsel.value
        if found := CSRF.search(text):
            self.csrf = found.group(1)
        return response.status, dict(response.headers), text

    def sign_in(self) -> None:
        """Sign in in admin-password mode (the hashing is not measured)."""
        self.request("GET", "/auth/login")
        status, headers, _ = self.request(
            "POST", "/auth/login", {"username": "", "password": PASSWORD}
        )
        if status != 302 or headers.get("Location") != "/":
            raise BenchError(f"sign-in answered {status} {headers.get('Location')}")
        self.request("GET", "/add")  # the CSRF token of the signed-in session


def create_round_trip(client: AdminClient, code: str) -> tuple[float, int]:
    """POST /add, then GET /<code> until its 302: (seconds, GETs needed)."""
    url = f"https://example.org/new/{code}"
    started = time.perf_counter()
    status, _, body = client.request(
        "POST", "/add", {"link_type": "redirect", "url": url, "short_code": code}
    )
    if status != 200 or "Link Created Successfully!" not in body:
        raise BenchError(f"POST /add {code}: {status} {body[:300]!r}")
    tries = 0
    while True:
        tries += 1
        answer = http_get(client.port, f"/{code}", timeout=5)
        if answer == (302, url):
            return time.perf_counter() - started, tries
        if time.perf_counter() - started > 10:
            raise BenchError(f"/{code} not served 10 s after its POST (last answer {answer})")


def links_page(client: AdminClient, path: str) -> float:
    """Seconds to GET one /links page to its last byte."""
    started = time.perf_counter()
    status, _, body = client.request("GET", path)
    elapsed = time.perf_counter() - started
    if status != 200 or 'id="links-table"' not in body:
        raise BenchError(f"GET {path}: {status}")
    return elapsed


def links_paths(count: int, total: int, rng: random.Random) -> list[str]:
    """Random pages of the full list; every fourth one searches or sorts too."""
    pages = max(1, total // 50)
    variants = ["", "&sort=code&dir=desc", "&q=page%2F9", "&sort=target", "&type=redirect"]
    return [
        f"/links?page={rng.randint(1, pages)}" + (rng.choice(variants[1:]) if i % 4 == 3 else "")
        for i in range(count)
    ]


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank, in milliseconds."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples) * 1000,
    }


def save_to_served(port: int) -> dict[str, float]:
    """The admin's `trunk8_admin_save_to_served_seconds` histogram: count and mean (ms)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/-/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    values = {
        name: float(value)
        for name, value in re.findall(
            r"^trunk8_admin_save_to_served_seconds_(sum|count) (\S+)", text, re.M
        )
    }
    count = values.get("count", 0.0)
    return {"count": count, "mean_ms": values.get("sum", 0.0) / count * 1000 if count else 0.0}


def bench(args: argparse.Namespace) -> dict[str, object]:
    """Set everything up, measure, report."""
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"nproc: {cpu_count()}, load {load_average()}")
    tmp = Path(tempfile.mkdtemp(prefix="trunk8-bench-admin-"))
    CLEANUP.add_dir(tmp)
    logs = tmp / "logs"
    logs.mkdir()
    data = tmp / "data"
    write_data_dir(data, args.links)
    size_mb = (data / "users" / "admin" / "links.toml").stat().st_size / 1e6
    print(f"  {args.links} links in users/admin/links.toml ({size_mb:.1f} MB)")
    port = free_port()
    os.environ.update(TRUNK8_ADMIN_PASSWORD=PASSWORD, TRUNK8_SECRET_KEY="bench-secret")
    up = start(
        "trunk8 up",
        [str(Path(args.venv) / "bin" / "trunk8"), "up", "--data", str(data), "--port", str(port)],
        logs,
        cwd=tmp,  # no .env of the checkout
    )
    wait_ready(up, port)
    last = f"/c{args.links - 1:06d}"
    wait_until(up, lambda: http_get(port, last)[0] == 302, f"302 from {last}", 60)
    client = AdminClient(port)
    client.sign_in()

    print(f"  create round trip: {args.warmup} warm-up, then {args.creates} measured")
    for n in range(args.warmup):
        create_round_trip(client, f"warm{n:04d}")
    creates: list[float] = []
    extra_gets = 0
    for n in range(args.creates):
        seconds, tries = create_round_trip(client, f"new{n:05d}")
        creates.append(seconds)
        extra_gets += tries - 1
    served = save_to_served(port)

    rng = random.Random(8)
    paths = links_paths(args.pages, args.links + args.warmup + args.creates, rng)
    print(f"  /links: {len(paths)} pages")
    for path in paths[: args.warmup]:
        links_page(client, path)
    pages = [links_page(client, path) for path in paths]
    if not up.alive():
        raise BenchError(f"trunk8 up died during the run\n{up.log_tail()}")

    create_stats, page_stats = summary(creates), summary(pages)
    print()
    print(f"{'measure':<34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, stats in (
        ("create round trip (POST to 302)", create_stats),
        ("/links page", page_stats),
    ):
        print(
            f"{label:<34} {stats['n']:>5.0f} {stats['p50_ms']:>8.1f} "
            f"{stats['p99_ms']:>8.1f} {stats['max_ms']:>8.1f}"
        )
    print(
        f"  of a save: reload + mirror (trunk8_admin_save_to_served_seconds) mean "
        f"{served['mean_ms']:.1f} ms over {served['count']:.0f} saves; "
        f"GETs that found the link not yet served: {extra_gets}"
    )
    budgets = [
        (
            f"create round trip p99 < {CREATE_P99_MAX_MS:g} ms",
            create_stats["p99_ms"] < CREATE_P99_MAX_MS,
        ),
        (
            f"/links page p99 < {LINKS_PAGE_P99_MAX_MS:g} ms",
            page_stats["p99_ms"] < LINKS_PAGE_P99_MAX_MS,
        ),
        ("every link served when its page answered", extra_gets == 0),
    ]
    print()
    for name, ok in budgets:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "nproc": cpu_count(),
        "links": args.links,
        "links_toml_mb": size_mb,
        "create_round_trip": create_stats,
        "links_page": page_stats,
        "save_to_served": served,
        "not_yet_served_gets": extra_gets,
        "budgets": [{"budget": name, "pass": ok} for name, ok in budgets],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, help=f"existing links of the user ({DEFAULT_LINKS})")
    parser.add_argument("--creates", type=int, help=f"measured creates ({DEFAULT_CREATES})")
    parser.add_argument("--pages", type=int, help=f"measured /links pages ({DEFAULT_PAGES})")
    parser.add_argument("--warmup", type=int, help=f"unmeasured of each ({DEFAULT_WARMUP})")
    parser.add_argument("--quick", action="store_true", help="60 creates and pages, 5 warm-ups")
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="venv with trunk8")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    defaults = (
        QUICK if args.quick else (DEFAULT_LINKS, DEFAULT_CREATES, DEFAULT_PAGES, DEFAULT_WARMUP)
    )
    for name, default in zip(("links", "creates", "pages", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.links < 1 or args.creates < 1 or args.pages < 1 or args.warmup < 0:
        parser.error("--links, --creates and --pages must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    status = run_main(bench, args)
    print(f"took {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
