"""Trunk8's TOML shapes, validation rules, expiry parsing and KV key mapping."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import TRUNK8_FIXTURE

from trunk8_shared.codes import (
    code_of_key,
    from_kv_key,
    kv_key,
    short_code_problem,
    username_problem,
)
from trunk8_shared.datafiles import (
    DataFileError,
    check_links,
    check_users,
    display_name,
    parse_links,
    parse_toml,
    parse_users,
    parsed_url_problem,
    read_data_file,
    url_problem,
)
from trunk8_shared.expiry import expiry_timestamp


def test_links_in_every_documented_shape() -> None:
    parsed = parse_links(
        b"""
[links]
ex_redirect = { type = "redirect", url = "https://example.com" }
ex_text = { type = "file", path = "example.txt" }
ex_markdown = { type = "markdown", path = "example.md" }

[links.old]
type = "file"
path = "a1b2c3_My_Report.pdf"

[links.report]
type = "file"
path = "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf"
original_filename = "Q4_Report.pdf"
file_size = 48213
mime_type = "application/pdf"
upload_date = "2025-01-15T10:30:00.123456"
created_at = "kept but unused"

[links."\xc3\xbcn\xc3\xaf"]
type = "redirect"
url = "mailto:someone@example.com"
expiration_date = 2030-01-01T10:00:00
""",
        "users/admin/links.toml",
    )
    links = parsed.links
    assert list(links) == ["ex_redirect", "ex_text", "ex_markdown", "old", "report", "ünï"]
    assert links["report"].file_size == 48213
    assert links["ünï"].expiration_date == "2030-01-01T10:00:00"  # TOML datetime read as text
    assert display_name(links["report"]) == "Q4_Report.pdf"
    assert display_name(links["old"]) == "My_Report.pdf"
    assert display_name(links["ex_text"]) == "example.txt"


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        (b'[links.a]\ntype = "redirect"\nurl = "javascript:alert(1)"\n', "scheme 'javascript'"),
        (b'[links.a]\ntype = "redirect"\nurl = "example.com/x"\n', "scheme none"),
        (b'[links.a]\ntype = "redirect"\nurl = "https:///nohost"\n', "no host"),
        (b'[links.a]\ntype = "redirect"\n', "redirect URL is empty"),
        (b'[links.a]\ntype = "video"\nurl = "https://x.y"\n', "unknown link type 'video'"),
        (b'[links.settings]\ntype = "redirect"\nurl = "https://x.y"\n', "reserved word"),
        (b'[links."a b"]\ntype = "redirect"\nurl = "https://x.y"\n', "can only contain"),
        (b'[links.a]\ntype = "file"\npath = "../../users.toml"\n', "leaves the assets folder"),
        (b'[links.a]\ntype = "html"\npath = "/etc/passwd"\n', "leaves the assets folder"),
        (b"[links.a]\ntype = 3\n", "Expected `str`, got `int`"),
        (b'[links.a\ntype = "redirect"\n', "TOML syntax error"),
        (b"links = 3\n", "`links` must be a table"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_links_file_is_rejected_with_a_reason(toml: bytes, fragment: str) -> None:
    with pytest.raises(DataFileError) as caught:
        parse_links(toml, "users/bob/links.toml")
    assert caught.value.file == "users/bob/links.toml"
    assert fragment in caught.value.reason


def test_one_bad_link_rejects_the_whole_file_and_names_it() -> None:
    toml = (
        b'[links.good]\ntype = "redirect"\nurl = "https://ok.example"\n[links.bad]\ntype = "nope"\n'
    )
    with pytest.raises(DataFileError, match="link 'bad': unknown link type"):
        parse_links(toml, "f")


def test_users_keep_file_order_and_tolerate_extras() -> None:
    users = parse_users(
        b"[users.zed]\nis_admin = false\nfoo = 1\n[users.admin]\nis_admin = true\n[users.amy]\n"
    ).users
    assert list(users) == ["zed", "admin", "amy"]
    assert users["admin"].is_admin and not users["amy"].is_admin


def test_expiry_parsing() -> None:
    naive = dt.datetime(2025, 6, 30, 18, 0)
    assert expiry_timestamp("2025-06-30T18:00") == naive.timestamp()  # server-local
    assert expiry_timestamp("2025-06-30 18:00:00") == naive.timestamp()
    assert expiry_timestamp("2025-06-30") == dt.datetime(2025, 6, 30).timestamp()
    utc = dt.datetime(2025, 6, 30, 18, 0, tzinfo=dt.UTC).timestamp()
    assert expiry_timestamp("2025-06-30T18:00:00Z") == utc
    assert expiry_timestamp("2025-06-30T20:00:00+02:00") == utc
    assert expiry_timestamp("next tuesday") is None  # unparseable: never expires (T8-041)
    assert expiry_timestamp("") is None
    assert expiry_timestamp(None) is None


def test_short_code_rules_use_trunk8_messages() -> None:
    assert short_code_problem("Foo-bar_1") is None
    assert short_code_problem("ünï") is None
    assert short_code_problem("") == "Short code cannot be empty"
    assert short_code_problem("x" * 51) == "Short code must be 50 characters or less"
    assert short_code_problem("a.b") == (
        "Short code can only contain letters, numbers, hyphens, and underscores"
    )
    assert short_code_problem("Admin") == "'Admin' is a reserved word and cannot be used"
    assert short_code_problem("backup") is not None  # a routed first segment


@pytest.mark.parametrize("code", ["docs", "A-b_9", "ünï", "日本", "x" * 50, "٣٤"])
def test_kv_keys_are_valid_and_reversible(code: str) -> None:
    key = kv_key(code)
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_=") for ch in key)
    assert from_kv_key(key) == code


def test_informational_fields_of_hand_edits_are_tolerated() -> None:
    links = parse_links(
        b'[links.a]\ntype = "file"\npath = "a.pdf"\nfile_size = "48213"\n'
        b"upload_date = 2025-01-15T10:30:00\n",
        "f",
    ).links
    assert links["a"].file_size == "48213"
    assert links["a"].upload_date == "2025-01-15T10:30:00"


@pytest.mark.parametrize("key", ["=a", "=_w", "=", "", "a.b", "=ZG9jcw", "a/b", "=w7x uw68"])
def test_foreign_kv_keys_decode_to_none(key: str) -> None:
    assert code_of_key(key) is None
    with pytest.raises(ValueError, match="not a key Trunk8 writes"):
        from_kv_key(key)


def test_expiry_at_the_edges_of_the_calendar() -> None:
    assert expiry_timestamp("0001-01-01") == pytest.approx(-62135596800, abs=14 * 3600)
    assert expiry_timestamp("9999-12-31T23:59:59") == pytest.approx(253402300799, abs=14 * 3600)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("bob", True), ("carol_ü", True), ("a-b_c", True), ("jo", True), ("٣٤", True),
     ("../../x", False), ("/srv/elsewhere", False), ("a.b", False), ("..", False),
     ("-_", False), ("", False), ("a b", False), ("a\x00b", False)],
)  # fmt: skip
def test_usernames_follow_trunk8s_character_rule(name: str, ok: bool) -> None:
    assert (username_problem(name) is None) is ok


def test_check_links_refuses_bad_links_alone() -> None:
    checked = check_links(
        b'[links.good]\ntype = "redirect"\nurl = "https://ok.example"\n'
        b'[links.bad]\ntype = "nope"\n'
        b"[links.shape]\ntype = 3\n"
        b"[links]\nflat = 7\n",
        "f",
    )
    assert list(checked.entries) == ["good"]
    assert checked.rejected["bad"] == "unknown link type 'nope'"
    assert "Expected `str`, got `int`" in checked.rejected["shape"]
    assert "flat" in checked.rejected


def test_check_users_refuses_bad_accounts_alone() -> None:
    checked = check_users(b'[users.bob]\n[users."../x"]\n[users.amy]\nis_admin = "yes"\n')
    assert list(checked.entries) == ["bob"]
    assert set(checked.rejected) == {"../x", "amy"}


def test_deep_nesting_is_a_clear_rejection() -> None:
    with pytest.raises(DataFileError, match="nested too deeply"):
        parse_links(b"x = " + b"[" * 5000 + b"]" * 5000, "f")


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    assert read_data_file(tmp_path / "missing.toml", "m", 100) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataFileError, match=r"not a regular file \(a FIFO\)"):
        read_data_file(fifo, "fifo", 100)
    with pytest.raises(DataFileError, match=r"not a regular file \(a directory\)"):
        read_data_file(tmp_path, "dir", 100)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(DataFileError, match="a symbolic link loop"):
        read_data_file(loop, "loop", 100)
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    assert read_data_file(small, "small", 1000) == b"x" * 1000
    with pytest.raises(DataFileError, match=r"larger than the 0\.001 MB cap \(1001 bytes"):
        small.write_bytes(b"x" * 1001)
        read_data_file(small, "small", 1000)


def test_a_small_file_read_under_a_large_cap_allocates_about_its_size(tmp_path: Path) -> None:
    import tracemalloc

    small = tmp_path / "links.toml"
    small.write_bytes(b"[links]\n" * 100)
    tracemalloc.start()
    try:
        assert read_data_file(small, "links", 16 * 1024 * 1024) == b"[links]\n" * 100
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak  # was the whole 16 MiB cap, once per read


# Documents that exercise what parsers get wrong: dates of every kind, quoted and dotted
# keys, escapes, literal and multi-line strings, inline tables, arrays of tables.
TRICKY_TOML = [
    '[links."a b"]\ntype = "redirect"\nurl = "https://x.example"\n',
    "[links.'lit']\ntype = 'redirect'\nurl = 'https://x.example/\\n'\n",
    "[links.d]\nexpiration_date = 2025-01-01T10:00:00\nod = 1979-05-27\nlt = 07:32:00.999\n",
    "[links.z]\na = 2025-01-01T10:00:00Z\nb = 2025-01-01 10:00:00+02:00\n"
    "c = 1979-05-27T00:32:00.5-07:00\n",
    'links.x.type = "redirect"\nlinks.x.url = "https://\\u00e4.example/\\U0001F600"\n',
    'links = { inline = { type = "redirect", url = "https://i.example" } }\n',
    '[[links]]\ntype = "redirect"\n',
    "a = \"\"\"\nmulti\\\n  line\"\"\"\nb = '''\nraw\\n'''\n",
    "n = nan\ni = -inf\nh = 0xDEAD_beef\no = 0o17\nbb = 0b101\nf = 6.626e-34\nu = +1_000\n",
    '"quoted.key" = 1\n"" = 2\n\'single\' = 3\n[a.b."c.d"]\ne = [1, [2, 3], {x = 1}]\n',
    '[links."ü"]\ntype = "redirect"\nurl = "https://ü.example"\n# comment ü\n',
]
# Documents both parsers must refuse (tomllib gives the message).
INVALID_TOML = [
    "a = 1\na = 2\n",
    "[t]\n[t]\n",
    "a = \n",
    'a = "unterminated\n',
    "a = 2025-13-01\n",
    "a.b = 1\n[a]\nb = 2\n",
    "x = [1, 2\n",
    "k = 'a'\x00\n",
    "[links.ü]\na = 1\n",  # a bare key is ASCII only
]


def _fixture_tomls() -> list[Path]:
    root = TRUNK8_FIXTURE
    return sorted(root.rglob("*.toml")) if root.is_dir() else []


def _as_text(value: object) -> object:
    """Dates as their ISO text (how data files are read), recursively."""
    if isinstance(value, dict):
        return {k: _as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return "nan"  # nan != nan: compare by name
    return value


def _all_documents() -> list[str]:
    from conftest import ADMIN_LINKS, BOB_LINKS, CAROL_LINKS, USERS_TOML

    documents = [ADMIN_LINKS, BOB_LINKS, CAROL_LINKS, USERS_TOML, *TRICKY_TOML]
    documents += [path.read_text(encoding="utf-8") for path in _fixture_tomls()]
    return documents


@pytest.mark.parametrize("document", _all_documents())
def test_the_compiled_parser_agrees_with_tomllib(document: str) -> None:
    import tomllib

    import rtoml

    assert _as_text(rtoml.loads(document)) == _as_text(tomllib.loads(document))
    assert _as_text(parse_toml(document)) == _as_text(tomllib.loads(document))


@pytest.mark.parametrize("document", INVALID_TOML)
def test_what_tomllib_refuses_stays_refused(document: str) -> None:
    import tomllib

    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(document)
    with pytest.raises(tomllib.TOMLDecodeError):  # tomllib's error, whatever rtoml said
        parse_toml(document)


def test_fixture_data_files_are_all_compared() -> None:
    """The agreement test really covers the Trunk8 fixture (a moved folder fails here)."""
    assert len(_fixture_tomls()) >= 10


@given(
    st.from_regex(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?([/?#][!-~]*)?", fullmatch=True)
    | st.text(max_size=40).map(lambda tail: "https://h.example" + tail)
)
def test_the_url_fast_path_agrees_with_urlsplit(url: str) -> None:
    assert url_problem(url) == parsed_url_problem(url)
