"""The catalog: first user in users.toml order wins a duplicated code; diffs are minimal."""

from __future__ import annotations

from trunk8_config_watcher.catalog import LinkCatalog, user_records
from trunk8_shared.datafiles import UserEntry
from trunk8_shared.records import LinkRecord


def record(code: str, owner: str, url: str = "https://example.com") -> LinkRecord:
    return LinkRecord(code=code, owner=owner, type="redirect", url=url)


def catalog_with(*names: str) -> LinkCatalog:
    catalog = LinkCatalog()
    catalog.set_users(user_records({name: UserEntry() for name in names}))
    return catalog


def test_first_user_in_file_order_wins_and_duplicate_is_reported() -> None:
    catalog = catalog_with("bob", "amy")
    catalog.set_links("amy", {"x": record("x", "amy")})
    catalog.set_links("bob", {"x": record("x", "bob")})
    changes = catalog.resolve()
    assert changes.put["x"].owner == "bob"
    assert catalog.duplicates["x"].winner == "bob"
    assert catalog.duplicates["x"].shadowed == ("amy",)


def test_removing_the_winner_hands_the_code_to_the_next_owner() -> None:
    catalog = catalog_with("bob", "amy")
    catalog.set_links("amy", {"x": record("x", "amy", "https://amy.example")})
    catalog.set_links("bob", {"x": record("x", "bob")})
    catalog.resolve()
    touched = catalog.set_links("bob", {})
    changes = catalog.resolve(touched)
    assert changes.put["x"].url == "https://amy.example"
    assert not changes.removed
    assert "x" not in catalog.duplicates


def test_unchanged_links_produce_no_changes() -> None:
    catalog = catalog_with("bob")
    catalog.set_links("bob", {"x": record("x", "bob")})
    catalog.resolve()
    touched = catalog.set_links("bob", {"x": record("x", "bob")})
    assert touched == set()
    assert len(catalog.resolve(touched)) == 0


def test_users_removed_from_the_list_lose_their_links() -> None:
    catalog = catalog_with("bob", "amy")
    catalog.set_links("amy", {"y": record("y", "amy")})
    catalog.resolve()
    catalog.set_users(user_records({"bob": UserEntry()}))
    changes = catalog.resolve()
    assert set(changes.removed) == {"y"}
    assert catalog.served == {}


def test_reordering_users_hands_duplicates_to_the_new_first() -> None:
    catalog = catalog_with("bob", "amy")
    catalog.set_links("amy", {"x": record("x", "amy"), "solo": record("solo", "amy")})
    catalog.set_links("bob", {"x": record("x", "bob")})
    catalog.resolve()
    touched = catalog.set_users(user_records({"amy": UserEntry(), "bob": UserEntry()}))
    assert touched == {"x"}  # only codes held twice can change hands
    changes = catalog.resolve(touched)
    assert changes.put["x"].owner == "amy"
    assert catalog.duplicates["x"].winner == "amy"


def test_renaming_display_names_touches_no_code() -> None:
    catalog = catalog_with("bob", "amy")
    catalog.set_links("bob", {"x": record("x", "bob")})
    catalog.set_links("amy", {"x": record("x", "amy")})
    catalog.resolve()
    renamed = user_records({"bob": UserEntry(display_name="Robert"), "amy": UserEntry()})
    assert catalog.set_users(renamed) == set()


def test_a_first_load_resolves_as_code_by_code_resolution_does() -> None:
    """Resolving everything at once (a first load) agrees with resolving file by file."""
    names = ("cid", "bob", "amy")
    files = {
        "amy": {"a": record("a", "amy"), "x": record("x", "amy"), "y": record("y", "amy")},
        "bob": {"b": record("b", "bob"), "x": record("x", "bob")},
        "cid": {"x": record("x", "cid"), "y": record("y", "cid"), "c": record("c", "cid")},
    }
    at_once, one_by_one = catalog_with(*names), catalog_with(*names)
    touched: set[str] = set()
    for owner, links in files.items():
        touched |= at_once.set_links(owner, dict(links))
        one_by_one.resolve(one_by_one.set_links(owner, dict(links)))
    changes = at_once.resolve(touched)
    assert at_once.served == one_by_one.served and changes.put == at_once.served
    assert at_once.served["x"].owner == "cid" and at_once.served["y"].owner == "cid"
    assert at_once.duplicates == one_by_one.duplicates
    assert at_once.duplicates["x"].shadowed == ("bob", "amy")
    assert at_once.owners == one_by_one.owners
