"""Trunk8's TOML files: reading them safely, typed structs, and what makes an entry valid.

Reading refuses anything but a regular file within a size cap, without ever blocking (a
FIFO) or loading what it refuses. Parsing is strict about types and tolerant of unknown
keys (Trunk8 files carry extras such as `created_at` that must survive). A file that
cannot be read or parsed raises `DataFileError` naming it, so a caller keeps the last good
state of exactly that file; an invalid entry (one link, one account) is refused alone and
returned with its reason beside the valid ones. Documents are parsed by `rtoml` (compiled,
about 7x faster than `tomllib` on a 100,000-link file) when it is installed; a document it
refuses is handed to `tomllib`, whose verdict and messages are the reference, so a file is
never refused that `tomllib` accepts (tests prove both agree on every data file we have).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import msgspec

try:  # a compiled parser: optional, tomllib is the reference and the fallback
    import rtoml
except ImportError:  # pragma: no cover - the wheel is a dependency, but may fail to build
    rtoml = None  # type: ignore[assignment]

from .codes import MAX_CODE_LENGTH, RESERVED_WORDS, short_code_problem, username_problem
from .expiry import expiry_timestamp

LINK_TYPES = frozenset({"redirect", "file", "markdown", "html"})
ALLOWED_URL_SCHEMES = ("http", "https", "mailto")
MAX_REPORTED_PROBLEMS = 5
MAX_USERNAME_LENGTH = 100
_T = TypeVar("_T")
_E = TypeVar("_E")


class DataFileError(Exception):
    """A data file that cannot be used as it is; `reason` says why in one line."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


def read_data_file(path: Path, file: str, max_bytes: int) -> bytes | None:
    """The bytes of a regular file of at most `max_bytes`; None when it does not exist.

    Opened non-blocking, so a FIFO or device in its place is refused at once instead of
    stalling the reader; a file over the cap is refused from its size, before any read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DataFileError(file, f"cannot read the file ({_os_reason(err)})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataFileError(file, f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise DataFileError(file, _too_large(info.st_size, max_bytes))
        chunks: list[bytes] = []
        size = 0
        # os.read allocates the whole request before it shrinks the result: ask for what
        # fstat saw plus one byte (the file may grow after fstat), never the cap at once.
        request = max(info.st_size + 1, 64 * 1024)
        while size <= max_bytes:  # read at most cap + 1 bytes in all
            chunk = os.read(fd, min(request, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise DataFileError(file, _too_large(size, max_bytes))
        return b"".join(chunks)
    except OSError as err:
        raise DataFileError(file, f"cannot read the file ({_os_reason(err)})") from err
    finally:
        os.close(fd)


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "a symbolic link loop"
    return err.strerror or str(err)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"file is larger than the {max_bytes / 1_000_000:g} MB cap "
        f"({size} bytes; TRUNK8_MAX_DATA_FILE_MB)"
    )


class UserEntry(msgspec.Struct, kw_only=True):
    """One `[users.<name>]` table of users/users.toml."""

    password_hash: str | None = None
    is_admin: bool = False
    display_name: str | None = None
    created_at: str | None = None


class UsersFile(msgspec.Struct, kw_only=True):
    """users/users.toml: accounts in file order (that order decides duplicate codes)."""

    users: dict[str, UserEntry] = {}


class LinkEntry(msgspec.Struct, kw_only=True):
    """One `[links.<code>]` table of users/<name>/links.toml (§1.5 of the reference).

    Fields used to serve a link are strictly typed; informational ones (size, MIME type,
    upload date) accept what a hand edit may hold, since Trunk8 never reads them to serve.
    """

    type: str
    url: str | None = None
    path: str | None = None
    original_filename: str | None = None
    file_size: int | float | str | None = None
    mime_type: str | int | float | bool | None = None
    upload_date: str | int | float | None = None
    expiration_date: str | None = None


class LinksFile(msgspec.Struct, kw_only=True):
    """users/<name>/links.toml."""

    links: dict[str, LinkEntry] = {}


def _datetimes_as_text(value: Any) -> Any:
    """TOML native dates become ISO strings, as if they had been quoted (T8-W16).

    Converted in place (the document was just parsed): a 100,000-link file is walked, not
    copied.
    """
    if isinstance(value, dict):
        for key, item in value.items():  # replacing values of existing keys is safe here
            if isinstance(item, dict | list):
                _datetimes_as_text(item)
            elif isinstance(item, _DATE_TYPES):
                value[key] = item.isoformat()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict | list):
                _datetimes_as_text(item)
            elif isinstance(item, _DATE_TYPES):
                value[index] = item.isoformat()
    elif isinstance(value, _DATE_TYPES):
        return value.isoformat()
    return value


_DATE_TYPES = (dt.datetime, dt.date, dt.time)


def parse_toml(text: str, *, verdict: bool = True) -> dict[str, Any]:
    """A TOML document, parsed fast by rtoml; what it refuses goes to tomllib (the reference).

    Without `verdict`, a refusal raises `tomllib.TOMLDecodeError` with rtoml's reason at
    once: for a caller that reads the document again for the verdict when it matters
    (tomllib takes a second or more on a half-written 4 MB file).
    """
    if rtoml is not None:
        try:
            document: dict[str, Any] = rtoml.loads(text)
            return document
        except Exception as err:  # any refusal: tomllib decides, with its own message
            if not verdict:
                raise tomllib.TOMLDecodeError(f"refused by rtoml: {err}") from err
    return tomllib.loads(text)


def _load_toml(
    data: bytes, file: str, dates_as_text: bool = True, verdict: bool = True
) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        # Walking the parsed values (5 ms for 10,000 links) costs less than searching the
        # text for date-like digits first (15 ms when there are none).
        document = parse_toml(text, verdict=verdict)
        converted: dict[str, Any] = _datetimes_as_text(document) if dates_as_text else document
    except UnicodeDecodeError as err:
        raise DataFileError(file, f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except tomllib.TOMLDecodeError as err:
        raise DataFileError(file, f"TOML syntax error: {err}") from err
    except RecursionError as err:  # tomllib recurses once per nesting level
        raise DataFileError(file, "arrays or tables nested too deeply") from err
    return converted


def _convert(value: Any, kind: type[_T], file: str, where: str = "") -> _T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as err:
        raise DataFileError(file, f"{where}{err}") from err
    except RecursionError as err:
        raise DataFileError(file, f"{where}values nested too deeply") from err


def parse_users(data: bytes, file: str = "users/users.toml") -> UsersFile:
    """Parse users/users.toml, keeping the accounts in file order."""
    return _convert(_load_toml(data, file), UsersFile, file)


@dataclass(frozen=True)
class Checked(Generic[_E]):
    """A data file's valid entries in file order, and each refused entry with its reason."""

    entries: dict[str, _E]
    rejected: dict[str, str]


