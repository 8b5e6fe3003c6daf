"""Every file, markdown and html link of a data directory written by Trunk8 0.7.0 itself.

The fixture (`shared/fixtures/trunk8-0.7.0` beside the checkout, see its README) is copied to a temp
folder and served by the all-in-one system; downloads must be byte-exact with the names
Trunk8 gave them, pages must render with the installation's markdown theme.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import StartSystem, wait_until
from reference import TRUNK8_FIXTURE

FIXTURE = TRUNK8_FIXTURE

# code -> (owner, stored path, Content-Disposition Trunk8 answered or would answer)
DOWNLOADS = {
    "ex_text": ("admin", "example.txt", "attachment; filename=example.txt"),
    "ex_image": ("admin", "example.png", "attachment; filename=example.png"),
    "ex_pdf": ("admin", "example.pdf", "attachment; filename=example.pdf"),
    "fx-file": (
        "admin",
        "66a4de0f-ab98-41f1-a003-7a657f62753a.pdf",
        "attachment; filename=Quarterly_Report_1_e.pdf",
    ),
    "alice-data": (
        "alice",
        "e0a5bb3c-0d03-47ba-92bb-00c9dca50458.csv",
        "attachment; filename=data.csv",
    ),
    "dave-legacy-file": (
        "dave",
        "3f2a9c_notes from dave.txt",
        'attachment; filename="notes from dave.txt"',
    ),
}

pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="Trunk8 fixture not available")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A copy of the data directory Trunk8 0.7.0 wrote (never written in place)."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("backups", "README.md"))
    return root


async def test_trunk8_data_directory_serves_every_content_link(
    start_system: StartSystem, data_dir: Path
) -> None:
    system = await start_system()

    async def files_loaded() -> bool:
        values = await system.metrics()
        return values.get("trunk8_files_links", 0) >= len(DOWNLOADS) + 5

    await wait_until(files_loaded, timeout=15)
    for code, (owner, path, disposition) in DOWNLOADS.items():
        async with system.http.get(f"{system.base}/{code}") as response:
            body = await response.read()
            assert response.status == 200, code
            assert body == (data_dir / "users" / owner / "assets" / path).read_bytes(), code
            assert response.headers["Content-Disposition"] == disposition, code
    async with system.http.get(f"{system.base}/ex_image") as response:
        assert response.headers["Content-Type"] == "image/png"

    for code in ("ex_markdown", "fx-md-text", "fx-md-file"):
        status, headers, body = await system.get(f"/{code}")
        assert status == 200, code
        assert 'href="/static/bootswatch/journal/bootstrap.min.css"' in body, code  # global
        assert "allow-scripts" not in headers["Content-Security-Policy"], code
    _, _, body = await system.get("/fx-md-file")
    assert '<h1 id="from-a-file">From a file' in body and "<em>emphasis</em>" in body

    _, headers, body = await system.get("/fx-md-as-html")  # a fragment: Trunk8's wrapper
    assert "<h1>Uploaded as markdown, stored as html</h1>" in body
    assert ".navbar { display: none !important; }" in body
    assert headers["Content-Security-Policy"] == "sandbox allow-scripts allow-forms allow-popups"
    _, _, body = await system.get("/fx-html-file")  # a whole document: as it is
    assert body.startswith("<!doctype html><html><body><p>landing</p>")
    status, _, _ = await system.get("/fx-html-text")
    assert status == 200
