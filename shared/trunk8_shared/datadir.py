"""The data directory in Trunk8's layout: its paths, and creating what is missing (§1.7).

An existing installation is used as it is: only missing files are created, never rewritten.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("trunk8.datadir")

DEFAULT_CONFIG = """\
[app]
theme = "cerulean"
markdown_theme = "cerulean"
max_file_size_mb = 100

[session]
permanent_lifetime_days = 30
"""

THEMES = (
    ("brite", "Brite", "Clean and bright design"),
    ("cerulean", "Cerulean", "A calm blue sky"),
    ("cosmo", "Cosmo", "An ode to Metro"),
    ("cyborg", "Cyborg", "Jet black and electric blue"),
    ("darkly", "Darkly", "Flatly in night mode"),
    ("flatly", "Flatly", "Flat and modern"),
    ("journal", "Journal", "Crisp like a new sheet of paper"),
    ("litera", "Litera", "The medium is the message"),
    ("lumen", "Lumen", "Light and shadow"),
    ("lux", "Lux", "A touch of class"),
    ("materia", "Materia", "Material is the metaphor"),
    ("minty", "Minty", "A fresh feel"),
    ("morph", "Morph", "A modern take"),
    ("pulse", "Pulse", "A trace of purple"),
    ("quartz", "Quartz", "A gem of a theme"),
    ("sandstone", "Sandstone", "A touch of warmth"),
    ("simplex", "Simplex", "Mini and minimalist"),
    ("sketchy", "Sketchy", "A hand-drawn look"),
    ("slate", "Slate", "Shades of gunmetal gray"),
    ("solar", "Solar", "A spin on Solarized"),
    ("spacelab", "Spacelab", "Silvery and sleek"),
    ("superhero", "Superhero", "The brave and the blue"),
    ("united", "United", "Ubuntu orange and unique font"),
    ("vapor", "Vapor", "A subtle theme"),
    ("yeti", "Yeti", "A friendly foundation"),
    ("zephyr", "Zephyr", "Breezy and beautiful"),
)


def default_themes_toml() -> str:
    """config/themes.toml as Trunk8 generates it: one `[themes.<key>]` section per theme."""
    sections = [
        f'[themes.{key}]\nname = "{name}"\ndescription = "{description}"\n'
        for key, name, description in THEMES
    ]
    return "\n".join(sections)


def local_timestamp() -> str:
    """Server-local, timezone-less ISO timestamp, as Trunk8 writes them (T8-089)."""
    return dt.datetime.now().isoformat()


class DataDir:
    """Paths of one data directory; the layout is Trunk8's (§1.1)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.config_dir = self.root / "config"
        self.users_dir = self.root / "users"
        self.config_file = self.config_dir / "config.toml"
        self.themes_file = self.config_dir / "themes.toml"
        self.users_file = self.users_dir / "users.toml"
        self.state_dir = self.root / ".trunk8"

    def links_file(self, username: str) -> Path:
        """users/<name>/links.toml."""
        return self.users_dir / username / "links.toml"

    def assets_dir(self, username: str) -> Path:
        """users/<name>/assets/."""
        return self.users_dir / username / "assets"

    def relative(self, path: Path) -> str:
        """A path inside the data directory as the POSIX text used in events and logs."""
        # Symbolic links are not followed: a loop must not raise, and a user folder that
        # is a link is still named by where it sits in the data directory.
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _create(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))
    log.info("created %s", path)


def ensure_layout(data: DataDir) -> None:
    """Create the files Trunk8 creates at start when they are missing (T8-002..004)."""
    if not data.users_file.exists():
        admin = (
            "[users.admin]\nis_admin = true\n"
            f'display_name = "Administrator"\ncreated_at = "{local_timestamp()}"\n'
        )
        _create(data.users_file, admin)
        data.assets_dir("admin").mkdir(parents=True, exist_ok=True)
    if not data.config_file.exists():
        _create(data.config_file, DEFAULT_CONFIG)
    if not data.themes_file.exists():
        _create(data.themes_file, default_themes_toml())
    if not data.links_file("admin").exists():
        _create(data.links_file("admin"), "[links]\n")
