"""Process settings: one frozen struct built from flags and `TRUNK8_*` variables.

Handlers never read the environment; the composition root builds `Settings` once and
passes it to every service factory. Unknown fields are rejected so typos fail loudly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from dotenv import dotenv_values

DEFAULT_PORT = 5001
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a service needs to start; the same struct in every run mode."""

    data_dir: str = "data"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # One NATS URL, or a cluster's comma-separated seed list (`trunk8_shared.bus`).
    nats_url: str = DEFAULT_NATS_URL
    log_level: str = "INFO"
    # Seconds a keep-alive connection may stay idle, and a client may take to send a head.
    keepalive_timeout: float = 75.0
    header_timeout: float = 15.0
    # Seconds the front waits for a client to take any of its unsent answers, then aborts.
    send_timeout: float = 60.0
    # Seconds between NATS reconnect attempts.
    nats_reconnect_wait: float = 1.0
    # Poll the data directory instead of using inotify (network filesystems).
    force_polling: bool = False
    # Seconds between full re-reads of the data directory (lost events, network
    # filesystems; unchanged files cost a hash); 0 turns them off.
    reconcile_interval: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Largest users.toml or links.toml the config-watcher reads, in megabytes.
    max_data_file_mb: Annotated[float, msgspec.Meta(gt=0)] = 16.0
    # The nats-server binary `up` starts; empty: the one beside Python, else on PATH.
    nats_server: str = ""
    # Who answers file, markdown and html links in a process without the files service:
    # "in-process" (nobody: run the files service beside the redirector), "accel"
    # (`X-Accel-Redirect` to nginx's internal `files_accel_prefix`) or "redirect" (307 to
    # `files_public_url`, the files service's public base URL).
    files_mode: Literal["in-process", "accel", "redirect"] = "in-process"
    files_public_url: str = ""
    files_accel_prefix: str = "/_trunk8_files/"
    # Seconds a stopping process answers `/-/ready` 503 while still serving, so a load
    # balancer moves traffic away first; None: the command's default (`trunk8.server`).
    drain_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None
    # Copies of each bucket the config-watcher creates (3 on a 3-node NATS cluster).
    bucket_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # Seconds the active config-watcher's lease lives without a renewal: a standby takes
    # over about this long after the active one died (`trunk8_config_watcher.lease`).
    lease_ttl: Annotated[float, msgspec.Meta(ge=0.5, le=300)] = 5.0
    # The config-watcher's name in the lease (empty: host:pid:random). A watcher takes a
    # lease held under its own name at once: for a process that replaces a dead one under
    # that name (`trunk8 up` names its child so); two live watchers never share one.
    lease_holder: str = ""

    def __post_init__(self) -> None:
        if self.files_mode == "redirect" and not self.files_public_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("files_mode 'redirect' needs an http(s) files_public_url")
        if not self.files_accel_prefix.startswith("/"):
            raise ValueError("files_accel_prefix must start with '/'")

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).resolve()


_ENV_FIELDS = {
    "TRUNK8_DATA_DIR": "data_dir",
    "TRUNK8_HOST": "host",
    "TRUNK8_PORT": "port",
    "TRUNK8_NATS_URL": "nats_url",
    "TRUNK8_LOG_LEVEL": "log_level",
    "TRUNK8_KEEPALIVE_TIMEOUT": "keepalive_timeout",
    "TRUNK8_HEADER_TIMEOUT": "header_timeout",
    "TRUNK8_SEND_TIMEOUT": "send_timeout",
    "TRUNK8_FORCE_POLLING": "force_polling",
    "TRUNK8_RECONCILE_INTERVAL": "reconcile_interval",
    "TRUNK8_MAX_DATA_FILE_MB": "max_data_file_mb",
    "TRUNK8_NATS_SERVER": "nats_server",
    "TRUNK8_FILES_MODE": "files_mode",
    "TRUNK8_FILES_PUBLIC_URL": "files_public_url",
    "TRUNK8_FILES_ACCEL_PREFIX": "files_accel_prefix",
    "TRUNK8_DRAIN_SECONDS": "drain_seconds",
    "TRUNK8_BUCKET_REPLICAS": "bucket_replicas",
    "TRUNK8_LEASE_TTL": "lease_ttl",
    "TRUNK8_LEASE_HOLDER": "lease_holder",
}


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def load_dotenv(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Return `environ` completed by the variables of the `.env` file `path`; real ones win.

    The file is read by python-dotenv, as Trunk8 reads it (T8-016): its quoting, comment and
    `${VAR}` rules apply. A name without `=` (no value) sets nothing.
    """
    merged = dict(environ)
    if not path.is_file():
        return merged
    for key, value in dotenv_values(path, encoding="utf-8").items():
        if value is not None:
            merged.setdefault(key, value)
    return merged


def settings_from(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build settings from `TRUNK8_*` variables, then explicit overrides (flags) on top."""
    fields: dict[str, Any] = {}
    for variable, field in _ENV_FIELDS.items():
        if environ.get(variable, "") != "":
            fields[field] = environ[variable]
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields["log_level"] = normalise_log_level(str(fields.get("log_level", "INFO")))
    try:
        return msgspec.convert(fields, Settings, strict=False)
    except msgspec.ValidationError as err:
        raise SettingsError(f"invalid setting: {err}") from err


def normalise_log_level(value: str) -> str:
    """Trunk8's levels, case-insensitive; anything else warns and falls back to INFO (T8-014)."""
    level = value.strip().upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        return level
    logging.getLogger("trunk8").warning("unknown TRUNK8_LOG_LEVEL %r, using INFO", value)
    return "INFO"


def environment() -> dict[str, str]:
    """The process environment completed by `.env` in the working directory."""
    return load_dotenv(Path.cwd() / ".env", os.environ)
