"""Download names and types: the display name of a link, its `Content-Disposition` and type.

The display name is Trunk8's (§1.5: `original_filename`, else the text after the first
`_` of `path`, else `path`). `Content-Disposition` follows RFC 6266 with RFC 5987 for
non-ASCII names, as Werkzeug writes it for Trunk8: a plain `filename` for ASCII names, an
ASCII-folded `filename` plus `filename*=UTF-8''...` otherwise. The type is guessed from
the display name with Python's `mimetypes`, text types getting `charset=utf-8`.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from urllib.parse import quote

from trunk8_shared.records import LinkRecord

FALLBACK_TYPE = "application/octet-stream"
FALLBACK_NAME = "download"

# RFC 7230 token characters: such a name needs no quotes.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Controls could split or corrupt a header line: never let them into one.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5987 attr-char besides letters and digits.
_ATTR_CHARS = "!#$&+-.^_`|~"


def display_name(record: LinkRecord) -> str:
    """The name a visitor sees for a file, markdown or html link (T8-008)."""
    if record.original_filename is not None:
        return record.original_filename
    path = record.path or ""
    return path.split("_", 1)[1] if "_" in path else path


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def content_disposition(name: str) -> str:
    """`attachment` with `name` as the download name (RFC 6266, RFC 5987)."""
    clean = _CONTROLS.sub("", name).strip() or FALLBACK_NAME
    if clean.isascii():
        return f"attachment; filename={clean if _TOKEN.fullmatch(clean) else _quoted(clean)}"
    folded = unicodedata.normalize("NFKD", clean).encode("ascii", "ignore").decode("ascii")
    folded = folded.strip() or FALLBACK_NAME
    encoded = quote(clean, safe=_ATTR_CHARS)
    return f"attachment; filename={_quoted(folded)}; filename*=UTF-8''{encoded}"


def content_type(name: str) -> str:
    """The MIME type of a download named `name` (text types in UTF-8)."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed is None:
        return FALLBACK_TYPE
    if guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return guessed
