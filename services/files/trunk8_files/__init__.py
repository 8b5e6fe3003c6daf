"""The files service: file downloads, markdown pages and HTML pages of Trunk8's links.

It answers `/<code>` for file, markdown and html links (through the application's one
`/{code}` dispatcher) and `/f/<code>[/<name>]`, from its own mirror of the links bucket
and the owners' `assets/` folders.
"""

from .app import FILES, Files, create_app, setup_files

__all__ = ["FILES", "Files", "create_app", "setup_files"]
