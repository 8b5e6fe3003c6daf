"""The link catalog: every user's last good links, and which owner serves each code.

Pure state, no I/O. Codes present in several users' files go to the first user in
users.toml order, as in Trunk8 (T8-034); the catalog reports such duplicates. A warm start
gives it the links of unchanged files undecoded (`RememberedLinks`, the records exactly
as published): such an owner's records are decoded only when something needs them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Set
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import is_not

import msgspec

from trunk8_shared.datafiles import LinkEntry, UserEntry
from trunk8_shared.expiry import expiry_timestamp
from trunk8_shared.records import LinkRecord, UserRecord

_records_decoder = msgspec.json.Decoder(list[LinkRecord])


class RememberedLinks(msgspec.Struct, frozen=True):
    """One user's links as published, verified against the unchanged file, not decoded.

    `records` is each code's record (the bucket's bytes) joined by commas, in file order.
    """

    codes: list[str]
    records: bytes

    def decode(self) -> dict[str, LinkRecord]:
        """The links, decoded in one call (the records joined by commas are a JSON array)."""
        records = _records_decoder.decode(b"[" + self.records + b"]")
        return dict(zip(self.codes, records, strict=True))


def link_record(code: str, owner: str, entry: LinkEntry) -> LinkRecord:
    """The record served for one links.toml entry."""
    return LinkRecord(
        code=code,
        owner=owner,
        type=entry.type,
        url=entry.url,
        path=entry.path,
        original_filename=entry.original_filename,
        file_size=entry.file_size if isinstance(entry.file_size, int) else None,
        mime_type=entry.mime_type if isinstance(entry.mime_type, str) else None,
        upload_date=entry.upload_date if isinstance(entry.upload_date, str) else None,
        expiration_date=entry.expiration_date,
        expires_at=expiry_timestamp(entry.expiration_date),
    )


def user_records(users: dict[str, UserEntry]) -> dict[str, UserRecord]:
    """The public view of each account, with its position in users.toml."""
    return {
        name: UserRecord(
            username=name,
            display_name=entry.display_name or name,
            is_admin=entry.is_admin,
            created_at=entry.created_at,
            position=position,
        )
        for position, (name, entry) in enumerate(users.items())
    }


@dataclass
class Changes:
    """What changed in the served links: new or changed winners, and removed codes."""

    put: dict[str, LinkRecord] = field(default_factory=dict)
    removed: dict[str, LinkRecord] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.put) + len(self.removed)


@dataclass(frozen=True)
class Duplicate:
    """A code defined by several users; the first one in users.toml serves it."""

    code: str
    winner: str
    shadowed: tuple[str, ...]


class LinkCatalog:
    """Users in order, their links, and the served table derived from them.

    `owners` indexes which users define each code, so resolving a code costs as many
    steps as it has owners, whatever the number of users. A code of one user (nearly all)
    maps to that user's name, a set only for codes several users define: a million
    one-name sets cost about 200 MB and a second of a warm start.

    A user taken from a warm start (`remember_links`) sits in `remembered` instead of
    `links_by_user` until something needs its records (a change of its links, a code it
    serves being resolved, `decode_all`); its codes are in `owners` from the start, and
    `served` lacks the codes it serves until then (`link_count` counts them).
    """

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.links_by_user: dict[str, dict[str, LinkRecord]] = {}
        self.remembered: dict[str, RememberedLinks] = {}
        self.owners: dict[str, str | set[str]] = {}
        self.served: dict[str, LinkRecord] = {}
        self.duplicates: dict[str, Duplicate] = {}
        self._shared_codes = False  # a code of two users was seen: index with care

    def has_links(self, owner: str) -> bool:
        """Whether the user's links are known (decoded or remembered)."""
        return owner in self.links_by_user or owner in self.remembered

    def link_count(self, owner: str | None = None) -> int:
        """Links served (every code someone defines), or the links of one user."""
        if owner is None:
            return len(self.owners)  # after `resolve`, each code of `owners` is served
        remembered = self.remembered.get(owner)
        if remembered is not None:
            return len(remembered.codes)
        return len(self.links_by_user.get(owner, ()))

    def remember_links(self, owner: str, remembered: RememberedLinks) -> set[str]:
        """Take a user's links as published, undecoded (a warm start's unchanged file).

        Only for a user whose links are not known yet; returns the codes it defines.
        """
        if self.has_links(owner):
            raise ValueError(f"the links of {owner!r} are known already")
        self.remembered[owner] = remembered
        self._index_new(owner, remembered.codes)
        return set(remembered.codes)

    def links_of(self, owner: str) -> dict[str, LinkRecord]:
        """One user's links, decoded now if they were remembered undecoded."""
        if owner in self.remembered:
            self._decode(owner)
        return self.links_by_user.get(owner, {})

    def decode_all(self) -> None:
        """Decode every remembered user's links (a full diff or a snapshot needs them)."""
        for owner in list(self.remembered):
            self._decode(owner)

    def _decode(self, owner: str) -> None:
        """Decode a remembered user's links; serve those of its codes it wins."""
        links = self.remembered[owner].decode()
        del self.remembered[owner]
        self.links_by_user[owner] = links
        owners, served = self.owners, self.served
        if not any(isinstance(owners.get(code), set) for code in links):
            served.update(links)  # nearly always: every code its own
            return
        for code, record in links.items():
            holders = owners.get(code)
            if holders == owner or (
                isinstance(holders, set) and min(holders, key=self._position) == owner
            ):
                served[code] = record

    def _index_new(self, owner: str, codes: Collection[str]) -> None:
        """Add a user with no links so far as a holder of each of `codes`."""
        owners = self.owners
        if not self._shared_codes:
            # Codes of two users are rare: add them all in C (a million at a start) and
            # count. Only when the count shows one taken over is the index built again
            # with care, once; from then on shared codes are looked for first.
            before = len(owners)
            owners.update(zip(codes, repeat(owner), strict=False))
            if len(owners) - before == len(codes):
                return
            self._shared_codes = True
            self._reindex()
            return
        shared = {code: owners[code] for code in owners.keys() & codes}
        owners.update(zip(codes, repeat(owner), strict=False))
        for code, holders in shared.items():
            owners[code] = holders
            self._add_owner(code, owner)

    def _reindex(self) -> None:
        """Build `owners` again from every user's codes, decoded or remembered."""
        self.owners = {}
        for owner, links in self.links_by_user.items():
            for code in links:
                self._add_owner(code, owner)
        for owner, remembered in self.remembered.items():
            for code in remembered.codes:
                self._add_owner(code, owner)

    def set_users(self, users: dict[str, UserRecord]) -> set[str]:
        """Replace the account list; returns the codes whose owner may have changed.

        Links of accounts no longer listed are dropped; when the order of the remaining
        accounts changes, every code defined twice may change hands.
        """
        before = [name for name in self.users if name in users]
        self.users = users
        touched: set[str] = set()
        known = [*self.links_by_user, *self.remembered]
        for name in [name for name in known if name not in users]:
            touched |= self.set_links(name, {})
            del self.links_by_user[name]
        if before != [name for name in users if name in before]:
            touched |= {code for code, owners in self.owners.items() if isinstance(owners, set)}
        return touched

    def set_links(self, owner: str, links: dict[str, LinkRecord]) -> set[str]:
        """Replace one user's links; returns the codes whose owner may have changed."""
        previous = self.links_of(owner)
        self.links_by_user[owner] = links
        if not previous:  # a first load: every code is new (a million at a start)
            self._index_new(owner, links)
            return set(links)
        removed: set[str] = set()
        if links.keys() != previous.keys():  # compared in C, without building a set
            removed = previous.keys() - links.keys()
            for code in removed:
                self._remove_owner(code, owner)
            for code in links.keys() - previous.keys():
                self._add_owner(code, owner)
        # A re-read of a 100,000-link file usually changes a few, and keeps the very record
        # objects of the others (`entrymemo`): an identity test in C passes those over,
        # and only the rest are compared field by field.
        codes = list(links)
        other = compress(codes, map(is_not, map(previous.get, codes), links.values()))
        changed = {code for code in other if previous.get(code) != links[code]}
        return changed | removed

    def update_links(self, owner: str, put: dict[str, LinkRecord], gone: Iterable[str]) -> set[str]:
        """Change some of one user's links (a save); returns the codes that changed.

        Costs as many steps as there are changed codes, whatever the size of the file.
        """
        links = self.links_of(owner)
        self.links_by_user[owner] = links
        touched: set[str] = set()
        for code in gone:
            if links.pop(code, None) is not None:
                touched.add(code)
                self._remove_owner(code, owner)
        for code, record in put.items():
            if links.get(code) != record:
                touched.add(code)
                links[code] = record
                self._add_owner(code, owner)
        return touched

    def _add_owner(self, code: str, owner: str) -> None:
        holders = self.owners.get(code)
        if holders is None or holders == owner:
            self.owners[code] = owner
        elif isinstance(holders, set):
            holders.add(owner)
        else:
            self.owners[code] = {holders, owner}

    def _remove_owner(self, code: str, owner: str) -> None:
        holders = self.owners.get(code)
        if isinstance(holders, set):
            holders.discard(owner)
            if len(holders) == 1:
                self.owners[code] = next(iter(holders))
        elif holders == owner:
            del self.owners[code]

    def resolve(self, codes: Iterable[str] | None = None) -> Changes:
        """Recompute the served owner of `codes` (all codes when None) and return the diff."""
        if codes is None:
            if not self.served:
                return self._resolve_first()
            codes = self.served.keys() | self.owners.keys()
        if not self.served and isinstance(codes, Set) and self.owners.keys() <= codes:
            return self._resolve_first()
        changes = Changes()
        owners, served = self.owners, self.served  # a first load resolves a million codes
        for code in codes:
            holders = owners.get(code)
            current = served.get(code)
            if not holders:
                if current is not None:
                    del served[code]
                    changes.removed[code] = current
                if self.duplicates:
                    self.duplicates.pop(code, None)
                continue
            if isinstance(holders, str):  # most codes: no ordering to do
                first = holders
                if self.duplicates:
                    self.duplicates.pop(code, None)
            else:
                first, *shadowed = sorted(holders, key=self._position)
                self.duplicates[code] = Duplicate(code, first, tuple(shadowed))
            winner = self.links_of(first)[code]
            if winner != current:
                served[code] = winner
                changes.put[code] = winner
        return changes

    def _resolve_first(self) -> Changes:
        """Resolve every code while none is served yet (a first load), a file at a time.

        Files are laid over each other from the last user to the first, so a code defined
        twice ends up with its first user's record, as `resolve` would choose. A remembered
        user's codes are taken out instead: it serves them once decoded.
        """
        served = self.served
        every = [*self.links_by_user, *self.remembered]
        for owner in sorted(every, key=self._position, reverse=True):
            remembered = self.remembered.get(owner)
            if remembered is None:
                served.update(self.links_by_user[owner])
            elif served:
                for code in remembered.codes:
                    served.pop(code, None)
        self.duplicates = {}
        defined = sum(map(len, self.links_by_user.values()))
        defined += sum(len(remembered.codes) for remembered in self.remembered.values())
        if defined == len(self.owners):
            return Changes(put=dict(served))  # no code of two users: no duplicate to find
        for code, holders in self.owners.items():
            if isinstance(holders, set):
                first, *shadowed = sorted(holders, key=self._position)
                self.duplicates[code] = Duplicate(code, first, tuple(shadowed))
        return Changes(put=dict(served))

    def _position(self, owner: str) -> int:
        user = self.users.get(owner)
        return user.position if user is not None else len(self.users)
