"""The control responder: `trunk8.control.reload` requests, answered with the links revision.

The admin service asks for a file to be re-read after writing it and waits for the
revision in the reply (read-your-writes). The handler runs as a NATS callback, so it
never raises: every failure becomes the reply's `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg

from trunk8_shared.records import (
    RELOAD_SUBJECT,
    ReloadReply,
    json_encoder,
    reload_request_decoder,
)

from .publisher import PUBLISH_ERRORS
from .watcher import ConfigWatcher

log = logging.getLogger("trunk8.config_watcher")

# How long a reload request may wait for the first publication before it is refused.
READY_WAIT = 30.0
QUEUE_GROUP = "trunk8-config-watcher"


async def answer_reload(watcher: ConfigWatcher, msg: Msg) -> None:
    """Reload a file (or everything) and reply with the revision, or the error."""
    try:
        await asyncio.wait_for(watcher.ready.wait(), READY_WAIT)
        request = reload_request_decoder.decode(msg.data) if msg.data else None
        paths = None
        if request is not None and request.path:
            paths = {watcher.data.root / request.path}
        reply = await watcher.reload(paths)
    except TimeoutError:
        reply = ReloadReply(revision=0, error="not ready: nothing is published yet")
    except PUBLISH_ERRORS as err:
        error = f"not published yet ({type(err).__name__}: {err})"
        reply = ReloadReply(revision=watcher.publisher.links.revision, error=error)
    except Exception as err:  # a NATS callback must not raise: the asker gets the error
        if not isinstance(err, msgspec.DecodeError):  # a bad request is the asker's fault
            log.exception("reload request failed")
        error = f"{type(err).__name__}: {err}"
        reply = ReloadReply(revision=watcher.publisher.links.revision, error=error)
    if msg.reply:
        with contextlib.suppress(*PUBLISH_ERRORS):  # the asker times out on its own
            await msg.respond(json_encoder.encode(reply))


async def serve_reload_requests(watcher: ConfigWatcher) -> None:
    """Answer reload requests until cancelled (one responder per queue group)."""
    await watcher.bus.wait_connected()

    async def callback(msg: Msg) -> None:
        await answer_reload(watcher, msg)

    sub = await watcher.bus.nc.subscribe(RELOAD_SUBJECT, queue=QUEUE_GROUP, cb=callback)
    try:
        await asyncio.Future()  # until cancelled
    finally:
        with contextlib.suppress(*PUBLISH_ERRORS):
            await sub.unsubscribe()