def check_users(data: bytes, file: str = "users/users.toml") -> Checked[UserEntry]:
    """Parse users/users.toml; accounts whose entry or name is invalid are refused alone."""
    table = _load_toml(data, file).get("users", {})
    if not isinstance(table, dict):
        raise DataFileError(file, "`users` must be a table")
    users: dict[str, UserEntry] = {}
    rejected: dict[str, str] = {}
    for name, value in table.items():
        try:
            entry = _convert(value, UserEntry, file)
        except DataFileError as err:
            rejected[name] = err.reason
            continue
        if len(name) > MAX_USERNAME_LENGTH:  # becomes a NATS subject: keep it short
            rejected[name] = f"Username is longer than {MAX_USERNAME_LENGTH} characters."
        elif problem := username_problem(name):
            rejected[name] = problem
        else:
            users[name] = entry
    return Checked(users, rejected)


def check_links(data: bytes, file: str) -> Checked[LinkEntry]:
    """Parse a links.toml; each invalid link is refused alone, with its reason."""
    return check_link_entries(load_links_table(data, file), file)


def load_links_table(
    data: bytes, file: str, *, dates_as_text: bool = True, verdict: bool = True
) -> dict[str, Any]:
    """The `[links]` table of a links.toml as parsed, before any entry is checked.

    Without `dates_as_text` TOML dates stay native: a reader checking only some entries
    converts those with `entries_as_text` (and must, before `check_link_entries`). Without
    `verdict`, see `parse_toml`.
    """
    table = _load_toml(data, file, dates_as_text, verdict).get("links", {})
    if not isinstance(table, dict):
        raise DataFileError(file, "`links` must be a table")
    return table


