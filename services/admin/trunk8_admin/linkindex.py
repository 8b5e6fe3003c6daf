"""Every served link, mirrored from the `trunk8_links` bucket for listing and uniqueness.

The admin never re-parses links files to list them or to check that a code is free
(T8-W07): a `KvMirror` keeps this index equal to what the config-watcher published, and
its revision tells a save when its change is live (read-your-writes).

It stays small at a million links: per code only its owner and type (one shared pair per
owner and type) and, for links that expire, the expiry; the records themselves are packed
per owner (`OwnerLinks`) and decoded when a page shows that owner's links. A load from the
records snapshot decodes no record of a redirect: each owner's codes and values come as
they are laid out (`replace_records`); its codes are indexed and its values compressed
afterwards (`settle_load`), and anything asking for a code before that indexes it first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from itertools import repeat

import msgspec

from trunk8_shared.codes import from_kv_key
from trunk8_shared.records import LinkRecord
from trunk8_shared.snapshot import RecordsView

from .ownerlinks import OwnerLinks

log = logging.getLogger("trunk8.admin")

# Owners with more links than this are decoded anew for each page rather than kept decoded.
KEEP_DECODED_MAX = 20_000


class LinkHead(msgspec.Struct, kw_only=True):
    """The fields of a link record the index keeps for every code."""

    code: str
    owner: str
    type: str
    expires_at: float | None = None


_head_decoder = msgspec.json.Decoder(LinkHead)


class CodeOwners(Mapping[str, str]):
    """A read-only view: code -> owner of every served link."""

    def __init__(self, kinds: dict[str, tuple[str, str]]) -> None:
        self._kinds = kinds

    def __getitem__(self, code: str) -> str:
        return self._kinds[code][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


class LinkIndex:
    """Code -> owner and type, each owner's packed records; a `MirrorSink` for the bucket."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[str, str]] = {}  # code -> (owner, type)
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}  # one tuple per pair
        self._expiring: dict[str, float] = {}  # code -> expires_at, links that expire only
        self._owners: dict[str, OwnerLinks] = {}
        # The last owner decoded, as (owner, version, records): paging through one owner's
        # links decodes them once (about 4.5 MB for 10,000).
        self._decoded: tuple[str, int, list[LinkRecord]] | None = None
        self.revision = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Owners a records snapshot brought whose codes are not in `_kinds` yet: their codes
        # and the types of those that are not redirects. Indexed a step at a time after the
        # load (`settle_load`), and at once by anything that reads `_kinds` before that.
        self._unindexed: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.adopted = asyncio.Event()  # set when a load left owners to index and compress

    def __contains__(self, code: object) -> bool:
        return code in self._indexed()

    def __len__(self) -> int:
        return len(self._indexed())

    def owner_of(self, code: str) -> str | None:
        """The owner of a served code, or None."""
        kind = self._indexed().get(code)
        return kind[0] if kind is not None else None

    def get(self, code: str) -> LinkRecord | None:
        """The record of a served code, or None."""
        kind = self._indexed().get(code)
        return self._owners[kind[0]].get(code) if kind is not None else None

    def count(self, owner: str) -> int:
        """How many served links `owner` has."""
        links = self._owners.get(owner)
        return len(links) if links is not None else 0

    def owners(self) -> list[str]:
        """Every owner with a served link."""
        return [owner for owner, links in self._owners.items() if len(links)]

    def records(self, owner: str) -> list[LinkRecord]:
        """The served records of one owner, decoded (in no particular order)."""
        links = self._owners.get(owner)
        if links is None:
            return []
        decoded = self._decoded
        if decoded is not None and decoded[:2] == (owner, links.version):
            return list(decoded[2])
        records = links.records()
        if len(records) <= KEEP_DECODED_MAX:
            self._decoded = (owner, links.version, records)
            return list(records)
        return records

    def type_counts(self, owner: str | None = None) -> Counter[str]:
        """Served links by type, of one owner or of everyone."""
        if owner is not None:
            links = self._owners.get(owner)
            return Counter(links.types) if links is not None else Counter()
        total: Counter[str] = Counter()
        for links in self._owners.values():
            total.update(links.types)
        return total

    def code_owners(self) -> Mapping[str, str]:
        """A live read-only view: code -> owner (no copy of a million codes)."""
        return CodeOwners(self._indexed())

    def expired(self, now: float) -> dict[str, set[str]]:
        """Owner -> codes of the served links past their expiry at `now`."""
        found: dict[str, set[str]] = defaultdict(set)
        kinds = self._indexed()
        for code, expires_at in self._expiring.items():
            if expires_at < now and code in kinds:
                found[kinds[code][0]].add(code)
        return found

    def _head(self, key: str, value: bytes) -> LinkHead | None:
        try:
            return _head_decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("ignoring undecodable link %r: %s", from_kv_key(key), err)
            return None

    def _pair(self, owner: str, link_type: str) -> tuple[str, str]:
        pair = (owner, link_type)
        return self._pairs.setdefault(pair, pair)

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a complete snapshot.

        The loop over a million values is most of the admin's warm restart: it only decodes
        heads and gathers values per owner (locals, no call per value beyond the decode);
        types are counted and values packed per owner afterwards.
        """
        fresh = LinkIndex()
        kinds, expiring, pairs = fresh._kinds, fresh._expiring, fresh._pairs
        gathered: dict[str, list[bytes]] = {}
        decode = _head_decoder.decode
        for key, value in entries.items():
            try:
                head = decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                log.warning("ignoring undecodable link %r: %s", from_kv_key(key), err)
                continue
            code, owner = head.code, head.owner
            if code in kinds:
                continue
            pair = (owner, head.type)
            kinds[code] = pairs.setdefault(pair, pair)
            if head.expires_at is not None:
                expiring[code] = head.expires_at
            values = gathered.get(owner)
            if values is None:
                values = gathered[owner] = []
            values.append(value)
        types: dict[str, Counter[str]] = defaultdict(Counter)
        for (owner, link_type), count in Counter(kinds.values()).items():
            types[owner][link_type] = count
        for owner, values in gathered.items():
            fresh._owners[owner] = links = OwnerLinks()
            links.load(values, types[owner])
        del gathered
        self._kinds, self._pairs, self._unindexed = fresh._kinds, fresh._pairs, {}
        self._expiring, self._owners = fresh._expiring, fresh._owners
        self._decoded = None

    def replace_records(self, records: RecordsView) -> None:
        """Swap in a records snapshot, per owner: no record of a redirect is decoded.

        Each owner adopts its values as they are (compressed later); a code listed under
        no `others` is a redirect, and the few others are decoded for their type. Codes
        are indexed after the load (`settle_load`): a million dict entries are a third of
        a second that nothing waits for, unless it asks first.
        """
        fresh = LinkIndex()
        other_types: dict[str, dict[str, str]] = {owner: {} for owner in records.owners}
        for key, value in records.others.items():
            head = self._head(key, value)
            if head is not None and head.owner in other_types:
                other_types[head.owner][head.code] = head.type
        for owner, links in records.owners.items():
            types = Counter(other_types[owner].values())
            types["redirect"] = len(links.codes) - types.total()
            fresh._owners[owner] = owner_links = OwnerLinks()
            owner_links.adopt(links.records, +types)
            fresh._unindexed[owner] = (links.codes, other_types[owner])
        fresh._expiring = dict(records.expiring)
        self._kinds, self._pairs, self._unindexed = fresh._kinds, fresh._pairs, fresh._unindexed
        self._expiring, self._owners = fresh._expiring, fresh._owners
        self._decoded = None
        self.adopted.set()

    def _indexed(self) -> dict[str, tuple[str, str]]:
        """Code -> (owner, type) of every link, indexing what a load left to index."""
        while self._unindexed:
            self._index_next()
        return self._kinds

    def _index_next(self) -> None:
        """Index the codes of one owner a load brought (the first listed keeps a code)."""
        owner, (codes, other_types) = next(iter(self._unindexed.items()))
        del self._unindexed[owner]
        kinds = self._kinds
        mine = dict(zip(codes, repeat(self._pair(owner, "redirect"))))
        for code, link_type in other_types.items():
            if code in mine:
                mine[code] = self._pair(owner, link_type)
        if not kinds.keys().isdisjoint(mine):  # a damaged snapshot: never from the watcher
            log.warning("records snapshot: codes of %r listed under another owner too", owner)
            for code in kinds.keys() & mine.keys():
                self._owners[owner].remove(code, mine.pop(code)[1])
        kinds.update(mine)

    async def settle_load(self) -> None:
        """Index what a load brought, an owner per step, then compress the adopted values.

        Compression runs in a worker thread (zlib releases the GIL), an owner at a time:
        the event loop keeps serving meanwhile. Runs for as long as the index lives.
        """
        while True:
            await self.adopted.wait()
            self.adopted.clear()
            while self._unindexed:
                self._index_next()
                await asyncio.sleep(0)
            for links in list(self._owners.values()):
                await links.pack()

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one change; None deletes the key."""
        code = from_kv_key(key)
        head = self._head(key, value) if value is not None else None
        old = self._indexed().get(code)
        if old is not None and (head is None or head.owner != old[0]):
            self._owners[old[0]].remove(code, old[1])
            del self._kinds[code]
            old = None
        self._expiring.pop(code, None)
        if head is None or value is None:
            return
        self._kinds[code] = self._pair(head.owner, head.type)
        if head.expires_at is not None:
            self._expiring[code] = head.expires_at
        links = self._owners.get(head.owner)
        if links is None:
            links = self._owners[head.owner] = OwnerLinks()
        links.put(code, value, head.type, old[1] if old is not None else None)

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
