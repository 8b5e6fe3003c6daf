"""Redirect benchmark: Trunk8 against a plain nginx ``map`` + ``return 302``.

What it does, in order:

1. makes sure ``wrk`` and ``nginx`` are installed (``apt-get`` if not);
2. writes a throw-away Trunk8 data directory with 10,000 redirect links
   spread over 11 users, plus an nginx config that maps the same 10,000
   paths to the same URLs;
3. starts its own nginx (one worker, or ``--workers N``) and, one after the other, two Trunk8
   layouts: ``trunk8 up`` (all-in-one, embedded NATS) and a redirector
   running alone next to a config-watcher and a separate ``nats-server``;
4. checks each server once by hand (hit -> 302 + Location, miss -> 404),
   warms every URL up once, then measures ``--rounds`` rounds of nginx hit,
   layout hit, nginx miss, layout miss with ``wrk --latency`` (odd rounds
   nginx first, even rounds the layout first);
5. prints medians over the rounds, the median of the per-round ratios with
   their min-max, and the PASS/FAIL lines of the budgets (hit >= 0.9x nginx,
   p99 < 2 ms, miss within 10 % of hit), judged on the medians.

Every process it started is stopped and every temp dir removed on exit,
including after errors and Ctrl-C. A failed budget still exits 0 (this is a
measurement); anything that could not run exits non-zero.

Usage: ``.venv/bin/python bench/redirect.py [--quick] [--duration S] [--rounds N]
[--json PATH] [--system all|all-in-one|redirector|none] [--workers N]`` (see ``--help``).
``--workers N`` runs nginx with ``worker_processes N`` and Trunk8 with ``--workers N``.
``--baseline VENV --system all-in-one`` also runs the ``trunk8 up`` of another venv (say,
main's checkout) on a copy of the data and measures it in the same rounds, so a change is
compared with what it replaces and with nginx side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
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
    Proc,
    WrkResult,
    cpu_count,
    ensure_tools,
    free_port,
    http_get,
    load_average,
    nginx_temp_paths,
    parse_wrk,
    run_main,
    start,
    toml_str,
    tool_version,
    wait_port,
    wait_ready,
)

VENV_BIN = ROOT / ".venv" / "bin"  # --venv changes it

USERS = ["admin"] + [f"user{i:02d}" for i in range(1, 11)]
MISS_CODE = "nosuchcode1"
PROPAGATION_TIMEOUT = 15.0
BUSY_LOAD = 0.5  # 1-min load average above which the figures are flagged as noisy

# Measuring defaults: seconds per run, warm-up seconds per URL, rounds per phase.
DEFAULT_DURATION, DEFAULT_WARMUP, DEFAULT_ROUNDS = 5, 2, 5
QUICK = (2, 1, 2)  # --quick: the same three for a smoke test

# Budgets (see the module docstring).
HIT_VS_NGINX_MIN = 0.9
P99_MAX_MS = 2.0
MISS_VS_HIT_TOLERANCE = 0.10
BASELINE_TAG = "baseline"  # the label of `--baseline`'s layout

INTERLEAVING_NOTE = (
    "Order: nginx runs all the time; for each Trunk8 layout, once it is up and "
    "idle, every URL is warmed up once, then each round measures nginx hit, "
    "layout hit, nginx miss, layout miss (odd rounds nginx first, even rounds "
    "the layout first, so drift favours neither side). A per-round ratio "
    "compares two neighbouring runs of the same round; the headline ratio is "
    "the median of the per-round ratios, req/s, p50 and p99 are medians over "
    "the rounds, and the budgets are judged on these medians."
)
CPU_NOTE = (
    "wrk and the server under test share the machine's cores; nothing is "
    "pinned, so absolute numbers include wrk's own CPU use."
)


# --------------------------------------------------------------------------
# Data and configs
# --------------------------------------------------------------------------


def make_links(count: int) -> dict[str, list[tuple[str, str]]]:
    """``count`` (code, url) pairs in contiguous blocks, one block per user."""
    per_user, extra = divmod(count, len(USERS))
    links: dict[str, list[tuple[str, str]]] = {}
    index = 0
    for n, user in enumerate(USERS):
        size = per_user + (1 if n < extra else 0)
        links[user] = [
            (f"c{i:06d}", f"https://example.com/page/{i}") for i in range(index, index + size)
        ]
        index += size
    return links


def write_data_dir(data: Path, links: dict[str, list[tuple[str, str]]]) -> None:
    """Write users, their links and the app config in Trunk8's layout."""
    users_dir = data / "users"
    users_dir.mkdir(parents=True)
    lines: list[str] = []
    for n, user in enumerate(USERS):
        admin = user == "admin"
        lines += [
            f"[users.{user}]",
            f"is_admin = {'true' if admin else 'false'}",
            f"display_name = {toml_str('Administrator' if admin else f'User {n:02d}')}",
            f"created_at = {toml_str(f'2025-01-{1 + n:02d}T09:00:00')}",
            "",
        ]
    (users_dir / "users.toml").write_text("\n".join(lines))
    for user, pairs in links.items():
        (users_dir / user).mkdir()
        body = ["[links]", ""]
        for code, url in pairs:
            body += [f"[links.{code}]", 'type = "redirect"', f"url = {toml_str(url)}", ""]
        (users_dir / user / "links.toml").write_text("\n".join(body))
    config_dir = data / "config"
    config_dir.mkdir()
    (config_dir / "config.toml").write_text(
        "[app]\n"
        'theme = "cerulean"\n'
        'markdown_theme = "cerulean"\n'
        "max_file_size_mb = 100\n"
        "\n"
        "[session]\n"
        "permanent_lifetime_days = 30\n"
    )


