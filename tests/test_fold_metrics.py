"""The redirector's fold metrics over HTTP: folds, changes folded, and the longest step.

A real nats-server and a redirector alone on a free port; the links bucket is written by
the test, as the config-watcher would, with a fold threshold low enough that a few dozen
live changes are folded into new rows by the redirector's `link-fold` task.
"""

from __future__ import annotations

import msgspec
import nats
import pytest
from conftest import StartSystem, wait_until
from prometheus_client.parser import text_string_to_metric_families

from trunk8_redirector import table as table_module
from trunk8_shared.codes import kv_key
from trunk8_shared.records import LINKS_BUCKET, LinkRecord

CHANGES = 40


async def test_a_fold_shows_on_the_metrics_page(
    start_system: StartSystem, bus_client: nats.NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_module, "COMPACT_MIN", 10)
    kv = await bus_client.jetstream().create_key_value(bucket=LINKS_BUCKET, history=1)
    await kv.put(kv_key("first"), _record("first"))
    system = await start_system("redirector")

    async def metrics() -> dict[str, float]:
        status, _, text = await system.get("/-/metrics")
        assert status == 200
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "fold" in sample.name
        }

    before = await metrics()
    assert before["trunk8_redirector_folds_total"] == 0
    assert before["trunk8_redirector_fold_step_seconds_count"] == 0
    for i in range(CHANGES):
        await kv.put(kv_key(f"live{i}"), _record(f"live{i}"))

    async def folded() -> bool:
        return (await metrics())["trunk8_redirector_folds_total"] >= 1

    await wait_until(folded, timeout=10)
    after = await metrics()
    # The fold took every change live when it started (more than the threshold of 10).
    assert 10 < after["trunk8_redirector_folded_changes_total"] <= CHANGES
    assert 0 < after["trunk8_redirector_fold_longest_step_seconds"] < 1
    assert after["trunk8_redirector_fold_step_seconds_count"] >= 2  # a step at a time
    longest = after["trunk8_redirector_fold_longest_step_seconds"]
    assert after["trunk8_redirector_fold_step_seconds_sum"] >= longest
    status, headers, _ = await system.get(f"/live{CHANGES - 1}")
    assert status == 302 and headers["Location"] == f"https://example.com/live{CHANGES - 1}"


def _record(code: str) -> bytes:
    return msgspec.json.encode(
        LinkRecord(code=code, owner="u", type="redirect", url=f"https://example.com/{code}")
    )
