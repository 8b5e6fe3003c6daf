"""JetStream KV buckets: binding to one (creating it when missing), and the bus errors.

Every reader and writer of a bucket binds through `ensure_bucket`, so whoever comes first
creates it with the same options. `BUS_ERRORS` are the failures that mean "NATS is away or
busy, try again later", as opposed to a bug that must surface.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

# NATS client and JetStream errors (nats.errors.TimeoutError is a TimeoutError too).
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, ConnectionError)


async def ensure_bucket(js: JetStreamContext, bucket: str) -> KeyValue:
    """Bind to a KV bucket, creating it (one value per key, file storage) when missing."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=bucket, history=1, storage=api.StorageType.FILE)
    except nats.js.errors.BadRequestError:
        # Somebody else created it in between with their own options: use theirs.
        return await js.key_value(bucket)
