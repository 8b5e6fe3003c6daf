"""Read-your-writes: after a save, ask the config-watcher to reload the file and wait
until the admin's own mirror of the links bucket holds the revision it published.

When the page answers, the change is in the bucket every redirector follows (in the
all-in-one process, the redirector's mirror receives it from the same connection). If
NATS or the config-watcher is away, the save is on disk already; the answer says the
link goes live when the bus is back, which the watcher's file watch or its resync does.
A link save sends the entries it wrote, so the watcher publishes them without parsing the
whole file first (it reads the file right after, and the file wins).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trunk8_shared.bus import Bus
from trunk8_shared.datadir import DataDir
from trunk8_shared.records import (
    RELOAD_SUBJECT,
    ReloadRequest,
    json_encoder,
    reload_reply_decoder,
)

from .linkindex import LinkIndex
from .metrics import AdminMetrics

log = logging.getLogger("trunk8.admin")


class Outcome(enum.Enum):
    LIVE = "live"
    PENDING = "pending"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Published:
    """What became of a save on the serving side."""

    outcome: Outcome
    reason: str = ""


class LinkPublisher:
    """Requests a reload of a written file and waits for it to be served."""

    def __init__(
        self, bus: Bus, data: DataDir, index: LinkIndex, metrics: AdminMetrics, timeout: float
    ) -> None:
        self.bus = bus
        self.data = data
        self.index = index
        self.metrics = metrics
        self.timeout = timeout

    async def publish(
        self,
        path: Path,
        links: dict[str, dict[str, Any]] | None = None,
        removed: list[str] | None = None,
    ) -> Published:
        """Ask for `path` to be reloaded; LIVE once served, PENDING when the bus is away.

        `links` (code -> fields as written) and `removed` say what a save changed in a
        links file, so the watcher can publish it without parsing the file first.
        """
        started = time.monotonic()
        if not self.bus.is_connected:
            return Published(Outcome.PENDING)
        file = self.data.relative(path)
        request = json_encoder.encode(
            ReloadRequest(path=file, links=links or {}, removed=removed or [])
        )
        try:
            msg = await self.bus.nc.request(RELOAD_SUBJECT, request, timeout=self.timeout)
            reply = reload_reply_decoder.decode(msg.data)
        except Exception as err:  # no responder, timeout, connection lost mid-request
            log.warning("reload of %s not confirmed (%s); it goes live later", path, err)
            return Published(Outcome.PENDING)
        if reply.error:
            return Published(Outcome.REJECTED, reply.error)
        if refusal := _refusal(reply.refused, links):
            return Published(Outcome.REJECTED, refusal)
        remaining = max(0.1, self.timeout - (time.monotonic() - started))
        if not await self.index.wait_for(reply.revision, remaining):
            return Published(Outcome.PENDING)
        self.metrics.save_to_served.observe(time.monotonic() - started)
        return Published(Outcome.LIVE)


def _refusal(refused: dict[str, str], links: dict[str, Any] | None) -> str:
    """Why the watcher refused one of the entries this save sent, or ""."""
    mine = [f"{code}: {reason}" for code, reason in refused.items() if code in (links or {})]
    return "; ".join(mine)
