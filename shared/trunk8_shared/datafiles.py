"""Trunk8's TOML files as typed structs, and the rules that make a links file valid.

Parsing is strict about types and tolerant of unknown keys (Trunk8 files carry extras such
as `created_at` that must survive). Any problem is raised as `DataFileError` naming the
file, so a caller can keep the last good state of exactly that file.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from .codes import short_code_problem
from .expiry import expiry_timestamp

LINK_TYPES = frozenset({"redirect", "file", "markdown", "html"})
ALLOWED_URL_SCHEMES = ("http", "https", "mailto")
MAX_REPORTED_PROBLEMS = 5
_T = TypeVar("_T")


class DataFileError(Exception):
    """A data file that cannot be used as it is; `reason` says why in one line."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


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
    """TOML native dates become ISO strings, as if they had been quoted (T8-W16)."""
    if isinstance(value, dict):
        return {k: _datetimes_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_datetimes_as_text(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value


def _load_toml(data: bytes, file: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataFileError(file, f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except tomllib.TOMLDecodeError as err:
        raise DataFileError(file, f"TOML syntax error: {err}") from err
    converted: dict[str, Any] = _datetimes_as_text(document)
    return converted


def _convert(value: Any, kind: type[_T], file: str, where: str = "") -> _T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as err:
        raise DataFileError(file, f"{where}{err}") from err


def parse_users(data: bytes, file: str = "users/users.toml") -> UsersFile:
    """Parse users/users.toml, keeping the accounts in file order."""
    return _convert(_load_toml(data, file), UsersFile, file)


def parse_links(data: bytes, file: str) -> LinksFile:
    """Parse a links.toml and check every link; any bad link rejects the whole file."""
    table = _load_toml(data, file).get("links", {})
    if not isinstance(table, dict):
        raise DataFileError(file, "`links` must be a table")
    problems: list[str] = []
    links: dict[str, LinkEntry] = {}
    for code, value in table.items():
        try:
            entry = _convert(value, LinkEntry, file)
        except DataFileError as err:
            problems.append(f"link {code!r}: {err.reason}")
            continue
        if problem := link_problem(code, entry):
            problems.append(f"link {code!r}: {problem}")
        links[code] = entry
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        reason = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
        raise DataFileError(file, reason + (f"; and {more} more" if more > 0 else ""))
    return LinksFile(links=links)


def link_problem(code: str, entry: LinkEntry) -> str | None:
    """Why a link may not be served (bad code, type, URL or asset path), or None."""
    if problem := short_code_problem(code):
        return problem
    if entry.type not in LINK_TYPES:
        return f"unknown link type {entry.type!r}"
    if entry.type == "redirect":
        return url_problem(entry.url or "")
    return asset_path_problem(entry.path or "")


def url_problem(url: str) -> str | None:
    """Redirect targets must be absolute http(s) URLs with a host, or mailto (T8-W06)."""
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
    "DataFileError",
    "LinkEntry",
    "LinksFile",
    "UserEntry",
    "UsersFile",
    "display_name",
    "expiry_timestamp",
    "parse_links",
    "parse_users",
]
