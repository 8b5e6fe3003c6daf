"""Every served link, mirrored from the `trunk8_links` bucket for listing and uniqueness.

The admin never re-parses links files to list them or to check that a code is free
(T8-W07): a `KvMirror` keeps this index equal to what the config-watcher published, and
its revision tells a save when its change is live (read-your-writes).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from trunk8_shared.codes import from_kv_key
from trunk8_shared.records import LinkRecord, link_decoder

log = logging.getLogger("trunk8.admin")


class LinkIndex:
    """Code -> record, and each owner's codes; a `MirrorSink` for the links bucket."""

    def __init__(self) -> None:
        self.links: dict[str, LinkRecord] = {}
        self.by_owner: dict[str, dict[str, LinkRecord]] = {}
        self.revision = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def _decode(self, key: str, value: bytes) -> LinkRecord | None:
        try:
            return link_decoder.decode(value)
        except msgspec.DecodeError as err:
            log.warning("ignoring undecodable link %r: %s", from_kv_key(key), err)
            return None

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a complete snapshot."""
        links: dict[str, LinkRecord] = {}
        for key, value in entries.items():
            record = self._decode(key, value)
            if record is not None:
                links[record.code] = record
        by_owner: dict[str, dict[str, LinkRecord]] = {}
        for code, record in links.items():
            by_owner.setdefault(record.owner, {})[code] = record
        self.links, self.by_owner = links, by_owner

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one change; None deletes the key."""
        code = from_kv_key(key)
        old = self.links.pop(code, None)
        if old is not None:
            self.by_owner.get(old.owner, {}).pop(code, None)
        record = self._decode(key, value) if value is not None else None
        if record is not None:
            self.links[record.code] = record
            self.by_owner.setdefault(record.owner, {})[record.code] = record

    def reached(self, revision: int) -> None:
        """The mirror applied everything up to `revision`: wake the saves waiting for it."""
        self.revision = max(self.revision, revision)
        still: list[tuple[int, asyncio.Future[None]]] = []
        for wanted, future in self._waiters:
            if wanted <= self.revision:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still.append((wanted, future))
        self._waiters = still

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Wait until the index has `revision`; False on timeout."""
        if self.revision >= revision:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True
