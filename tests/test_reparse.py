"""A re-parse of an edited links file yields exactly the catalog a fresh full parse yields.

The config-watcher re-checks only the entries that changed and keeps the record objects of
the others (`entrymemo`), diffs by identity first (`LinkCatalog.set_links`), and digests
the parse memo only when it saves it; a large file has only the tables whose text changed
parsed (`tablesplice`). Each test edits real files in a temporary data directory, re-reads
them with one long-lived `Reloader` (as the service does, `prepare` ahead of `reload`) and
compares its state with a new `Reloader` that parsed everything once; with the `splicing`
fixture's second value every file is spliced, whatever its size.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import StartSystem, wait_until, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trunk8_config_watcher import memosaver
from trunk8_config_watcher import reloader as reloader_module
from trunk8_config_watcher.app import CONFIG_WATCHER
from trunk8_config_watcher.catalog import LinkCatalog
from trunk8_config_watcher.parsememo import digest_of, load_memo, save_memo
from trunk8_config_watcher.rejections import Rejections
from trunk8_config_watcher.reloader import Reloader
from trunk8_shared import datafiles
from trunk8_shared.datadir import DataDir

USERS = "[users.alice]\nis_admin = true\n[users.bob]\nis_admin = false\n"
ALICE = '[links.shared1]\ntype = "redirect"\nurl = "https://alice.example/1"\n'
CODES = ["a", "b", "c", "d", "e", "f", "shared1", "a-b", "x_y", "has space", "admin", "Zz9"]


@dataclass
class LinksFile:
    """A links file as a list of entries, rendered as TOML the way a person might write it."""

    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def render(self) -> str:
        parts = []
        for code, values in self.entries:
            key = code if code.replace("-", "").replace("_", "").isalnum() else f'"{code}"'
            lines = [f"[links.{key}]"]
            for name, value in values.items():
                lines.append(f"{name} = {_toml_value(value)}")
            parts.append("\n".join(lines) + "\n")
        return "\n".join(parts) or "[links]\n"  # an empty file is one being rewritten


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | dt.date):
        return value.isoformat() if isinstance(value, dt.date) else repr(value)
    return f'"{value}"'


def redirect(url: str, **more: Any) -> dict[str, Any]:
    return {"type": "redirect", "url": url, **more}


def start_files(root: Path, bob: LinksFile) -> Path:
    write(root / "users" / "users.toml", USERS)
    write(root / "users" / "alice" / "links.toml", ALICE)
    path = root / "users" / "bob" / "links.toml"
    write(path, bob.render())
    return path


def new_reloader(root: Path) -> Reloader:
    reloader = Reloader(DataDir(root), LinkCatalog(), Rejections(), max_bytes=1_000_000)
    reloader.load_all()
    return reloader


def reparse(reloader: Reloader, path: Path) -> None:
    """What the watcher does on a file event: parse ahead, then reload under its lock."""
    reloader.prepared = reloader.prepare({path})
    try:
        reloader.reload({path})
    finally:
        reloader.prepared = {}


@pytest.fixture(params=["whole", "splicing"])
def splicing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test as is, and with every links file spliced whatever its size."""
    if request.param == "splicing":
        monkeypatch.setattr(reloader_module, "LAYOUT_MIN_BYTES", 0)
    return bool(request.param == "splicing")


def assert_as_fresh(reloader: Reloader, root: Path) -> None:
    fresh = new_reloader(root)
    file = "users/bob/links.toml"
    assert reloader.rejections.files.get(file) == fresh.rejections.files.get(file)
    if file in fresh.rejections.files:
        return  # rejected whole: the long-lived one keeps its last good links, by design
    assert reloader.catalog.served == fresh.catalog.served
    for owner, links in fresh.catalog.links_by_user.items():
        assert list(reloader.catalog.links_by_user[owner].items()) == list(links.items())
    assert reloader.catalog.owners == fresh.catalog.owners
    assert reloader.catalog.duplicates == fresh.catalog.duplicates
    assert reloader.rejections.entries == fresh.rejections.entries
    assert reloader.rejections.files == fresh.rejections.files


BASE = LinksFile(
    [
        ("a", redirect("https://e.x/a")),
        ("b", redirect("https://e.x/b", file_size=3)),
        ("c", redirect("https://e.x/c")),
        ("bad", redirect("javascript:alert(1)")),
        ("d", {"type": "markdown", "path": "d.md"}),
    ]
)


def _edited(change: Any) -> LinksFile:
    entries = [(code, dict(values)) for code, values in BASE.entries]
    change(entries)
    return LinksFile(entries)


