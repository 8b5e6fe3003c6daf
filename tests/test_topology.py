"""Topology: the split deployment as shipped, on loopback, every part its own process.

Three nats-servers clustered with `deploy/nats/nats-server.conf`, Trunk8's buckets made
with 3 replicas, then two config-watchers (one active, one standing by), two redirectors
(accel mode), the files service and the admin as separate `trunk8 run --target …`
processes, and nginx in front with `deploy/nginx/` (`topologykit.Topology`). Everything a
user does goes through nginx: a redirect, a download handed off by X-Accel, a markdown
page, signing in and creating a link, which both redirectors then serve. Every process is
stopped at the end, also on failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
from conftest import write
from topologykit import REDIRECTORS, Topology, location


async def test_split_topology_through_nginx(data_dir: Path, topology: Topology) -> None:
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
    elapsed = await topology.start()
    client = await nats.connect(servers=topology.seeds.split(","))
    try:
        info = await client.jetstream().stream_info("KV_trunk8_links")
        assert info.config.num_replicas == 3 and info.cluster is not None
        assert len(info.cluster.replicas or []) == 2  # the leader and two copies
    finally:
        await client.close()
    await _through_the_edge(topology, report)
    print(f"topology: 3 NATS nodes, 6 service processes and nginx up in {elapsed:.1f} s")


async def _through_the_edge(topology: Topology, report: bytes) -> None:
    http, base, edge = topology.http, topology.base, topology.edge
    assert edge is not None
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

    browser = await topology.browser()
    try:
        await topology.create_link(browser, "fresh", "https://example.net/new")
    finally:
        await browser.close()

    # The admin answers once the link is served: both redirectors have it, straight away.
    for name in REDIRECTORS:
        assert await location(http, topology.direct(name), "/fresh") == "https://example.net/new"
    assert await location(http, base, "/fresh") == "https://example.net/new"
    counts: dict[str, Any] = {}
    for name in REDIRECTORS:
        async with http.get(topology.direct(name) + "/-/metrics") as response:
            text = await response.text()
        counts[name] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('trunk8_redirector_requests_total{route="/{code}",status="302"}')
        )
    assert all(count >= 1 for count in counts.values()), counts  # the edge used both
