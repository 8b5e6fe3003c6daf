"""`trunk8 tap`: subscribe to bus subjects and print each message as one JSON line."""

from __future__ import annotations

import asyncio
import signal
import sys

import msgspec
import nats
from nats.aio.msg import Msg

from trunk8_shared.bus import redact, server_list

DEFAULT_SUBJECT = "trunk8.events.>"
# Seconds to reach NATS at start; after that, an outage is waited out (reconnects forever).
CONNECT_TIMEOUT = 5.0

_encoder = msgspec.json.Encoder()


def format_message(msg: Msg) -> bytes:
    """`{"subject": ..., "data": ...}`: JSON payloads inline, anything else as text."""
    try:
        data = msgspec.json.decode(msg.data)
    except msgspec.DecodeError:
        data = msg.data.decode("utf-8", errors="replace")
    return _encoder.encode({"subject": msg.subject, "data": data})


async def tap(url: str, subject: str) -> int:
    """Print messages on `subject` until interrupted; returns the exit status."""
    last_error: list[Exception] = []

    async def remember(err: Exception) -> None:
        last_error[:] = [err]

    try:
        # With unlimited reconnects nats-py retries the first connect forever: bound it.
        nc = await asyncio.wait_for(
            nats.connect(
                server_list(url), connect_timeout=3, max_reconnect_attempts=-1,
                allow_reconnect=True, error_cb=remember,
            ),
            CONNECT_TIMEOUT,
        )  # fmt: skip
    except Exception as err:
        reason = (last_error or [err])[0]
        print(
            f"trunk8: cannot connect to NATS at {redact(url)}: "
            f"{str(reason).strip() or type(reason).__name__}",
            file=sys.stderr,
        )
        return 1
    out = sys.stdout.buffer

    async def show(msg: Msg) -> None:
        out.write(format_message(msg) + b"\n")
        out.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await nc.subscribe(subject, cb=show)
    await nc.flush()
    print(f"tapping {subject}", file=sys.stderr, flush=True)
    await stop.wait()
    await nc.close()
    return 0
