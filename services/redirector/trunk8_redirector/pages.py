"""The body the redirector sends with a 302, for clients that do not follow Location."""

from __future__ import annotations

from html import escape


def redirect_page(location: str) -> str:
    """The small HTML body sent with a 302, for clients that do not follow Location."""
    href = escape(location, quote=True)
    return (
        "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n"
        "<h1>Redirecting...</h1>\n"
        f'<p>You should be redirected automatically to the target URL: <a href="{href}">{href}</a>.'
        " If not, click the link.\n"
    )
