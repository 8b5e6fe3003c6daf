"""JetStream KV buckets: who creates them, waiting for them, fenced batched writes.

Only the config-watcher creates Trunk8's buckets (`create_buckets`, with the replica count
of its settings); every other service waits for them (`wait_for_bucket`) and never creates
one, so a bucket's options are decided in one place. `BUS_ERRORS` are the failures that
mean "NATS is away or busy, try again later", as opposed to a bug that must surface.
`write_batched` writes many keys with their acknowledgements counted per window instead of
awaited one by one; given the stream's last sequence it fences them: each write carries
`Nats-Expected-Last-Sequence`, so the stream refuses it once anybody else wrote there
(`fence_bucket` is how a new writer makes that happen). `set_replicas` changes how many
cluster nodes hold a bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from .records import LEASE_BUCKET, LINKS_BUCKET, USERS_BUCKET
from .snapshot import SNAPSHOT_STORE, snapshot_store

log = logging.getLogger("trunk8.buckets")

# NATS client and JetStream errors (nats.errors.TimeoutError is a TimeoutError too).
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, ConnectionError)

# The KV buckets the config-watcher writes, and every stream it creates (lease included).
DATA_BUCKETS = (LINKS_BUCKET, USERS_BUCKET)
STREAMS = (
    *(f"KV_{bucket}" for bucket in DATA_BUCKETS),
    f"OBJ_{SNAPSHOT_STORE}",
    f"KV_{LEASE_BUCKET}",
)
# Seconds between looks for a bucket that does not exist yet.
BUCKET_POLL_INTERVAL = 0.5


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


async def wait_for_bucket(
    js: JetStreamContext, bucket: str, interval: float = BUCKET_POLL_INTERVAL
) -> KeyValue:
    """Bind to a KV bucket, waiting while it does not exist (the config-watcher creates it).

    Says once what it waits for, and once when the wait is over. NATS being away raises
    one of `BUS_ERRORS`, for the caller's retry.
    """
    waited = False
    while True:
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            if not waited:
                log.warning(
                    "bucket %s does not exist yet; waiting for the config-watcher to create it",
                    bucket,
                )
                waited = True
            await asyncio.sleep(interval)
            continue
        if waited:
            log.info("bucket %s exists now", bucket)
        return kv


async def ensure_lease_bucket(js: JetStreamContext, ttl: float, replicas: int = 1) -> KeyValue:
    """Bind to the config-watchers' lease bucket, creating it (entries live `ttl` seconds)."""
    try:
        return await js.key_value(LEASE_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            bucket=LEASE_BUCKET, history=1, ttl=ttl, storage=api.StorageType.FILE,
            replicas=replicas,
        )  # fmt: skip
    except nats.js.errors.BadRequestError:  # another watcher created it meanwhile
        return await js.key_value(LEASE_BUCKET)


async def create_buckets(js: JetStreamContext, replicas: int) -> None:
    """Create whichever of the data buckets and the snapshot store is missing.

    Existing ones keep their options: a replica count different from `replicas` is logged
    with the command that changes it (never changed here, so a watcher started with the
    default cannot take copies away from a cluster's buckets).
    """
    for bucket in DATA_BUCKETS:
        await ensure_bucket(js, bucket, replicas)
    await snapshot_store(js, create=True, replicas=replicas)
    for stream in STREAMS[:-1]:
        info = await js.stream_info(stream)
        if info.config.num_replicas != replicas:
            log.warning(
                "%s has %d replicas, the setting says %d; `python -m trunk8.deploy buckets "
                "--replicas %d` changes it",
                stream, info.config.num_replicas, replicas, replicas,
            )  # fmt: skip


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
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
# JetStream's "wrong last sequence" error codes (the second: a constant expectation).
WRONG_LAST_SEQUENCE_CODES = frozenset({10071, 10164})
# The key a new writer deletes to fence a bucket: the delete moves the stream's last
# sequence, which is all a fence needs; no value is ever stored under it, and readers
# skip it (`code_of_key` refuses the dot).
FENCE_KEY = "trunk8.fence"


class WrongLastSequenceError(nats.js.errors.BadRequestError):
    """The stream refused a fenced write: somebody else wrote since its expected sequence."""


class _ApiErrorBody(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _ApiReply(msgspec.Struct):
    error: _ApiErrorBody | None = None


_reply_decoder = msgspec.json.Decoder(_ApiReply)


def _ack_failure(data: bytes) -> BaseException | None:
    """The error of a publish acknowledgement, or None when the write was stored."""
    if b'"error"' not in data:
        return None
    try:
        error = _reply_decoder.decode(data).error
    except msgspec.DecodeError:
        error = None
    if error is None:
        return nats.js.errors.APIError(description=data.decode(errors="replace"))
    kind = (
        WrongLastSequenceError
        if error.err_code in WRONG_LAST_SEQUENCE_CODES
        else nats.js.errors.APIError
    )
    return kind(code=error.code, err_code=error.err_code, description=error.description)


async def fence_bucket(js: JetStreamContext, bucket: str, last_sequence: int) -> int:
    """Make every fenced write based on an older sequence fail; returns the new last one.

    Raises `WrongLastSequenceError` when the stream moved past `last_sequence` meanwhile.
    """
    headers = {"KV-Operation": "DEL", EXPECTED_LAST_SEQUENCE: str(last_sequence)}
    try:
        ack = await js.publish(f"$KV.{bucket}.{FENCE_KEY}", b"", headers=headers)
    except nats.js.errors.APIError as err:
        if err.err_code in WRONG_LAST_SEQUENCE_CODES:
            raise WrongLastSequenceError(
                code=err.code, err_code=err.err_code, description=err.description
            ) from err
        raise
    return ack.seq


async def write_batched(
    nc: NATS,
    bucket: str,
    writes: Sequence[tuple[str, bytes | None]],
    last_sequence: int | None = None,
    last_headers: dict[str, str] | None = None,
) -> tuple[list[str], list[tuple[str, BaseException]]]:
    """Put (value) or delete (None) many keys, acknowledged in batches; (done, failures).

    `KeyValue.put` awaits one request per key (about 40 µs each); publishing a window of
    writes with numbered reply subjects and counting the acknowledgements on one inbox
    costs a quarter of that. A write the stream refused, or not acknowledged in time, is
    a failure naming its key; the next windows are not sent after one fails. With
    `last_sequence` (the stream's, as known to its only writer) write i expects the
    stream at `last_sequence + i`: the writes done are then exactly the first ones, and
    a `WrongLastSequenceError` first in the failures means another writer came between.
    `last_headers` go with the last write only (a bulk write's mark, `PLAN_HEADER`).
    """
    inbox = nc.new_inbox()
    outcomes: dict[int, BaseException | None] = {}
    window_done = asyncio.Event()
    expected = 0

    async def on_ack(msg: Msg) -> None:
        index = int(msg.subject.rpartition(".")[2])
        outcomes[index] = _ack_failure(msg.data)
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
                index = start + offset
                reply = f"{inbox}.{index}"
                headers = None
                if last_sequence is not None:
                    headers = {EXPECTED_LAST_SEQUENCE: str(last_sequence + index)}
                if last_headers is not None and index == len(writes) - 1:
                    headers = {**(headers or {}), **last_headers}
                if value is None:
                    headers = {**(headers or {}), **_DELETE_HEADERS}
                    await nc.publish(prefix + key, b"", reply=reply, headers=headers)
                else:
                    await nc.publish(prefix + key, value, reply=reply, headers=headers)
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


_DELETE_HEADERS = {"KV-Operation": "DEL"}
_NOT_ACKED = TimeoutError("not acknowledged in time")
