"""JetStream KV buckets: binding to one (creating it when missing), and the bus errors.

Every reader and writer of a bucket binds through `ensure_bucket`, so whoever comes first
creates it with the same options. `BUS_ERRORS` are the failures that mean "NATS is away or
busy, try again later", as opposed to a bug that must surface. `write_batched` writes many
keys with their acknowledgements counted per window instead of awaited one by one;
`set_replicas` changes how many cluster nodes hold a bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

# NATS client and JetStream errors (nats.errors.TimeoutError is a TimeoutError too).
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, ConnectionError)


async def ensure_bucket(js: JetStreamContext, bucket: str, replicas: int = 1) -> KeyValue:
    """Bind to a KV bucket, creating it (one value per key, file storage) when missing."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            bucket=bucket, history=1, storage=api.StorageType.FILE, replicas=replicas
        )
    except nats.js.errors.BadRequestError:
        # Somebody else created it in between with their own options: use theirs.
        return await js.key_value(bucket)


async def set_replicas(js: JetStreamContext, stream: str, replicas: int) -> bool:
    """Give an existing bucket's stream `replicas` copies (a cluster grown); True if changed."""
    info = await js.stream_info(stream)
    if info.config.num_replicas == replicas:
        return False
    await js.update_stream(replace(info.config, num_replicas=replicas))
    return True


# Writes sent before waiting for their acknowledgements (one inbox subscription for all).
BATCH_WINDOW = 4096
BATCH_ACK_TIMEOUT = 10.0
_DELETE_HEADERS = {"KV-Operation": "DEL"}


async def write_batched(
    nc: NATS, bucket: str, writes: Sequence[tuple[str, bytes | None]]
) -> tuple[list[str], list[tuple[str, BaseException]]]:
    """Put (value) or delete (None) many keys, acknowledged in batches; (done, failures).

    `KeyValue.put` awaits one request per key (about 40 µs each); publishing a window of
    writes with numbered reply subjects and counting the acknowledgements on one inbox
    costs a quarter of that. A write the stream refused, or not acknowledged in time, is
    a failure naming its key; the next windows are not sent after one fails.
    """
    inbox = nc.new_inbox()
    outcomes: dict[int, BaseException | None] = {}
    window_done = asyncio.Event()
    expected = 0

    async def on_ack(msg: Msg) -> None:
        index = int(msg.subject.rpartition(".")[2])
        failure: BaseException | None = None
        if b'"error"' in msg.data:
            failure = nats.js.errors.APIError(description=msg.data.decode(errors="replace"))
        outcomes[index] = failure
        if len(outcomes) >= expected:
            window_done.set()

    done: list[str] = []
    failures: list[tuple[str, BaseException]] = []
    sub = await nc.subscribe(inbox + ".*", cb=on_ack)
    try:
        prefix = f"$KV.{bucket}."
        for start in range(0, len(writes), BATCH_WINDOW):
            window = writes[start : start + BATCH_WINDOW]
            expected = start + len(window)
            window_done.clear()
            for offset, (key, value) in enumerate(window):
                reply = f"{inbox}.{start + offset}"
                if value is None:
                    await nc.publish(prefix + key, b"", reply=reply, headers=_DELETE_HEADERS)
                else:
                    await nc.publish(prefix + key, value, reply=reply)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(window_done.wait(), BATCH_ACK_TIMEOUT)
            for offset, (key, _value) in enumerate(window):
                outcome = outcomes.get(start + offset, _NOT_ACKED)
                if outcome is None:
                    done.append(key)
                else:
                    failures.append((key, outcome))
            if failures:  # NATS is likely away: the rest would only wait for timeouts too
                break
    finally:
        with contextlib.suppress(*BUS_ERRORS):
            await sub.unsubscribe()
    return done, failures


_NOT_ACKED = TimeoutError("not acknowledged in time")
