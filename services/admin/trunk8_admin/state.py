"""The admin service's state in one application: everything its handlers share.

Built once by `setup_admin`; handlers reach it through the typed `ADMIN` key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp_session import AbstractStorage
from cryptography.fernet import Fernet

from trunk8_shared.datadir import DataDir
from trunk8_shared.settings import Settings

from .accounts import AccountBook
from .audit import AuditTrail
from .linkindex import LinkIndex
from .linkstore import LinkStore
from .metrics import AdminMetrics
from .proxies import TrustedProxies
from .publish import LinkPublisher
from .settings import AdminSettings
from .siteconfig import SiteConfig, Themes
from .throttle import LoginThrottle


@dataclass
class Admin:
    """Settings, data files, the link index and the helpers of the admin service."""

    settings: Settings
    admin_settings: AdminSettings
    data: DataDir
    accounts: AccountBook
    themes: Themes
    index: LinkIndex
    store: LinkStore
    publisher: LinkPublisher
    audit: AuditTrail
    throttle: LoginThrottle
    # Finds the client address behind a trusted reverse proxy.
    proxies: TrustedProxies
    metrics: AdminMetrics
    storage: AbstractStorage
    # Encrypts session cookies (also read by the markdown theme of signed-in viewers).
    session_fernet: Fernet
    # Read once at start, as in Trunk8 (T8-085): the request cap and remember-me lifetime.
    startup_config: SiteConfig
    static_urls: dict[str, str]
    # Set once the link index holds the whole bucket.
    index_ready: asyncio.Event


ADMIN = web.AppKey("trunk8.admin", Admin)
