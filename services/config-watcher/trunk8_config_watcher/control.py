"""The control responder: `trunk8.control.reload` requests, answered with the links revision.

The admin service asks for a file to be re-read after writing it and waits for the
revision in the reply (read-your-writes). A request that carries the entries the admin
changed is answered from them, without parsing the file; the file is read soon after, off
the admin's path, and any difference is published as a correction. The handler runs as a
NATS callback, so it never raises: every failure becomes the reply's `error`.

Only the active watcher subscribes (no queue group: a standby must never take a request).
A watcher that finds out while answering that it no longer holds the lease stays silent,
so the asker gets the new active one's reply.
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

from .lease import NotActiveError
from .publisher import PUBLISH_ERRORS
from .watcher import ConfigWatcher

log = logging.getLogger("trunk8.config_watcher")

# How long a reload request may wait for the first publication before it is refused.
READY_WAIT = 30.0
# Seconds after a save answered from its entries before its file is read: saves in a
# burst share one read (the file watch usually reads it first, and this costs a hash).
FOLLOW_UP_DELAY = 0.25


async def answer_reload(watcher: ConfigWatcher, msg: Msg) -> None:
    """Reload a file (or everything) and reply with the revision, or the error."""
    try:
        await asyncio.wait_for(watcher.ready.wait(), READY_WAIT)
        request = reload_request_decoder.decode(msg.data) if msg.data else None
        if request is not None and request.path and request.carries_changes:
            path = watcher.data.root / request.path
            reply = await watcher.apply_saved(path, request.links, request.removed)
        else:
            paths = {watcher.data.root / request.path} if request and request.path else None
            reply = await watcher.reload(paths, join_saved=False)
    except TimeoutError:
        reply = ReloadReply(revision=0, error="not ready: nothing is published yet")
    except NotActiveError:
        return  # standing by now: the active watcher answers
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


async def read_saved_files(watcher: ConfigWatcher) -> None:
    """Read each file saved from its entries soon after, so the file has the last word."""
    while True:
        await watcher.follow_up_due.wait()
        await asyncio.sleep(FOLLOW_UP_DELAY)  # a deliberate delay: one read for a burst
        paths = watcher.take_saved()
        try:
            await watcher.reload(paths, join_saved=False)
        except PUBLISH_ERRORS as err:  # the sync loop publishes once NATS is back
            log.warning("follow-up read of %d saved file(s) not published (%s)", len(paths), err)


async def serve_reload_requests(watcher: ConfigWatcher) -> None:
    """Answer reload requests while active, until cancelled."""
    await watcher.bus.wait_connected()

    async def callback(msg: Msg) -> None:
        if watcher.lease.active:  # a request delivered just before standing by: not ours
            await answer_reload(watcher, msg)

    follow_ups = asyncio.create_task(read_saved_files(watcher), name="config-follow-up")
    try:
        while True:
            await watcher.lease.wait_active()
            sub = await watcher.bus.nc.subscribe(RELOAD_SUBJECT, cb=callback)
            try:
                await watcher.lease.wait_inactive()
            finally:
                with contextlib.suppress(*PUBLISH_ERRORS):
                    await sub.unsubscribe()
    finally:
        follow_ups.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow_ups
