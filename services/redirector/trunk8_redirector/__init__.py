"""The redirector service: answers `GET`/`HEAD /<code>` from an in-memory table kept by NATS."""

from .app import REDIRECTOR, Redirector, create_app, setup_redirector

__all__ = ["REDIRECTOR", "Redirector", "create_app", "setup_redirector"]