def entries_as_text(table: dict[str, Any], file: str) -> dict[str, Any]:
    """TOML dates in `[links]` entries made text in place, as a whole-file read makes them."""
    try:
        converted: dict[str, Any] = _datetimes_as_text(table)
    except RecursionError as err:
        raise DataFileError(file, "arrays or tables nested too deeply") from err
    return converted


def check_link_entries(table: dict[str, Any], file: str) -> Checked[LinkEntry]:
    """Check `[links]` entries (code -> table) as `check_links` does; bad ones refused alone."""
    links: dict[str, LinkEntry] = {}
    rejected: dict[str, str] = {}
    try:  # every entry valid (the usual case): one conversion instead of one per link
        entries: dict[str, LinkEntry | Exception] = msgspec.convert(table, dict[str, LinkEntry])
    except (msgspec.ValidationError, RecursionError):
        entries = {code: _entry_or_error(value, file) for code, value in table.items()}
    for code, entry in entries.items():
        if isinstance(entry, Exception):
            rejected[code] = entry.reason if isinstance(entry, DataFileError) else str(entry)
            continue
        if problem := link_problem(code, entry):
            rejected[code] = problem
        else:
            links[code] = entry
    return Checked(links, rejected)


def _entry_or_error(value: Any, file: str) -> LinkEntry | DataFileError:
    try:
        return _convert(value, LinkEntry, file)
    except DataFileError as err:
        return err


def parse_links(data: bytes, file: str) -> LinksFile:
    """Parse a links.toml strictly: any invalid link raises, naming up to five of them."""
    checked = check_links(data, file)
    problems = [f"link {code!r}: {reason}" for code, reason in checked.rejected.items()]
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        reason = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
        raise DataFileError(file, reason + (f"; and {more} more" if more > 0 else ""))
    return LinksFile(links=checked.entries)


# A code `short_code_problem` accepts unless reserved: checked without a loop per character.
_PLAIN_CODE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CODE_LENGTH}}}")


def link_problem(code: str, entry: LinkEntry) -> str | None:
    """Why a link may not be served (bad code, type, URL or asset path), or None."""
    plain = _PLAIN_CODE.fullmatch(code) is not None and code.lower() not in RESERVED_WORDS
    if not plain and (problem := short_code_problem(code)):
        return problem
    if entry.type not in LINK_TYPES:
        return f"unknown link type {entry.type!r}"
    if entry.type == "redirect":
        return url_problem(entry.url or "")
    return asset_path_problem(entry.path or "")


# A plain absolute http(s) URL with an ASCII host: valid without `urlsplit` (most links).
_PLAIN_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.\-]++(?::[0-9]{1,5})?+(?:[/?#][!-~]*+)?+")


def url_problem(url: str) -> str | None:
    """Redirect targets must be absolute http(s) URLs with a host, or mailto (T8-W06)."""
    if _PLAIN_HTTP_URL.fullmatch(url):
        return None
    return parsed_url_problem(url)


def parsed_url_problem(url: str) -> str | None:
    """`url_problem` the long way, through `urlsplit` (what the fast path must agree with)."""
    if not url.strip():
        return "redirect URL is empty"
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        return f"redirect URL does not parse ({err})"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_URL_SCHEMES:
        shown = f"{scheme!r}" if scheme else "none"
        return f"URL scheme {shown} is not allowed (use {', '.join(ALLOWED_URL_SCHEMES)})"
    if scheme != "mailto" and not parts.netloc:
        return "redirect URL has no host"
    return None


def asset_path_problem(path: str) -> str | None:
    """An asset path must stay inside the owner's assets folder (T8-W03)."""
    if not path:
        return "asset path is empty"
    pure = PurePosixPath(path)
    if pure.is_absolute() or "\\" in path or ".." in pure.parts or "\x00" in path:
        return f"asset path {path!r} leaves the assets folder"
    return None


def display_name(entry: LinkEntry) -> str:
    """Download name: original_filename, else the text after the first `_`, else path (T8-008)."""
    if entry.original_filename is not None:
        return entry.original_filename
    path = entry.path or ""
    return path.split("_", 1)[1] if "_" in path else path


__all__ = [
    "Checked",
    "DataFileError",
    "LinkEntry",
    "LinksFile",
    "UserEntry",
    "UsersFile",
    "check_link_entries",
    "check_links",
    "check_users",
    "display_name",
    "expiry_timestamp",
    "parse_links",
    "parse_users",
    "read_data_file",
]
