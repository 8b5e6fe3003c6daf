"""Faults under load: the split deployment keeps serving while its parts fail.

The topology of `topologykit` (3 NATS nodes, two config-watchers of which one stands by,
two redirectors, files and admin as processes, nginx with the shipped config) carries a
paced load through nginx (`loadgen.Load`: redirects, a fixed budget, a timeout per
request) while the test, one after the other: kills a redirector with SIGKILL, stops the
other with SIGTERM (it drains), kills the NATS node that leads the links stream and
brings it back, and kills the active config-watcher with SIGKILL (the standby takes
over). No request may fail in any phase. Before and after each fault a link is created
through the admin and timed until both redirectors serve it (the propagation lag). The
figures are printed (`pytest -s`) and written to `faults.json` in the test's temp folder.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import nats
from conftest import wait_until
from loadgen import Load, redirect_to
from rawhttp import DOCS_URL
from test_admin_support import Browser
from topologykit import LEASE_TTL, WATCHERS, Topology

# Below the shipped general rate limit (200 r/s per client address): every request of the
# load comes from 127.0.0.1, and a 429 is a failure.
LOAD_RATE = 120.0
PHASE_REQUESTS = 150  # at least this many requests through each fault
CAROL_URL = "https://example.org/carol"
STAYING = ("files", "admin")  # not restarted by any fault
RSS_GROWTH_MB = 50


class FaultRun:
    """The load, the admin session and the figures of one run."""

    def __init__(self, topology: Topology, browser: Browser, load: Load) -> None:
        self.topology = topology
        self.browser = browser
        self.load = load
        self.lags: dict[str, float] = {}
        self.answered: dict[str, float] = {}  # seconds until the admin's answer
        self.takeover = 0.0  # seconds from killing the active config-watcher to a new one
        self._links = 0

    async def lag(self, when: str, timeout: float = 30.0) -> float:
        """Create a link through the admin; seconds until both redirectors serve it."""
        self._links += 1
        code, url = f"fault{self._links}", f"https://example.net/fault/{self._links}"
        started = time.perf_counter()

        async def create() -> float:
            await self.topology.create_link(self.browser, code, url)
            return time.perf_counter() - started

        created = asyncio.create_task(create())

        async def served() -> bool:
            return await self.topology.served_by_all(code, url)

        await wait_until(served, timeout=timeout, interval=0.005)
        seconds = time.perf_counter() - started
        self.lags[when] = seconds
        self.answered[when] = await asyncio.wait_for(created, timeout)
        return seconds


async def test_faults_under_load_fail_no_request(
    data_dir: Path, tmp_path: Path, topology: Topology
) -> None:
    await topology.start(drain_seconds=1.0)
    assert topology.edge is not None
    load = Load(
        topology.edge.port,
        [("/docs", redirect_to(DOCS_URL)), ("/carol1", redirect_to(CAROL_URL))],
        rate=LOAD_RATE, connections=4, budget=10_000, timeout=5.0, first_phase="steady",
    )  # fmt: skip
    browser = await topology.browser()
    run = FaultRun(topology, browser, load)
    # The processes no fault restarts: their memory must not grow with reconnects and retries.
    rss_before = {name: topology.rss_mb(name) for name in STAYING}
    load.start()
    try:
        await _faults(run)
    finally:
        await load.stop()
        await browser.close()
    report = {
        name: {
            "sent": counts.sent,
            "failed": counts.failed,
            "p50_ms": round(counts.percentile(0.5), 2),
            "p99_ms": round(counts.percentile(0.99), 2),
        }
        for name, counts in load.phases.items()
    }
    rss = {name: (rss_before[name], topology.rss_mb(name)) for name in STAYING}
    figures = {
        "load": report,
        "lag_s": run.lags,
        "admin_answer_s": run.answered,
        "rss_mb": rss,
        "watcher_takeover_s": run.takeover,
    }
    (tmp_path / "faults.json").write_text(json.dumps(figures, indent=1))
    for name, counts in load.phases.items():
        print(f"faults, {name}: {counts.summary()}")
    for when, seconds in run.lags.items():
        answered = 1000 * run.answered[when]
        print(f"faults, propagation lag {when}: {1000 * seconds:.0f} ms (admin {answered:.0f} ms)")
    print(f"faults, standby config-watcher active {run.takeover:.2f} s after the kill")
    for name, (before, after) in rss.items():
        print(f"faults, {name} RSS: {before:.0f} MB before, {after:.0f} MB after")
    assert all(after - before < RSS_GROWTH_MB for before, after in rss.values()), rss
    failed = {name: counts.failures[:5] for name, counts in load.phases.items() if counts.failed}
    assert not failed, failed
    refused = {name: counts.refused for name, counts in load.phases.items() if counts.refused}
    assert not refused, f"nginx refused connections: {refused}"
    assert all(counts.sent > 0 for counts in load.phases.values()), report


async def _faults(run: FaultRun) -> None:
    topology, load = run.topology, run.load
    await load.until_sent(PHASE_REQUESTS)
    await run.lag("before any fault")

    load.phase("redirector-1 killed (SIGKILL)")
    topology.signal("redirector-1", signal.SIGKILL)
    await load.until_sent(PHASE_REQUESTS)
    await run.lag("with redirector-1 down")
    topology.restart("redirector-1")
    await topology.until_ready("redirector-1")
    await run.lag("after redirector-1 restarted")

    load.phase("redirector-2 stopped (SIGTERM, drains)")
    topology.signal("redirector-2", signal.SIGTERM)
    await load.until_sent(PHASE_REQUESTS)
    assert await topology.exited("redirector-2") == 0, topology.processes.log("redirector-2")
    topology.restart("redirector-2")
    await topology.until_ready("redirector-2")
    await run.lag("after redirector-2 restarted")

    leader = await _links_leader(topology)
    load.phase(f"{leader} (links stream leader) killed")
    topology.signal(leader, signal.SIGKILL)
    await load.until_sent(PHASE_REQUESTS)
    await run.lag(f"with {leader} down")
    load.phase(f"{leader} back")
    topology.restart(leader)
    await _rejoined(topology, leader)
    await load.until_sent(PHASE_REQUESTS)
    await run.lag(f"after {leader} rejoined")

    async def one_active() -> bool:
        return len(await topology.active_watchers()) == 1

    await wait_until(one_active, timeout=10, interval=0.1)
    [active] = await topology.active_watchers()
    [standby] = [name for name in WATCHERS if name != active]
    load.phase(f"{active} (active config-watcher) killed (SIGKILL)")
    topology.signal(active, signal.SIGKILL)
    killed = time.monotonic()

    async def taken_over() -> bool:
        return await topology.active_watchers() == [standby]

    await wait_until(taken_over, timeout=LEASE_TTL + 10, interval=0.1)
    run.takeover = time.monotonic() - killed
    await run.lag(f"after {standby} took over")
    await load.until_sent(PHASE_REQUESTS)


async def _links_leader(topology: Topology) -> str:
    """The NATS node (process name) leading the links stream."""
    leader, _ = await topology.links_stream_peers()
    return leader


async def _rejoined(topology: Topology, node: str) -> None:
    """Wait until `node` is a current peer of the links stream again, with 3 peers in all."""

    async def current() -> bool:
        try:
            _, peers = await topology.links_stream_peers()
        except (AssertionError, OSError, nats.errors.Error):  # no leader yet, or starting
            return False
        return len(peers) == 3 and all(peers.values()) and node in peers

    await wait_until(current, timeout=30, interval=0.2)