def write_nginx_conf(
    prefix: Path, port: int, links: dict[str, list[tuple[str, str]]], workers: int = 1
) -> Path:
    """An nginx config: `workers` workers, a map of every link, 302 or 404."""
    entries = [f"        /{code} {url};" for pairs in links.values() for code, url in pairs]
    conf = "\n".join(
        [
            "daemon off;",
            "master_process on;",
            f"worker_processes {workers};",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/error.log warn;",
            "events { worker_connections 1024; }",
            "http {",
            "    access_log off;",
            "    keepalive_requests 1000000;",
            "    keepalive_timeout 75s;",
            "    map_hash_max_size 65536;",
            "    map_hash_bucket_size 128;",
            *nginx_temp_paths(prefix),
            "    map $uri $target {",
            '        default "";',
            *entries,
            "    }",
            "    server {",
            f"        listen 127.0.0.1:{port};",
            "        server_name _;",
            "        location / {",
            "            if ($target) { return 302 $target; }",
            "            return 404;",
            "        }",
            "    }",
            "}",
            "",
        ]
    )
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


# --------------------------------------------------------------------------
# Readiness and sanity checks
# --------------------------------------------------------------------------


def sanity_check(
    name: str, proc: Proc, port: int, hit: tuple[str, str], wait_for_data: bool = True
) -> None:
    """Hit must answer 302 + expected Location, miss must answer 404.

    Links reach a redirector asynchronously (through NATS), so a wrong hit
    answer is retried for a few seconds after readiness; the delay is shown.
    """
    code, url = hit
    deadline = time.monotonic() + (PROPAGATION_TIMEOUT if wait_for_data else 0.0)
    started = time.monotonic()
    while True:
        if not proc.alive():
            raise BenchError(f"{proc.name} died during the sanity check\n{proc.log_tail()}")
        status, location = http_get(port, f"/{code}")
        if status == 302 and location == url:
            break
        if time.monotonic() > deadline:
            raise BenchError(
                f"{name}: GET /{code} answered {status} Location={location!r}, "
                f"expected 302 Location={url!r}\n{proc.log_tail()}"
            )
        time.sleep(0.2)
    waited = time.monotonic() - started
    if waited > 0.5:
        print(f"  note: {name} answered the hit correctly only {waited:.1f} s after /-/ready")
    status, location = http_get(port, f"/{MISS_CODE}")
    if status != 404:
        raise BenchError(
            f"{name}: GET /{MISS_CODE} answered {status} Location={location!r}, "
            f"expected 404\n{proc.log_tail()}"
        )
    print(f"  {name} sanity check ok: /{code} -> 302 {url}, /{MISS_CODE} -> 404")


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------


def median(values: list[float]) -> float:
    """The median, or 0.0 for no values."""
    return statistics.median(values) if values else 0.0


