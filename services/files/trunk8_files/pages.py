"""The HTML around user content: the markdown page, and Trunk8's wrapper for HTML fragments.

The markdown page is bare like Trunk8's (no navigation), styled by the vendored Bootswatch
stylesheet of the chosen theme and Pygments rules for code. Its title is the stored
`path` (T8-037). An HTML link that is a fragment gets Trunk8's wrapper (title = stored
path, `.navbar` hidden, the fragment raw in `<body>`, T8-039); a whole document is sent
as it is. Everything interpolated here is escaped.
"""

from __future__ import annotations

import functools
import html

from .markdown import highlight_css
from .themes import DARK_THEMES

_PAGE_CSS = (
    ".markdown-body{max-width:56rem}"
    ".markdown-body img{max-width:100%}"
    ".markdown-body pre{padding:.75rem;border-radius:.375rem;background:rgba(127,127,127,.08)}"
    ".markdown-body .header-anchor{opacity:.25;text-decoration:none;font-size:.8em}"
    ".markdown-body .task-list-item{list-style:none}"
    ".markdown-body .task-list-item-checkbox{margin:0 .4em 0 -1.3em}"
)
_LIGHT_CODE_CSS = highlight_css("default")
_DARK_CODE_CSS = highlight_css("monokai")

STYLESHEET = "/static/bootswatch/{theme}/bootstrap.min.css"
MARKDOWN_TAIL = b"\n</main>\n</body>\n</html>\n"

HTML_WRAPPER_TAIL = b"\n</body>\n</html>\n"


@functools.lru_cache(maxsize=1024)
def markdown_head(theme: str, title: str) -> bytes:
    """Everything of a markdown page before the rendered body."""
    code_css = _DARK_CODE_CSS if theme in DARK_THEMES else _LIGHT_CODE_CSS
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<link rel="stylesheet" href="{STYLESHEET.format(theme=html.escape(theme))}">\n'
        f"<style>{_PAGE_CSS}\n{code_css}</style>\n"
        f'</head>\n<body data-markdown-theme="{html.escape(theme)}">\n'
        '<main class="container my-4 markdown-body">\n'
    ).encode()


@functools.lru_cache(maxsize=1024)
def html_wrapper_head(title: str) -> bytes:
    """Trunk8's wrapper before an HTML fragment (T8-039)."""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>.navbar { display: none !important; }</style>\n"
        "</head>\n<body>\n"
    ).encode()


def is_whole_document(start: bytes) -> bool:
    """Whether HTML that begins with `start` is a document of its own, not a fragment."""
    head = start[:1024].lower()
    return b"<!doctype" in head or b"<html" in head
