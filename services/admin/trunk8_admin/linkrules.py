"""The rules of the add and edit forms (§4.5, §4.7, §5): from a submitted form to a link.

`draft_link` checks everything before anything is written and answers either Trunk8's
message for the first problem or a `Draft`: the link's fields plus the asset to put in
place (an upload's temp file, or text to store). Fixes over Trunk8: only http(s) URLs
with a host (T8-W06), known types and parseable dates only (T8-W11), markdown and HTML
must be UTF-8 and within the size cap (T8-W21), and an edit that sends no new file keeps
the current one (T8-W10).
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import secrets
import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trunk8_shared.codes import short_code_problem
from trunk8_shared.datadir import local_timestamp
from trunk8_shared.expiry import expiry_timestamp
from trunk8_shared.records import LinkRecord

from .forms import Upload, UploadForm, secure_filename

LINK_TYPES = ("redirect", "file", "markdown", "html")
ALLOWED_EXTENSIONS = frozenset(
    "pdf doc docx txt rtf odt jpg jpeg png gif webp bmp svg zip rar 7z tar gz "
    "xls xlsx ods csv ppt pptx odp mp3 wav mp4 avi mkv mov py js html css json xml md".split()
)
MAX_URL_LENGTH = 8192
# How many random codes to try before giving up (8 URL-safe characters: 2^48 of them).
CODE_ATTEMPTS = 20


class Problem(Exception):
    """A form problem, with Trunk8's message; `field` is the form field at fault."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass
class Draft:
    """A checked link: its fields, and the asset to write before the TOML (if any)."""

    link_type: str
    fields: dict[str, Any]
    upload: Upload | None = None  # moved into place as `asset_name`
    text: str | None = None  # written as `asset_name`
    asset_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def random_code(taken: Container[str]) -> str:
    """8 URL-safe random characters not used by any user (T8-044)."""
    for _ in range(CODE_ATTEMPTS):
        code = secrets.token_urlsafe(6)
        if code not in taken and short_code_problem(code) is None:
            return code
    raise Problem("Could not find a free short code; please choose one.", "short_code")


def code_problem(code: str, taken: Container[str]) -> Problem | None:
    """Trunk8's short-code rules and uniqueness across users (T8-045, T8-046)."""
    if message := short_code_problem(code):
        return Problem(message, "short_code")
    if code in taken:
        return Problem(f"Short code '{code}' already exists.", "short_code")
    return None


