"""Remembered (undecoded) users in the catalog behave as decoded ones, on every path.

A warm start keeps an unchanged file's links as the bytes the bucket holds and decodes
them only when something needs them. Each test runs the same steps on a catalog whose
users were all decoded and on one whose users were remembered (all, or some), and
compares what they would publish; plus the checks that decide whether a file's links may
be remembered at all, and what a full sync compares.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable

import pytest

from trunk8_config_watcher.catalog import Changes, LinkCatalog, RememberedLinks, user_records
from trunk8_config_watcher.parsememo import FileMemo, PublishedLinks, remembered_links, verified
from trunk8_config_watcher.remembered import codes_to_diff, decode_unpublished, still_published
from trunk8_shared.datafiles import UserEntry
from trunk8_shared.records import LinkRecord, json_encoder
from trunk8_shared.snapshot import OwnerRecords

FILES = {
    "amy": {
        "a1": "https://amy.example/1",
        "x": "https://amy.example/x",
        "é": "https://amy.example/e",
    },
    "bob": {
        "b1": "https://bob.example/1",
        "x": "https://bob.example/x",
        "y": "https://bob.example/y",
    },
    "cid": {"c1": "https://cid.example/1", "y": "https://cid.example/y"},
}


def links_of(owner: str, urls: dict[str, str]) -> dict[str, LinkRecord]:
    return {
        code: LinkRecord(code=code, owner=owner, type="redirect", url=url)
        for code, url in urls.items()
    }


def remembered(links: dict[str, LinkRecord]) -> RememberedLinks:
    return RememberedLinks(list(links), b",".join(map(json_encoder.encode, links.values())))


def catalog(order: tuple[str, ...], remember: set[str]) -> LinkCatalog:
    """A first load of FILES: the users in `remember` taken undecoded."""
    result = LinkCatalog()
    result.set_users(user_records({name: UserEntry() for name in order}))
    for owner in order:
        links = links_of(owner, FILES[owner])
        if owner in remember:
            result.remember_links(owner, remembered(links))
        else:
            result.set_links(owner, links)
    result.resolve(None)
    return result


def effective(of: LinkCatalog) -> dict[str, LinkRecord]:
    """What `of` serves, remembered users included (decoded on a copy)."""
    full = copy.deepcopy(of)
    full.decode_all()
    assert not full.remembered
    return full.served


def assert_same_changes(decoded: Changes, lazy: Changes, served: dict[str, LinkRecord]) -> None:
    """The same removals and puts; a lazy extra put only re-states a served record."""
    assert lazy.removed.keys() == decoded.removed.keys()
    for code, record in decoded.put.items():
        assert lazy.put[code] == record
    for code in lazy.put.keys() - decoded.put.keys():
        assert lazy.put[code] == served[code]  # published as it is: no write, no event


Step = Callable[[LinkCatalog], set[str]]

STEPS: dict[str, Step] = {
    "a hand edit of a remembered file": lambda c: c.set_links(
        "bob",
        links_of(
            "bob", {"b1": "https://bob.example/new", "y": FILES["bob"]["y"], "z": "https://z"}
        ),
    ),
    "a save in a remembered file": lambda c: c.update_links(
        "cid",
        links_of("cid", {"c2": "https://cid.example/2", "y": "https://cid.example/y2"}),
        ["c1"],
    ),
    "a file emptied": lambda c: c.set_links("amy", {}),
    "users reordered": lambda c: c.set_users(
        user_records({name: UserEntry() for name in ("cid", "bob", "amy")})
    ),
    "a user removed": lambda c: c.set_users(
        user_records({name: UserEntry() for name in ("amy", "cid")})
    ),
}


@pytest.mark.parametrize("remember", [{"amy", "bob", "cid"}, {"amy", "cid"}, {"bob"}])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_remembered_user_changes_as_a_decoded_one(step: str, remember: set[str]) -> None:
    order = ("amy", "bob", "cid")
    decoded, lazy = catalog(order, set()), catalog(order, remember)
    assert effective(lazy) == decoded.served
    assert lazy.duplicates == decoded.duplicates and lazy.link_count() == decoded.link_count()
    # Nothing decoded yet but what the step needs.
    before = set(lazy.remembered)
    want = decoded.resolve(STEPS[step](decoded))
    got = lazy.resolve(STEPS[step](lazy))
    assert_same_changes(want, got, decoded.served)
    assert effective(lazy) == decoded.served
    assert lazy.duplicates == decoded.duplicates
    assert lazy.link_count() == decoded.link_count() == len(decoded.served)
    assert set(lazy.remembered) <= before


def test_an_edit_decodes_only_the_users_it_needs() -> None:
    lazy = catalog(("amy", "bob", "cid"), {"amy", "bob", "cid"})
    assert lazy.served == {}  # every code served by a remembered user
    lazy.resolve(lazy.update_links("cid", links_of("cid", {"c9": "https://c9"}), []))
    assert set(lazy.remembered) == {"amy", "bob"}
    assert lazy.links_of("cid")["c9"].url == "https://c9"


def test_a_duplicate_won_by_a_remembered_user_is_not_served_by_a_decoded_one() -> None:
    # amy (first) remembered, bob decoded: x is amy's, not bob's, before any decode.
    lazy = catalog(("amy", "bob", "cid"), {"amy"})
    assert "x" not in lazy.served and lazy.duplicates["x"].winner == "amy"
    assert effective(lazy)["x"].owner == "amy"


def _memo(links: RememberedLinks) -> FileMemo:
    return FileMemo("file-digest", list(links.codes), {}, hashlib.sha256(links.records).hexdigest())


def test_only_links_that_are_what_the_file_produced_are_remembered() -> None:
    links = remembered(links_of("bob", FILES["bob"]))
    memo = _memo(links)
    assert verified(memo, links) is links
    # Same records, codes listed otherwise (a memo or a snapshot not of this file).
    swapped = RememberedLinks([links.codes[1], links.codes[0], *links.codes[2:]], links.records)
    assert verified(memo, swapped) is None
    # A chunk corrupted in the snapshot: one byte differs.
    corrupt = RememberedLinks(
        links.codes, links.records.replace(b"bob.example/1", b"bob.example/2")
    )
    assert verified(memo, corrupt) is None
    values = {code: json_encoder.encode(r) for code, r in links_of("bob", FILES["bob"]).items()}

    def remembered_from(values: dict[str, bytes], digest: str = "file-digest") -> object:
        return remembered_links(memo, digest, "bob", PublishedLinks(values))

    assert remembered_from(values) == links
    assert remembered_from(values, "other-bytes") is None  # the file changed
    assert remembered_from({**values, "y": b"{}"}) is None
    assert remembered_from({code: v for code, v in values.items() if code != "y"}) is None


def test_a_snapshots_records_of_the_owner_are_used_as_they_are_while_current() -> None:
    links = remembered(links_of("bob", FILES["bob"]))
    memo = _memo(links)
    chunk = OwnerRecords(list(links.codes), links.records)
    # The bucket's values disagree: only the snapshot's records can have been used.
    stale = dict.fromkeys(links.codes, b"{}")
    found = remembered_links(memo, "file-digest", "bob", PublishedLinks(stale, {"bob": chunk}))
    assert found is not None and found.records == links.records
    # One of bob's keys changed since the snapshot: its values are gathered (and differ).
    changed = PublishedLinks(stale, {"bob": chunk}, {"y"})
    assert remembered_links(memo, "file-digest", "bob", changed) is None
    assert PublishedLinks(stale, {"bob": chunk}, {"other"}).records_of("bob") is chunk
    # Codes listed otherwise in the snapshot, or records corrupted: not bob's file.
    swapped = OwnerRecords(list(reversed(links.codes)), links.records)
    corrupt = OwnerRecords(list(links.codes), links.records.replace(b"/1", b"/2"))
    for wrong in (swapped, corrupt):
        published = PublishedLinks(stale, {"bob": wrong})
        assert remembered_links(memo, "file-digest", "bob", published) is None


def test_a_full_sync_compares_only_what_is_not_remembered_as_published() -> None:
    lazy = catalog(("amy", "bob", "cid"), {"amy", "cid"})
    published = {
        "a1": json_encoder.encode(effective(lazy)["a1"]),
        "x": json_encoder.encode(effective(lazy)["x"]),
        "=w6k": json_encoder.encode(effective(lazy)["é"]),
        "c1": json_encoder.encode(effective(lazy)["c1"]),
        "b1": b"{}",  # bob is decoded: compared, whatever the bucket holds
        "y": json_encoder.encode(effective(lazy)["y"]),
    }
    assert still_published(lazy.remembered["amy"], published)
    assert not still_published(lazy.remembered["cid"], published)  # y is bob's there
    assert decode_unpublished(lazy, published) == 1
    assert set(lazy.remembered) == {"amy"}
    assert sorted(codes_to_diff(lazy, published) or ()) == sorted(lazy.served)
    # A key nobody defines any more is compared (deleted); a foreign one needs a full diff.
    assert "gone" in (codes_to_diff(lazy, {**published, "gone": b"{}"}) or ())
    assert codes_to_diff(lazy, {**published, "not a code!": b"{}"}) is None
    lazy.decode_all()
    assert codes_to_diff(lazy, published) is None  # nothing remembered: a full diff
