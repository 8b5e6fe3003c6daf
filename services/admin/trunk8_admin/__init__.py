"""Trunk8's admin service: sign-in and the web UI for the whole life of a link."""

from .app import create_app, setup_admin, viewer_markdown_theme
from .settings import AdminSettings, admin_settings_from
from .state import ADMIN, Admin

__all__ = [
    "ADMIN",
    "Admin",
    "AdminSettings",
    "admin_settings_from",
    "create_app",
    "setup_admin",
    "viewer_markdown_theme",
]