def redirect_url_problem(url: str) -> str | None:
    """Why a new redirect target is refused: http(s) with a host only (T8-W06)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "The URL must not contain line breaks or control characters."
    if len(url) > MAX_URL_LENGTH:
        return f"The URL is longer than {MAX_URL_LENGTH} characters."
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return "The URL cannot be read; use a full address such as https://example.com/page."
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"'{scheme}:' links are" if scheme else "Addresses without http:// or https:// are"
        return f"{shown} not allowed; use a full http:// or https:// address."
    if not host:
        return "The URL has no host; use a full address such as https://example.com/page."
    return None


def expiry_value(form: UploadForm) -> str | None:
    """The expiry to store (verbatim, as Trunk8 does), or None; unparseable is refused."""
    value = form.get("expiration_date").strip()
    if form.get("enable_expiration") != "on" or not value:
        return None
    if expiry_timestamp(value) is None:
        raise Problem(
            f"Invalid expiration date '{value}'; use a date such as 2030-06-30T18:00.",
            "expiration_date",
        )
    return value


def form_expiry(value: str | None) -> str:
    """An expiry as a `datetime-local` value `YYYY-MM-DDTHH:MM`, "" if unparseable (T8-061)."""
    stamp = expiry_timestamp(value)
    if stamp is None or value is None:
        return ""
    try:
        local = dt.datetime.fromtimestamp(stamp)
    except (OverflowError, OSError, ValueError):
        # Local time cannot show it (year 1 with an offset, 9999 east of UTC): the value's
        # own wall time, which always exists since it parsed.
        text = value.strip()
        local = dt.datetime.fromisoformat(text[:-1] if text[-1] in "zZ" else text)
    # isoformat, not strftime: `%Y` drops the leading zeros of years before 1000.
    return local.replace(tzinfo=None).isoformat(timespec="minutes")


def _utf8_problem(upload: Upload) -> str | None:
    try:
        upload.temp_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "the file is not UTF-8 text"
    return None


def _file_draft(upload: Upload | None, max_bytes: int, missing: str) -> Draft:
    """A `file` link from an upload (§5.1)."""
    if upload is None:
        raise Problem(missing, "file")
    name = secure_filename(upload.filename)
    if not name:
        raise Problem("File upload error: Invalid filename", "file")
    extension = name.rsplit(".", 1)[1].lower() if "." in name else ""
    if extension not in ALLOWED_EXTENSIONS:
        raise Problem(f"File upload error: File type '.{extension}' not allowed", "file")
    if upload.size > max_bytes:
        raise Problem(f"File upload error: File too large (max {max_bytes // 2**20}MB)", "file")
    mime_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    asset = f"{uuid.uuid4()}.{extension}"
    fields = {
        "type": "file",
        "path": asset,
        "original_filename": name,
        "file_size": upload.size,
        "mime_type": mime_type,
        "upload_date": local_timestamp(),
    }
    return Draft("file", fields, upload=upload, asset_name=asset)


def _document_draft(
    kind: str, upload: Upload, max_bytes: int, label: str, as_html_if_named: bool
) -> Draft:
    """A markdown or html link from an uploaded file (§4.5, T8-050, T8-052)."""
    name = secure_filename(upload.filename)
    if not name:
        raise Problem(f"{label} upload error: Invalid filename", f"{kind}_file")
    if upload.size > max_bytes:
        raise Problem(
            f"{label} upload error: File too large (max {max_bytes // 2**20}MB)", f"{kind}_file"
        )
    if problem := _utf8_problem(upload):
        raise Problem(f"{label} upload error: {problem}", f"{kind}_file")
    link_type = kind
    if as_html_if_named and name.rsplit(".", 1)[-1].lower() in ("html", "htm") and "." in name:
        link_type = "html"  # a page uploaded in the markdown section (T8-050)
    asset = f"{uuid.uuid4()}.{'html' if link_type == 'html' else 'md'}"
    fields = {
        "type": link_type,
        "path": asset,
        "original_filename": name,
        "upload_date": local_timestamp(),
    }
    return Draft(link_type, fields, upload=upload, asset_name=asset)


def _text_draft(kind: str, code: str, text: str, max_bytes: int) -> Draft:
    """A markdown or html link from text typed in the form (T8-051, T8-052)."""
    if kind == "markdown" and not text.startswith("\n"):
        text = "\n" + text  # the renderer indents the first line otherwise
    if len(text.encode("utf-8")) > max_bytes:
        raise Problem(f"The text is larger than {max_bytes // 2**20}MB.", f"{kind}_text_content")
    extension = "md" if kind == "markdown" else "html"
    asset = f"{uuid.uuid4()}.{extension}"
    fields = {
        "type": kind,
        "path": asset,
        "original_filename": f"{code}.{extension}",
        "upload_date": local_timestamp(),
    }
    return Draft(kind, fields, text=text, asset_name=asset)


def draft_link(
    form: UploadForm, code: str, max_bytes: int, current: LinkRecord | None = None
) -> Draft:
    """Check a submitted add (current None) or edit form; the first problem is raised."""
    editing = current is not None
    link_type = form.get("link_type").strip()
    if not link_type:
        raise Problem("Link type is required.", "link_type")
    if link_type not in LINK_TYPES:
        raise Problem(f"Unknown link type '{link_type}'.", "link_type")
    expiry = expiry_value(form)
    draft: Draft
    if link_type == "redirect":
        url = form.get("url")
        if not url.strip():
            raise Problem(
                "URL is required" if editing else "URL is required for redirect link.", "url"
            )
        if problem := redirect_url_problem(url):
            raise Problem(problem, "url")
        draft = Draft("redirect", {"type": "redirect", "url": url.strip()})
    elif link_type == "file":
        upload = form.file("file")
        if upload is None and current is not None and current.type == "file":
            draft = _keep_asset(current)  # only the expiry changes (T8-W10)
        else:
            missing = "No file selected" if editing else "No file uploaded for file link."
            draft = _file_draft(upload, max_bytes, missing)
    else:
        draft = _document_link(form, link_type, code, max_bytes, current)
    if expiry is not None:
        draft.fields["expiration_date"] = expiry
    return draft


def _keep_asset(current: LinkRecord) -> Draft:
    fields: dict[str, Any] = {"type": current.type, "path": current.path}
    for key in ("original_filename", "file_size", "mime_type", "upload_date"):
        value = getattr(current, key)
        if value is not None:
            fields[key] = value
    return Draft(current.type, fields)


def _document_link(
    form: UploadForm, kind: str, code: str, max_bytes: int, current: LinkRecord | None
) -> Draft:
    """Markdown or html, from a file (the default input) or from text."""
    editing = current is not None
    label = "Markdown" if kind == "markdown" else "HTML"
    if form.get(f"{kind}_input_type", "file") == "file":
        upload = form.file(f"{kind}_file")
        if upload is None:
            if current is not None and current.type == kind:
                return _keep_asset(current)
            if editing:
                raise Problem("No file selected", f"{kind}_file")
            raise Problem(
                f"No {label.lower() if kind == 'markdown' else label} file uploaded.",
                f"{kind}_file",
            )
        return _document_draft(kind, upload, max_bytes, label, as_html_if_named=kind == "markdown")
    text = form.get(f"{kind}_text_content")
    if editing:
        if not text.strip():
            raise Problem(f"{label} content is required", f"{kind}_text_content")
    else:
        text = text.strip()
        if not text:
            raise Problem(
                f"No {label.lower() if kind == 'markdown' else label} content provided.",
                f"{kind}_text_content",
            )
    return _text_draft(kind, code, text, max_bytes)
