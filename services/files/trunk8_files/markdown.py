"""Markdown to HTML on the server: markdown-it-py, its plugins, Pygments, then nh3.

CommonMark plus tables, strikethrough, task lists (mdit-py-plugins), heading ids with a
`¶` permalink, and fenced code highlighted by Pygments (CSS classes, styled by the page).
Raw HTML in the text never executes: markdown-it escapes it (`html` off), its link check
refuses `javascript:` and friends, and nh3 then keeps only the tags and attributes this
renderer makes, as a second line. `render_markdown` is CPU work: run it in an executor.
"""

from __future__ import annotations

from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from mdit_py_plugins.anchors import anchors_plugin
from mdit_py_plugins.tasklists import tasklists_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

_FORMATTER = HtmlFormatter(nowrap=True)

# Tags and attributes the renderer above produces; nh3 drops anything else.
_TAGS = nh3.ALLOWED_TAGS | {"input"}
_ATTRIBUTES = {
    "*": {"class", "id"},
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "input": {"type", "checked", "disabled"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}


def _highlight(code: str, lang: str, attrs: Any) -> str:
    """Pygments spans for a fenced block with a known language; "" lets markdown-it escape."""
    if not lang:
        return ""
    try:
        lexer = get_lexer_by_name(lang.split()[0])
    except ClassNotFound:
        return ""
    html: str = highlight(code, lexer, _FORMATTER)
    return html


def _bootstrap_tables(state: StateCore) -> None:
    """Give tables Bootstrap's `table` class, so every theme styles them."""
    for token in state.tokens:
        if token.type == "table_open":
            token.attrSet("class", "table table-sm")


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight, "linkify": False})
    md.enable(["table", "strikethrough"])
    tasklists_plugin(md, enabled=False)
    anchors_plugin(md, min_level=1, max_level=6, permalink=True)
    md.core.ruler.push("bootstrap_tables", _bootstrap_tables)
    return md


_MARKDOWN = _parser()


def render_markdown(text: str) -> str:
    """The HTML body for a markdown text, safe to put in a page."""
    html = _MARKDOWN.render(text)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        filter_style_properties={"text-align"},
        link_rel="noopener noreferrer nofollow",
    )


def highlight_css(style: str) -> str:
    """Pygments rules for one style, scoped to code blocks."""
    css: str = HtmlFormatter(style=style).get_style_defs("pre > code")
    return css


def render_file(path: str) -> bytes:
    """Read and render one markdown file as UTF-8 (undecodable bytes become U+FFFD)."""
    with open(path, "rb") as source:
        text = source.read().decode("utf-8", errors="replace")
    return render_markdown(text).encode("utf-8")
