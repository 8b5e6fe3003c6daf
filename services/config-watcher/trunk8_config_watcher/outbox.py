"""Events waiting for NATS: kept in order while it is away, published once it is back.

A file rejected while NATS is down (or before the first publication) still reaches the
`trunk8.events.*` taps later. The outbox is bounded so a long outage with a flapping file
cannot grow memory without end: past the bound the oldest events are dropped and counted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import nats.errors

from trunk8_shared.records import Event

log = logging.getLogger("trunk8.config_watcher")

OUTBOX_LIMIT = 10_000


class EventOutbox:
    """A bounded FIFO of events not published yet."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._events: deque[Event] = deque()
        self.limit = limit
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._events)

    def add(self, events: Iterable[Event]) -> None:
        """Queue events behind those already waiting."""
        self._events.extend(events)
        while len(self._events) > self.limit:
            self._events.popleft()
            self.dropped += 1

    async def flush(self, publish: Callable[[Event], Awaitable[None]]) -> None:
        """Publish every waiting event in order; one that fails stays first in line."""
        if self.dropped:
            log.warning("%d events were dropped while NATS was away (oldest first)", self.dropped)
            self.dropped = 0
        while self._events:
            try:
                await publish(self._events[0])
            except nats.errors.MaxPayloadError:
                # Never publishable: dropping it is the only way not to wedge the rest.
                log.error("dropping an event too large for NATS: %.200r", self._events[0])
            self._events.popleft()
