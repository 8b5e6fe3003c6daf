"""Pages shared by every service: the friendly not-found page.

Self-contained HTML (no CDN): it must render on an offline install (T8-W20).
"""

from __future__ import annotations

from aiohttp import web

NOT_FOUND_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Link Not Found - Trunk8</title>
<style>
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f5f7fa;color:#2c3e50}
main{text-align:center;padding:2.5rem 2rem;background:#fff;border-radius:.75rem;
box-shadow:0 .25rem 1.5rem rgba(0,0,0,.08);max-width:28rem}
h1{font-size:1.6rem;margin:.5rem 0 1rem}
p{color:#5d6d7e;line-height:1.5}
a.button{display:inline-block;margin-top:1rem;padding:.55rem 1.4rem;border-radius:.4rem;
background:#2fa4e7;color:#fff;text-decoration:none}
</style>
</head>
<body>
<main>
<h1>Link Not Found</h1>
<p>The link you followed does not exist or has expired.</p>
<a class="button" href="/">Go Home</a>
</main>
</body>
</html>
"""

NOT_FOUND_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def not_found_response() -> web.Response:
    """The friendly 404 page for unknown and expired codes."""
    return web.Response(status=404, body=NOT_FOUND_PAGE.encode(), headers=NOT_FOUND_HEADERS)