@dataclass
class Target:
    """One URL of one server in one phase (e.g. 'all-in-one hit'), over all rounds."""

    label: str
    system: str
    kind: str  # "hit" or "miss"
    url: str
    guard: Proc  # the process that must stay alive while this URL is measured
    runs: list[WrkResult] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return median([r.rps for r in self.runs])

    @property
    def p50_ms(self) -> float:
        return median([r.p50_ms for r in self.runs])

    @property
    def p99_ms(self) -> float:
        return median([r.p99_ms for r in self.runs])

    @property
    def ratios(self) -> list[float]:
        """Per-round ratios to nginx (empty for nginx itself)."""
        return [r.ratio_vs_nginx for r in self.runs if r.ratio_vs_nginx is not None]

    @property
    def ratio_vs_nginx(self) -> float | None:
        """Median of the per-round ratios: the headline ratio."""
        return median(self.ratios) if self.ratios else None

    @property
    def non_2xx_3xx(self) -> int:
        return sum(r.non_2xx_3xx for r in self.runs)

    @property
    def socket_errors(self) -> dict[str, int]:
        """Socket errors summed over the rounds, only the kinds that occurred."""
        total: dict[str, int] = {}
        for r in self.runs:
            for kind, n in r.socket_errors.items():
                if n:
                    total[kind] = total.get(kind, 0) + n
        return total

    @property
    def bad_responses(self) -> int:
        return sum(r.bad_responses for r in self.runs)

    def to_json(self) -> dict[str, object]:
        rps = [r.rps for r in self.runs]
        ratios = self.ratios
        return {
            "label": self.label,
            "system": self.system,
            "kind": self.kind,
            "url": self.url,
            "rounds": len(self.runs),
            "rps": self.rps,
            "rps_min": min(rps, default=0.0),
            "rps_max": max(rps, default=0.0),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "ratio_vs_nginx": self.ratio_vs_nginx,
            "ratio_vs_nginx_min": min(ratios) if ratios else None,
            "ratio_vs_nginx_max": max(ratios) if ratios else None,
            "requests": sum(r.requests for r in self.runs),
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": self.socket_errors,
            "runs": [asdict(r) for r in self.runs],
        }


# --browser-heads: what a desktop browser sends when a link is clicked, about 500-800 bytes
# a head, varying per request (browser, cookie) like the traffic of many users; compare
# with wrk's minimal ones.
BROWSER_USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
)
BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    "image/webp,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.5",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Referer": "https://intranet.example.com/wiki/Team_links",
    "Upgrade-Insecure-Requests": "1",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-User": "?1",
    "Priority": "u=0, i",
}
BROWSER_VARIANTS = 64  # distinct heads, sent in turn


def browser_heads(count: int = BROWSER_VARIANTS) -> list[dict[str, str]]:
    """`count` browser header sets (a user agent, a cookie of 90-190 bytes): 600-750 B heads."""
    rng = random.Random(8)  # the same heads in every run
    heads = []
    for n in range(count):
        cookie = f"session={rng.randbytes(16).hex()}; theme=dark"
        cookie += f"; _ga=GA1.2.{rng.randrange(10**9)}.{rng.randrange(10**9)}"
        cookie += "; prefs=" + rng.randbytes(rng.randrange(0, 48)).hex()
        user_agent = BROWSER_USER_AGENTS[n % len(BROWSER_USER_AGENTS)]
        heads.append({"User-Agent": user_agent, **BROWSER_HEADERS, "Cookie": cookie})
    return heads


def write_browser_script(path: Path) -> Path:
    """A wrk Lua script sending the `browser_heads()` in turn, one per request.

    The requests are formatted once per wrk thread, so each costs wrk one table read.
    """
    heads = ",\n".join(
        "  {" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in h.items()) + "}"
        for h in browser_heads()
    )
    path.write_text(
        f"local heads = {{\n{heads}\n}}\n"
        "local requests, turn = {}, 0\n"
        "function init(args)\n"
        "  for i, headers in ipairs(heads) do requests[i] = wrk.format(nil, nil, headers) end\n"
        "end\n"
        "function request()\n"
        "  turn = turn % #requests + 1\n"
        "  return requests[turn]\n"
        "end\n",
        encoding="utf-8",
    )
    return path


