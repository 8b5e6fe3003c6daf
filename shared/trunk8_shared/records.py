"""What travels over NATS: KV records, domain events and control messages.

Every type is a frozen msgspec struct with a schema version `v`; new fields get defaults
and decoders ignore unknown fields, so producers and consumers can be upgraded one at a
time. Events share one tagged base; the tag is also the subject suffix.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

LINKS_BUCKET = "trunk8_links"
USERS_BUCKET = "trunk8_users"
# The config-watchers' lease: one key, expiring unless the active watcher renews it.
LEASE_BUCKET = "trunk8_lease"

EVENTS_PREFIX = "trunk8.events"
RELOAD_SUBJECT = "trunk8.control.reload"


class LinkRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A served link, keyed by its short code in KV `trunk8_links`.

    Untracked by the garbage collector (`gc=False`: its fields are scalars, so it is in no
    cycle): a million of them made each full collection of a process walk them all.
    """

    v: int = 1
    code: str
    owner: str
    type: str
    url: str | None = None
    path: str | None = None
    original_filename: str | None = None
    file_size: int | None = None
    mime_type: str | None = None
    upload_date: str | None = None
    expiration_date: str | None = None  # as written in links.toml, for display
    expires_at: float | None = None  # Unix time after which the link is gone; None = never


class UserRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the serving path knows of an account (never its password hash)."""

    v: int = 1
    username: str
    display_name: str
    is_admin: bool = False
    created_at: str | None = None
    position: int = 0  # order in users.toml: the search order for duplicate codes


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every domain event published on `trunk8.events.<type>`."""

    v: int = 1
    at: float = msgspec.field(default_factory=time.time)


class LinkCreated(Event, tag="link.created", frozen=True, kw_only=True):
    link: LinkRecord


class LinkUpdated(Event, tag="link.updated", frozen=True, kw_only=True):
    link: LinkRecord


class LinkDeleted(Event, tag="link.deleted", frozen=True, kw_only=True):
    code: str
    owner: str


class LinkExpired(Event, tag="link.expired", frozen=True, kw_only=True):
    """An expired link was purged from its owner's file (after its `link.deleted`)."""

    code: str
    owner: str
    expiration_date: str = ""  # as written in links.toml
    expires_at: float | None = None  # the Unix time it expired at


class LinksBulkChanged(Event, tag="link.bulk", frozen=True, kw_only=True):
    """Many links changed in one publication (an import, a restore, a first start).

    Stands for that many `link.created`/`updated`/`deleted` events; read the bucket (or
    its snapshot) at `revision` for the links themselves.
    """

    created: int
    updated: int
    deleted: int
    revision: int


class UserCreated(Event, tag="user.created", frozen=True, kw_only=True):
    user: UserRecord


class UserUpdated(Event, tag="user.updated", frozen=True, kw_only=True):
    user: UserRecord


class UserDeleted(Event, tag="user.deleted", frozen=True, kw_only=True):
    username: str


class ConfigError(Event, tag="config.error", frozen=True, kw_only=True):
    """A data file was rejected; the last good state of that file stays served."""

    file: str
    reason: str


class LinkRejected(Event, tag="config.link_rejected", frozen=True, kw_only=True):
    """One link of a links file is refused and not served; the file's other links are."""

    file: str
    code: str
    reason: str


class UserRejected(Event, tag="config.user_rejected", frozen=True, kw_only=True):
    """One account of users.toml is refused (its name or entry); its links are not served."""

    file: str
    username: str
    reason: str


class DuplicateCode(Event, tag="config.duplicate", frozen=True, kw_only=True):
    """A code appears in several users' files; `winner` is served (first in users.toml)."""

    code: str
    winner: str
    shadowed: list[str]


class LeaseAcquired(Event, tag="config.lease_acquired", frozen=True, kw_only=True):
    """A config-watcher became the active one (it reconciles, then publishes)."""

    holder: str
    lease_revision: int


class LeaseLost(Event, tag="config.lease_lost", frozen=True, kw_only=True):
    """The active config-watcher stopped being it and stands by; `reason` says why."""

    holder: str
    reason: str


class AuditAction(Event, tag="audit.action", frozen=True, kw_only=True):
    """An admin's action worth a trail: switching users, and every change made while switched.

    `admin` is the signed-in account, `user` the account acted as ("" when not switched).
    """

    admin: str
    user: str = ""
    action: str
    target: str = ""
    detail: str = ""
    # The client's address, as the admin saw it past trusted proxies ("" if unknown).
    client: str = ""


AnyEvent = (
    LinkCreated
    | LinkUpdated
    | LinkDeleted
    | LinkExpired
    | LinksBulkChanged
    | UserCreated
    | UserUpdated
    | UserDeleted
    | ConfigError
    | LinkRejected
    | UserRejected
    | DuplicateCode
    | LeaseAcquired
    | LeaseLost
    | AuditAction
)


def event_subject(event: Event) -> str:
    """The subject an event is published on."""
    return f"{EVENTS_PREFIX}.{type(event).__struct_config__.tag}"


class ReloadRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Ask the config-watcher to re-read a file now (path relative to the data dir), or all.

    A saver of one links file may also say what it changed: `links` (code -> the entry as
    written in the file) and `removed` codes. The watcher then publishes those entries at
    once, checked as a file read would check them, and re-reads the file afterwards.
    """

    v: int = 1
    path: str | None = None
    links: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    removed: list[str] = msgspec.field(default_factory=list)

    @property
    def carries_changes(self) -> bool:
        """Whether the request says what changed (the watcher need not read the file first)."""
        return bool(self.links or self.removed)


class ReloadReply(msgspec.Struct, frozen=True, kw_only=True):
    """The links bucket revision once the reload is published; `error` when it was rejected."""

    v: int = 1
    revision: int
    changed: int = 0
    error: str | None = None
    # Entries of the requested file refused alone (code or username -> reason; up to 100).
    refused: dict[str, str] = msgspec.field(default_factory=dict)


json_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(AnyEvent)
link_decoder = msgspec.json.Decoder(LinkRecord)
user_decoder = msgspec.json.Decoder(UserRecord)
reload_request_decoder = msgspec.json.Decoder(ReloadRequest)
reload_reply_decoder = msgspec.json.Decoder(ReloadReply)