EDITS: dict[str, LinksFile] = {
    "one URL changed": _edited(lambda e: e[0][1].update(url="https://e.x/A")),
    "a link added": _edited(lambda e: e.insert(2, ("new", redirect("https://e.x/new")))),
    "a link removed": _edited(lambda e: e.pop(1)),
    "a link renamed": _edited(lambda e: e.__setitem__(2, ("c2", e[2][1]))),
    "a bad entry introduced": _edited(lambda e: e[0][1].update(url="ftp://e.x/a")),
    "the bad entry fixed": _edited(lambda e: e[3][1].update(url="https://e.x/fixed")),
    "reordered": _edited(lambda e: e.reverse()),
    "a value of another kind": _edited(lambda e: e[1][1].update(file_size=3.0)),
    "a native TOML date": _edited(lambda e: e[0][1].update(expiration_date=dt.date(2099, 1, 2))),
    "a code alice serves first": _edited(lambda e: e.append(("shared1", redirect("https://b/")))),
    "an entry of the wrong shape": _edited(lambda e: e[2][1].update(type=7)),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_each_kind_of_edit_matches_a_fresh_parse(tmp_path: Path, edit: str, splicing: bool) -> None:
    root = tmp_path / "data"
    path = start_files(root, BASE)
    reloader = new_reloader(root)
    write(path, EDITS[edit].render())
    reparse(reloader, path)
    assert_as_fresh(reloader, root)
    write(path, BASE.render())  # and back
    reparse(reloader, path)
    assert_as_fresh(reloader, root)


def test_an_unchanged_rewrite_and_a_rejected_file_then_fixed(
    tmp_path: Path, splicing: bool
) -> None:
    root = tmp_path / "data"
    path = start_files(root, BASE)
    reloader = new_reloader(root)
    records = dict(reloader.catalog.links_by_user["bob"])
    write(path, BASE.render())  # rewritten identical: nothing re-checked or replaced
    reparse(reloader, path)
    assert all(reloader.catalog.links_by_user["bob"][c] is r for c, r in records.items())
    write(path, BASE.render() + "\n# a comment\n")  # other bytes, the same entries
    reparse(reloader, path)
    assert all(reloader.catalog.links_by_user["bob"][c] is r for c, r in records.items())
    assert_as_fresh(reloader, root)
    write(path, "[links.a\n")  # rejected whole: the last good links stay
    reparse(reloader, path)
    assert "users/bob/links.toml" in reloader.rejections.files
    assert reloader.catalog.links_by_user["bob"] == records
    write(path, EDITS["one URL changed"].render())
    reparse(reloader, path)
    assert_as_fresh(reloader, root)


def test_the_saved_memo_digests_what_each_file_produced(tmp_path: Path) -> None:
    """The records digest is taken when the memo is saved, of the links the bytes produced."""
    root = tmp_path / "data"
    path = start_files(root, BASE)
    reloader = new_reloader(root)
    write(path, EDITS["a link added"].render())
    reparse(reloader, path)
    assert reloader.memo_changed
    memo_path = root / ".trunk8" / "parsed.msgpack"
    save_memo(memo_path, reloader.memo_to_save())
    assert not reloader.memo_changed
    saved = load_memo(memo_path).files
    for file, owner in (("users/bob/links.toml", "bob"), ("users/alice/links.toml", "alice")):
        links = reloader.catalog.links_by_user[owner]
        assert saved[file].records == digest_of(links)
        assert saved[file].codes == list(links)


async def test_an_edit_is_in_the_memo_saved_on_stop_and_a_restart_reuses_the_file(
    start_system: StartSystem, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saves are spaced out while files change; stopping saves what is left."""
    monkeypatch.setattr(memosaver, "MEMO_SAVE_INTERVAL", 3600.0)  # only the first save
    first = await start_system()
    watcher = first.app[CONFIG_WATCHER]
    memo_path = data_dir / ".trunk8" / "parsed.msgpack"

    async def first_saved() -> bool:
        return memo_path.is_file() and not watcher.reloader.memo_changed

    await wait_until(first_saved)
    bob = data_dir / "users" / "bob" / "links.toml"
    write(bob, bob.read_text().replace("https://example.com/docs", "https://example.com/v3"))
    await wait_until(lambda: _served(first, "/docs", "https://example.com/v3"), timeout=10)
    assert watcher.reloader.memo_changed  # not saved yet: the interval has not passed
    saved = memo_path.stat().st_mtime_ns
    await first.http.close()
    await first.server.stop()
    assert memo_path.stat().st_mtime_ns != saved  # saved on stop

    second = await start_system()
    reloader = second.app[CONFIG_WATCHER].reloader
    assert reloader.files_parsed == 0 and reloader.remembered_files == 3
    assert await second.location("/docs") == "https://example.com/v3"


async def _served(system: Any, path: str, url: str) -> bool:
    return bool(await system.location(path) == url)


_CODE = st.sampled_from(CODES)
_URL = st.sampled_from(["https://e.x/1", "https://e.x/2", "javascript:x", "", "mailto:a@e.x"])
_ENTRY = st.one_of(
    st.builds(redirect, _URL),
    st.builds(lambda u, s: redirect(u, file_size=s), _URL, st.sampled_from([1, 1.0, True, "1"])),
    st.builds(lambda u: redirect(u, expiration_date=dt.date(2099, 5, 6)), _URL),
    st.just({"type": "file", "path": "../escape"}),
    st.just({"type": "nonsense"}),
)
_FILE = st.lists(st.tuples(_CODE, _ENTRY), max_size=9, unique_by=lambda entry: entry[0])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(versions=st.lists(_FILE, min_size=1, max_size=5))
def test_any_sequence_of_edits_matches_a_fresh_parse(
    tmp_path_factory: pytest.TempPathFactory,
    splicing: bool,
    versions: list[list[tuple[str, dict[str, Any]]]],
) -> None:
    root = tmp_path_factory.mktemp("reparse") / "data"
    path = start_files(root, LinksFile(versions[0]))
    reloader = new_reloader(root)
    for version in versions[1:]:
        write(path, LinksFile(version).render())
        reparse(reloader, path)
        assert_as_fresh(reloader, root)


CLEAN = BASE.render()
# Lines that start with `[` inside strings and arrays, a preamble, indented and quoted headers.
TRICKY = '''# links of bob
[links]

[links.a]
type = "redirect"
url = "https://e.x/a"
note = """
[links.fake]
type = "redirect"
"""

[links.b]
type = "redirect"
url = "https://e.x/b"
tags = [
  [1, 2],
]

  [links.c]
type = "redirect"
url = 'https://e.x/c'

[links."d.e"]
type = "redirect"
url = "https://e.x/d"
'''
SNIPPETS = [
    "", "\n", "\r\n", "[links.zz]\n", "[links.a]\n", "[[links.q]]\n", "[links.b.sub]\nx = 1\n",
    '"""\n', "'''\n", "[", "]", "#", "x = [\n[1],\n]\n", 'type = "redirect"\n',
    'url = "https://e.x/new"\n', "a", "[users.x]\n", "[links]\n", 'url = "javascript:1"\n',
]  # fmt: skip
_MUTATION = st.tuples(st.floats(0, 1), st.integers(0, 40), st.sampled_from(SNIPPETS), st.booleans())


def mutated(text: str, where: float, cut: int, snippet: str, whole_lines: bool) -> str:
    """`text` with `cut` characters at `where` replaced by `snippet`; with `whole_lines`,
    whole lines replaced at a line start (edits that keep the file valid more often)."""
    at = int(where * len(text))
    if whole_lines:
        at = text.rfind("\n", 0, at) + 1
        lines = text[at:].splitlines(keepends=True)
        return text[:at] + snippet + "".join(lines[cut % 4 :])
    return text[:at] + snippet + text[at + cut :]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(base=st.sampled_from([CLEAN, TRICKY]), mutations=st.lists(_MUTATION, max_size=4))
def test_any_text_edit_spliced_matches_a_fresh_parse(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    base: str,
    mutations: list[tuple[float, int, str, bool]],
) -> None:
    """Edits of the text itself: a splice is taken only where it equals a full parse."""
    monkeypatch.setattr(reloader_module, "LAYOUT_MIN_BYTES", 0)
    root = tmp_path_factory.mktemp("splice") / "data"
    path = start_files(root, LinksFile())
    write(path, base)
    reloader = new_reloader(root)
    text = base
    for mutation in mutations:
        text = mutated(text, *mutation) or "[links]\n"
        write(path, text)
        reparse(reloader, path)
        assert_as_fresh(reloader, root)


def test_a_one_link_edit_of_a_clean_file_is_spliced_and_a_tricky_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader_module, "LAYOUT_MIN_BYTES", 0)
    root = tmp_path / "data"
    path = start_files(root, BASE)
    reloader = new_reloader(root)
    for base, spliced in ((CLEAN, 1), (TRICKY, 0)):
        write(path, base)
        reparse(reloader, path)
        before = reloader.files_spliced
        write(path, base.replace("https://e.x/a", "https://e.x/A"))
        reparse(reloader, path)
        assert reloader.files_spliced - before == spliced
        assert reloader.catalog.served["a"].url == "https://e.x/A"
        assert_as_fresh(reloader, root)


def test_a_half_written_file_gets_the_reference_verdict_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, splicing: bool
) -> None:
    """Parsing ahead never asks tomllib (seconds on a large file); the reload does, once."""
    root = tmp_path / "data"
    path = start_files(root, BASE)
    reloader = new_reloader(root)
    verdicts: list[str] = []
    reference = datafiles.tomllib.loads

    def counted(text: str) -> dict[str, Any]:
        verdicts.append(text)
        return reference(text)

    monkeypatch.setattr(datafiles.tomllib, "loads", counted)
    write(path, CLEAN[: CLEAN.index("[links.c]") + 7])  # cut inside a header
    reloader.prepared = reloader.prepare({path})
    assert reloader.prepared == {} and verdicts == []
    reloader.reload({path})
    assert len(verdicts) == 1
    reason = reloader.rejections.files["users/bob/links.toml"]
    assert reason.startswith("TOML syntax error: ") and "rtoml" not in reason
    assert reloader.catalog.links_by_user["bob"]["a"].url == "https://e.x/a"  # kept