def run_wrk(url: str, seconds: int, args: argparse.Namespace) -> str:
    """Run wrk once and return its output."""
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency", url]
    if args.wrk_script is not None:
        argv[1:1] = ["-s", str(args.wrk_script)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{shlex.join(argv)} did not finish within {seconds + 60} s") from None
    finally:
        if proc.poll() is None:  # interrupted or timed out: do not leave wrk behind
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{out}{err}")
    return out


def warm_up(target: Target, args: argparse.Namespace) -> None:
    """One unmeasured run on the target's URL; fail if the server died meanwhile."""
    run_wrk(target.url, args.warmup, args)
    if not target.guard.alive():
        raise BenchError(
            f"{target.guard.name} died while warming up {target.label}\n{target.guard.log_tail()}"
        )


def measure(target: Target, rnd: int, args: argparse.Namespace) -> WrkResult:
    """Measure the target's URL once (round ``rnd``); fail if the server died meanwhile."""
    output = run_wrk(target.url, args.duration, args)
    guard = target.guard
    if not guard.alive():
        raise BenchError(f"{guard.name} died while measuring {target.label}\n{guard.log_tail()}")
    if args.verbose:
        print(output)
    result = parse_wrk(output, target.label, target.system, target.kind, target.url)
    result.round = rnd
    target.runs.append(result)
    print(
        f"    {target.label:<32} {result.rps:>10.0f} req/s  p50 {result.p50_ms:.3f} ms  "
        f"p99 {result.p99_ms:.3f} ms  non-2xx/3xx {result.non_2xx_3xx}"
    )
    return result


# --------------------------------------------------------------------------
# Layouts under test
# --------------------------------------------------------------------------


def workers_flag(workers: int) -> list[str]:
    """`--workers N`, left out for 1 (so `--venv` may name a version without it)."""
    return ["--workers", str(workers)] if workers > 1 else []


def start_all_in_one(trunk8: Path, data: Path, logdir: Path, workers: int = 1) -> tuple[Proc, int]:
    """``trunk8 up``: embedded NATS and every service on one port."""
    port = free_port()
    argv = [str(trunk8), "up", "--data", str(data), "--port", str(port), *workers_flag(workers)]
    proc = start("trunk8 up", argv, logdir)
    wait_ready(proc, port)
    return proc, port


def start_redirector_alone(
    venv_bin: Path, data: Path, tmp: Path, logdir: Path, workers: int = 1
) -> tuple[Proc, int, list[Proc]]:
    """nats-server + config-watcher + redirector, each its own process."""
    trunk8, nats_server = venv_bin / "trunk8", venv_bin / "nats-server"
    if not nats_server.exists():
        raise BenchError(f"{nats_server} not found (is the venv set up? try `make install`)")
    nats_port = free_port()
    store = tmp / "nats-store"
    store.mkdir()
    nats = start(
        "nats-server",
        [str(nats_server), "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(store)],
        logdir,
    )
    wait_port(nats, nats_port)
    nats_url = f"nats://127.0.0.1:{nats_port}"
    watcher_port = free_port()
    watcher_argv = [str(trunk8), "run", "--target", "config-watcher", "--data", str(data)]
    watcher_argv += ["--nats", nats_url, "--port", str(watcher_port)]
    watcher = start("config-watcher", watcher_argv, logdir)
    wait_ready(watcher, watcher_port)
    port = free_port()
    redirector_argv = [str(trunk8), "run", "--target", "redirector", "--nats", nats_url]
    redirector_argv += ["--port", str(port), *workers_flag(workers)]
    redirector = start("redirector", redirector_argv, logdir)
    wait_ready(redirector, port)
    return redirector, port, [redirector, watcher, nats]


def measure_phase(
    system: str,
    sys_port: int,
    guard: Proc,
    nginx: Proc,
    nginx_port: int,
    hit_code: str,
    args: argparse.Namespace,
    baseline: tuple[int, Proc] | None = None,
) -> list[Target]:
    """Warm every URL up once, then ``args.rounds`` rounds of neighbouring runs.

    A round is nginx hit, layout hit, nginx miss, layout miss; even rounds
    swap each pair (layout first). With a ``baseline`` (its port and process), its
    runs follow the layout's (precede them in even rounds). Returns nginx hit, nginx
    miss, layout hit, layout miss[, baseline hit, baseline miss] (only the nginx pair
    when ``system`` is empty).
    """
    tag = f" (next to {system})" if system else ""
    # (nginx target, layout targets) per kind, in measuring order
    slots: list[tuple[Target, list[Target]]] = []
    for kind, code in (("hit", hit_code), ("miss", MISS_CODE)):
        ref = Target(f"nginx {kind}{tag}", "nginx", kind, url_of(nginx_port, code), nginx)
        layouts = [Target(f"{system} {kind}", system, kind, url_of(sys_port, code), guard)]
        if baseline is not None:
            base_port, base_guard = baseline
            base = f"{system} {BASELINE_TAG}"
            layouts.append(
                Target(f"{base} {kind}", base, kind, url_of(base_port, code), base_guard)
            )
        slots.append((ref, layouts if system else []))
    runs_per_round = len(slots) * (1 + len(slots[0][1]))
    print(f"  measuring {args.rounds} round(s), about {phase_seconds(args, runs_per_round):.0f} s")
    if args.warmup > 0:
        print(f"  warm-up: {args.warmup} s per URL, once")
        for ref, layouts in slots:
            for target in [ref, *layouts]:
                warm_up(target, args)
    for rnd in range(1, args.rounds + 1):
        layout_first = bool(system) and rnd % 2 == 0
        print(f"  round {rnd}/{args.rounds}" + (" (layout first)" if layout_first else ""))
        summary = []
        for ref, layouts in slots:
            order = [ref, *layouts]
            for target in reversed(order) if layout_first else order:
                measure(target, rnd, args)
            theirs = ref.runs[-1]
            for own in layouts:
                mine = own.runs[-1]
                mine.ratio_vs_nginx = mine.rps / theirs.rps if theirs.rps else None
                if mine.ratio_vs_nginx is not None:
                    summary.append(f"{own.label} {mine.ratio_vs_nginx:.2f}x nginx")
            if len(layouts) == 2 and layouts[1].runs[-1].rps:
                summary.append(
                    f"{ref.kind} {layouts[0].runs[-1].rps / layouts[1].runs[-1].rps:.2f}x "
                    f"{BASELINE_TAG}"
                )
        # miss/hit of the layout, or of nginx when it is measured alone
        hit, miss = ([*slots[0][1], slots[0][0]][0], [*slots[1][1], slots[1][0]][0])
        if hit.runs[-1].rps:
            summary.append(f"miss/hit {miss.runs[-1].rps / hit.runs[-1].rps:.2f}")
        print(f"    round {rnd}: {', '.join(summary)}")
    return [ref for ref, _ in slots] + [own for _, layouts in slots for own in layouts]


def url_of(port: int, code: str) -> str:
    return f"http://127.0.0.1:{port}/{code}"


def phase_seconds(args: argparse.Namespace, urls: int) -> float:
    """wrk time of one phase measuring `urls` URLs: a warm-up per URL plus every run."""
    return urls * (args.warmup + args.rounds * args.duration)


def baseline_ratios(targets: list[Target]) -> list[tuple[str, list[float]]]:
    """Per-round req/s of each layout over its baseline's, by layout and kind."""
    out = []
    for base in targets:
        if not base.system.endswith(BASELINE_TAG):
            continue
        system = base.system.removesuffix(f" {BASELINE_TAG}")
        own = next(t for t in targets if t.system == system and t.kind == base.kind)
        by_round = {r.round: r.rps for r in base.runs}
        ratios = [r.rps / by_round[r.round] for r in own.runs if by_round.get(r.round)]
        out.append((f"{own.label} vs {BASELINE_TAG}", ratios))
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def fmt_range(values: list[float], fmt: str, suffix: str = "") -> str:
    """``'min-max'`` of the values, ``'-'`` for none."""
    if not values:
        return "-"
    return f"{min(values):{fmt}}-{max(values):{fmt}}{suffix}"


def print_table(targets: list[Target]) -> None:
    header = (
        f"{'target':<32} {'req/s':>10} {'req/s min-max':>15} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs nginx':>9} {'min-max':>11} {'non-2xx/3xx':>12} {'sock err':>9}"
    )
    print(header)
    print("-" * len(header))
    for t in targets:
        ratio = f"{t.ratio_vs_nginx:.2f}x" if t.ratio_vs_nginx is not None else "-"
        print(
            f"{t.label:<32} {t.rps:>10.0f} {fmt_range([r.rps for r in t.runs], '.0f'):>15} "
            f"{t.p50_ms:>8.3f} {t.p99_ms:>8.3f} {ratio:>9} {fmt_range(t.ratios, '.2f', 'x'):>11} "
            f"{t.non_2xx_3xx:>12} {sum(t.socket_errors.values()):>9}"
        )
    rounds = max((len(t.runs) for t in targets), default=0)
    print(
        f"(req/s, p50, p99: medians of {rounds} round(s); vs nginx: median of the per-round\n"
        " ratios to the nginx run of the same kind in the same round, min-max over the rounds;\n"
        " errors summed over the rounds; 404s in miss runs are expected)"
    )


def pairs_by_system(targets: list[Target]) -> list[tuple[str, Target, Target]]:
    """(label, hit, miss) for each server measured in each phase, in order."""
    groups: dict[str, dict[str, Target]] = {}
    for t in targets:  # "nginx hit (next to x)" and "nginx miss (next to x)" -> "nginx (next to x)"
        groups.setdefault(t.label.replace(f" {t.kind}", "", 1), {})[t.kind] = t
    return [
        (label, g["hit"], g["miss"]) for label, g in groups.items() if {"hit", "miss"} <= set(g)
    ]


def miss_hit_ratios(hit: Target, miss: Target) -> list[float]:
    """Per-round miss req/s / hit req/s of the same server."""
    by_round = {r.round: r.rps for r in hit.runs}
    return [m.rps / by_round[m.round] for m in miss.runs if by_round.get(m.round)]


def check_budgets(targets: list[Target]) -> list[dict[str, object]]:
    """PASS/FAIL lines for each Trunk8 layout, judged on medians."""
    checks: list[dict[str, object]] = []

    def add(system: str, name: str, ok: bool, detail: str) -> None:
        checks.append({"system": system, "budget": name, "pass": ok, "detail": detail})

    for _, hit, miss in pairs_by_system(targets):
        if hit.system == "nginx":
            continue
        s = hit.system
        ratio = hit.ratio_vs_nginx or 0.0
        add(
            s,
            f"hit >= {HIT_VS_NGINX_MIN}x nginx",
            ratio >= HIT_VS_NGINX_MIN,
            f"median {hit.rps:.0f} req/s, median ratio {ratio:.2f}x nginx "
            f"(rounds {fmt_range(hit.ratios, '.2f', 'x')})",
        )
        for t in (hit, miss):
            add(
                s,
                f"{t.kind} p99 < {P99_MAX_MS:g} ms",
                t.p99_ms < P99_MAX_MS,
                f"median p99 {t.p99_ms:.3f} ms "
                f"(rounds {fmt_range([r.p99_ms for r in t.runs], '.3f')})",
            )
        mh_rounds = miss_hit_ratios(hit, miss)
        mh = median(mh_rounds)
        add(
            s,
            f"miss within {MISS_VS_HIT_TOLERANCE:.0%} of hit",
            abs(mh - 1.0) <= MISS_VS_HIT_TOLERANCE,
            f"median miss/hit = {mh:.2f} (rounds {fmt_range(mh_rounds, '.2f')})",
        )
        add(
            s,
            "hit runs without errors",
            hit.bad_responses == 0,
            f"{hit.non_2xx_3xx} non-2xx/3xx, socket errors {hit.socket_errors or 'none'}",
        )
        miss_errs = sum(miss.socket_errors.values())
        add(
            s,
            "miss runs without socket errors",
            miss_errs == 0,
            f"{miss.non_2xx_3xx} 404s (expected), socket errors {miss.socket_errors or 'none'}",
        )
    return checks


def miss_hit_report(targets: list[Target]) -> list[dict[str, object]]:
    """Median and per-round miss/hit ratios per server and phase (for JSON)."""
    out: list[dict[str, object]] = []
    for label, hit, miss in pairs_by_system(targets):
        rounds = miss_hit_ratios(hit, miss)
        out.append(
            {
                "label": label,
                "system": hit.system,
                "miss_hit": median(rounds),
                "min": min(rounds, default=None),
                "max": max(rounds, default=None),
                "per_round": rounds,
            }
        )
    return out


def print_report(targets: list[Target], checks: list[dict[str, object]]) -> None:
    print()
    print_table(targets)
    print()
    print("per-round ratios (round 1, 2, ...):")
    for t in targets:
        if t.ratios:
            print(f"  {t.label + ' vs nginx':<40} {' '.join(f'{x:.2f}' for x in t.ratios)}")
    for label, hit, miss in pairs_by_system(targets):
        rounds = miss_hit_ratios(hit, miss)
        print(f"  {label + ' miss/hit':<40} {' '.join(f'{x:.2f}' for x in rounds)}")
    compared = baseline_ratios(targets)
    if compared:
        print()
        print(
            f"layout vs {BASELINE_TAG} requests/s ratio (median of the per-round ratios, min-max):"
        )
        for label, rounds in compared:
            per_round = " ".join(f"{x:.2f}" for x in rounds)
            print(f"  {label:<40} {median(rounds):.2f}  ({fmt_range(rounds, '.2f')}; {per_round})")
    print()
    print("miss/hit requests/s ratio (median of the per-round ratios, min-max):")
    for label, hit, miss in pairs_by_system(targets):
        rounds = miss_hit_ratios(hit, miss)
        print(f"  {label:<32} {median(rounds):.2f}  ({fmt_range(rounds, '.2f')})")
    if checks:
        print()
        print("budgets:")
        for c in checks:
            print(
                f"  {'PASS' if c['pass'] else 'FAIL'}  {c['system']:<12} "
                f"{c['budget']:<32} {c['detail']}"
            )
    print()
    print(INTERLEAVING_NOTE)
    print(CPU_NOTE)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=int, help=f"seconds per measured run ({DEFAULT_DURATION})")
    p.add_argument(
        "--warmup",
        type=int,
        help=f"warm-up seconds, once per URL at the start of each phase ({DEFAULT_WARMUP})",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="rounds per phase; a round measures nginx hit, layout hit, nginx miss, "
        f"layout miss ({DEFAULT_ROUNDS})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 s runs, 1 s warm-ups, 2 rounds (explicit flags still win)",
    )
    p.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument("--links", type=int, default=10_000, help="redirect links to create (10000)")
    p.add_argument(
        "--system",
        choices=["all", "all-in-one", "redirector", "none"],
        default="all",
        help="Trunk8 layouts to measure; 'none': nginx only (all)",
    )
    p.add_argument(
        "--browser-heads",
        action="store_true",
        help="send a browser's ~700-byte request head instead of wrk's minimal one",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="nginx worker_processes and Trunk8 --workers, the same number for both (1)",
    )
    p.add_argument("--json", metavar="PATH", type=Path, help="also write the numbers as JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (data, logs)")
    p.add_argument(
        "--venv",
        type=Path,
        default=VENV_BIN.parent,
        help="venv with trunk8 and nats-server (<repo>/.venv)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="VENV",
        help="also measure the `trunk8 up` of this venv (e.g. main's) in the same rounds, on "
        "a copy of the data; needs --system all-in-one",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print raw wrk output")
    args = p.parse_args(argv)
    if args.baseline is not None and args.system != "all-in-one":
        p.error("--baseline needs --system all-in-one")
    defaults = QUICK if args.quick else (DEFAULT_DURATION, DEFAULT_WARMUP, DEFAULT_ROUNDS)
    for name, default in zip(("duration", "warmup", "rounds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.duration < 1 or args.warmup < 0 or args.rounds < 1 or args.links < 1:
        p.error("--duration must be >= 1, --warmup >= 0, --rounds >= 1, --links >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def bench(args: argparse.Namespace) -> dict[str, object]:
    """Set everything up, measure, and return the report data."""
    started = time.monotonic()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"nproc: {cpu_count()}")
    ensure_tools()
    meta = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "nproc": cpu_count(),
        "wrk": tool_version(["wrk", "-v"]),
        "nginx": tool_version(["nginx", "-v"]),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "wrk_threads": args.threads,
        "wrk_connections": args.connections,
        "links": args.links,
        "browser_heads": args.browser_heads,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_before": load_average(),
    }
    print(f"load average before: {meta['load_before']}")
    if os.getloadavg()[0] > BUSY_LOAD:
        print(
            f"warning: the machine is busy (1-min load {os.getloadavg()[0]:.2f}); "
            "something else is using the CPU and the figures will be noisy"
        )
    print(f"wrk: {meta['wrk']}")
    print(f"nginx: {meta['nginx']}")
    systems = {"all": ["all-in-one", "redirector"], "none": []}.get(args.system, [args.system])
    per_round = (6 if args.baseline else 4) if systems else 2
    print(
        f"runs: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
        f"{args.rounds} round(s) of {per_round} runs per phase, one {args.warmup} s warm-up "
        f"per URL; {args.links} links over {len(USERS)} users"
    )
    phases = len(systems) or 1
    planned = phases * phase_seconds(args, per_round)
    meta["planned_wrk_s"] = planned
    print(
        f"expected duration: about {planned / 60:.1f} min of wrk runs ({phases} phase(s) x "
        f"({per_round} warm-ups x {args.warmup} s + {args.rounds} rounds x {per_round} runs x "
        f"{args.duration} s)) plus start-up and sanity checks (some seconds per layout)"
    )
    print(CPU_NOTE)
    venv_bin = args.venv.resolve() / "bin"
    for bin_dir in [venv_bin] + ([args.baseline.resolve() / "bin"] if args.baseline else []):
        if systems and not (bin_dir / "trunk8").exists():
            raise BenchError(f"{bin_dir}/trunk8 not found (is the venv set up? `make install`)")
    meta["baseline"] = str(args.baseline) if args.baseline else None

    tmp = Path(tempfile.mkdtemp(prefix="trunk8-bench-"))
    CLEANUP.add_dir(tmp)
    args.wrk_script = write_browser_script(tmp / "browser.lua") if args.browser_heads else None
    logdir = tmp / "logs"
    logdir.mkdir()
    links = make_links(args.links)
    hit = (
        links[USERS[-1]][-1]
        if links[USERS[-1]]
        else next(pairs[-1] for pairs in reversed(links.values()) if pairs)
    )
    data = tmp / "data"
    write_data_dir(data, links)
    print(f"data: {data} (hit /{hit[0]} -> {hit[1]}, miss /{MISS_CODE})")

    nginx_prefix = tmp / "nginx"
    nginx_prefix.mkdir()
    nginx_port = free_port()
    conf = write_nginx_conf(nginx_prefix, nginx_port, links, args.workers)
    nginx = start(
        "nginx",
        ["nginx", "-p", str(nginx_prefix), "-c", str(conf), "-e", str(nginx_prefix / "error.log")],
        logdir,
    )
    wait_port(nginx, nginx_port)
    sanity_check("nginx", nginx, nginx_port, hit, wait_for_data=False)

    results: list[Target] = []
    if not systems:
        print("\nmeasuring nginx only")
        results += measure_phase("", 0, nginx, nginx, nginx_port, hit[0], args)
    for system in systems:
        print(f"\n{system}:")
        baseline = None
        if system == "all-in-one":
            guard, port = start_all_in_one(venv_bin / "trunk8", data, logdir, args.workers)
            procs = [guard]
            if args.baseline:  # its own copy: each `trunk8 up` keeps its state in the data
                base_data = tmp / "data-baseline"
                shutil.copytree(data, base_data)
                base_trunk8 = args.baseline.resolve() / "bin" / "trunk8"
                base_guard, base_port = start_all_in_one(
                    base_trunk8, base_data, logdir, args.workers
                )
                procs.append(base_guard)
                sanity_check(f"{system} {BASELINE_TAG}", base_guard, base_port, hit)
                baseline = (base_port, base_guard)
        else:
            guard, port, procs = start_redirector_alone(venv_bin, data, tmp, logdir, args.workers)
        sanity_check(system, guard, port, hit)
        results += measure_phase(system, port, guard, nginx, nginx_port, hit[0], args, baseline)
        for proc in procs:  # stop before the next layout starts: 2 cores only
            CLEANUP.stop(proc)

    checks = check_budgets(results)
    meta["load_after"] = load_average()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(results, checks)
    print(f"load average after: {meta['load_after']} (before: {meta['load_before']})")
    print(f"took {meta['elapsed_s']:.0f} s (wrk runs planned: {planned:.0f} s)")
    return {
        "meta": meta,
        "results": [t.to_json() for t in results],
        "miss_hit": miss_hit_report(results),
        "vs_baseline": [
            {"label": label, "median": median(rounds), "per_round": rounds}
            for label, rounds in baseline_ratios(results)
        ],
        "budgets": checks,
    }


def main(argv: list[str] | None = None) -> int:
    return run_main(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
