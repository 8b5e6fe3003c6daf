"""Propagation: an admin save is served by every redirector, and how soon.

On the split topology of `topologykit` (3 NATS nodes, buckets with 3 replicas, the
services as processes, nginx), 200 links are created one after the other through the
admin behind nginx, as a browser would (signed in, CSRF token, multipart add form), while
a prober polls both redirectors directly for the new code. For each link the time from
sending the form to both redirectors answering its 302 is the propagation lag; its p50
and p99 are printed (`pytest -s`) and written to `propagation.json` in the test's temp
folder. The budget is p99 < 50 ms on loopback (docs/architecture.md); a shared 2-core CI
machine does not meet it reliably, so the test holds a looser bound and docs/scaling.md
records the figures.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from conftest import wait_until
from topologykit import Topology

LINKS = 200
# Seconds, p99: against a stalled pipeline only. p99 was 82-260 ms here while other test
# suites shared the 2 cores; the 50 ms budget is the benchmarks' to judge, on a quiet machine.
LAG_BOUND = 1.0


def percentile(values: list[float], fraction: float) -> float:
    """A percentile of `values`, in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def test_admin_saves_reach_both_redirectors(tmp_path: Path, topology: Topology) -> None:
    await topology.start()
    browser = await topology.browser()
    lags: list[float] = []
    answers: list[float] = []
    try:
        for n in range(LINKS):
            code, url = f"prop{n}", f"https://example.net/propagation/{n}"
            started = time.perf_counter()

            async def create(code: str = code, url: str = url, started: float = started) -> float:
                await topology.create_link(browser, code, url)
                return time.perf_counter() - started

            created = asyncio.create_task(create())

            async def served(code: str = code, url: str = url) -> bool:
                return await topology.served_by_all(code, url)

            await wait_until(served, timeout=10, interval=0.001)
            lags.append(time.perf_counter() - started)
            answers.append(await asyncio.wait_for(created, 10))
    finally:
        await browser.close()
    figures = {
        "links": LINKS,
        "lag_ms": {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99)},
        "lag_max_ms": percentile(lags, 1.0),
        "admin_answer_ms": {"p50": percentile(answers, 0.5), "p99": percentile(answers, 0.99)},
    }
    (tmp_path / "propagation.json").write_text(json.dumps(figures, indent=1))
    lag, answer = figures["lag_ms"], figures["admin_answer_ms"]
    print(
        f"propagation of {LINKS} admin saves to both redirectors: p50 {lag['p50']:.1f} ms, "
        f"p99 {lag['p99']:.1f} ms, max {figures['lag_max_ms']:.1f} ms "
        f"(admin answer p50 {answer['p50']:.1f} ms, p99 {answer['p99']:.1f} ms)"
    )
    assert percentile(lags, 0.99) < 1000 * LAG_BOUND, figures
