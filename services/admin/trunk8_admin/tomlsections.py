"""Finding one link's `[links.<code>]` section in a links file's text, without parsing it.

Editing or deleting one link in a file of 100,000 should not cost a full TOML parse and
rewrite by tomlkit (seconds). When the text makes it certain where the link's section
starts and ends, only that slice is parsed and replaced. Certain means: exactly one
header line for the code, no sub-table of it, and no multi-line string anywhere in the
file (inside one, a line starting with `[` would not be a header). Anything else returns
None and the caller parses the whole file.
"""

from __future__ import annotations

import re

_NEXT_HEADER = re.compile(r"^[ \t]*\[", re.MULTILINE)
# A file whose `links` table has no header or key left reads as broken; see `ensure_links`.
_ANY_LINKS = re.compile(r"""^[ \t]*(?:\[\[?[ \t]*["']?links\b|["']?links["']?[ \t]*[.=])""", re.M)


def _code_forms(code: str) -> str:
    """The ways a code can be written as a key: bare (when allowed), "basic", 'literal'."""
    escaped = re.escape(code)
    forms = [f'"{escaped}"', f"'{escaped}'"]
    if re.fullmatch(r"[A-Za-z0-9_-]+", code):
        forms.append(escaped)
    return "|".join(forms)


def find_section(text: str, code: str) -> tuple[int, int] | None:
    """Start and end offsets of the code's `[links.<code>]` section, when certain."""
    if '"""' in text or "'''" in text or "\\" in code:
        return None
    key = rf"""[ \t]*["']?links["']?[ \t]*\.[ \t]*(?:{_code_forms(code)})[ \t]*"""
    headers = list(re.finditer(rf"^[ \t]*\[{key}\][ \t]*(?:#[^\n]*)?$", text, re.MULTILINE))
    if len(headers) != 1:
        return None
    if re.search(rf"^[ \t]*\[\[?{key}\.", text, re.MULTILINE):
        return None  # `[links.<code>.more]` belongs to it too
    start = headers[0].start()
    following = _NEXT_HEADER.search(text, headers[0].end())
    return start, following.start() if following else len(text)


def ensure_links(text: str) -> str:
    """The text, with a `[links]` header added if no links table is left in it."""
    if _ANY_LINKS.search(text):
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + "[links]\n"
