"""Putting a checked link on disk in the order that loses nothing, then publishing it.

Order (T8-W10): write the new asset, replace links.toml, and only then delete the asset
the link no longer uses. A failure before the TOML is replaced removes the new asset and
leaves the old state as it was; a crash in between leaves at worst an unused file.
Blocking steps run in an executor; the publish step waits for read-your-writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any, TypeVar

from trunk8_shared.datadir import DataDir
from trunk8_shared.datafiles import asset_path_problem

from .datawrites import fsync_folder
from .linkrules import Draft
from .linkstore import LinkFields
from .publish import Published
from .state import Admin

log = logging.getLogger("trunk8.admin")
_T = TypeVar("_T")

ASSET_TYPES = ("file", "markdown", "html")


async def _blocking(call: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)


def _place_asset(assets: Path, draft: Draft) -> Path | None:
    """Write or move the draft's asset into `assets/`; its path, or None if it has none."""
    if draft.asset_name is None:
        return None
    target = assets / draft.asset_name
    if draft.upload is not None:
        os.replace(draft.upload.temp_path, target)  # same folder: an atomic rename
    elif draft.text is not None:
        assets.mkdir(parents=True, exist_ok=True)
        with open(target, "x", encoding="utf-8", newline="") as out:
            out.write(draft.text)
            out.flush()
            os.fsync(out.fileno())
    fsync_folder(assets)
    return target


def remove_asset(assets: Path, fields: LinkFields) -> str | None:
    """Delete a link's asset if it has one inside `assets/`; the error text on failure."""
    path = fields.get("path")
    if fields.get("type") not in ASSET_TYPES or not isinstance(path, str):
        return None
    if asset_path_problem(path):
        return None  # never delete outside the owner's assets (T8-W03)
    try:
        (assets / path).unlink(missing_ok=True)
    except OSError as err:
        return err.strerror or str(err)
    return None


def _codes_on_disk(data: DataDir, owners: list[str]) -> set[str]:
    """Every code in every account's links file (only while the index is not loaded)."""
    codes: set[str] = set()
    for owner in owners:
        try:
            document = tomllib.loads(data.links_file(owner).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # unreadable files are skipped, as in Trunk8's lookup (§4.2)
        links = document.get("links")
        if isinstance(links, dict):
            codes.update(links)
    return codes


async def taken_codes(admin: Admin) -> Container[str]:
    """Codes in use by any user: the index, or the files while the bus is not there yet."""
    if admin.index_ready.is_set():
        return admin.index
    owners = list(await admin.accounts.all())
    return await _blocking(_codes_on_disk, admin.data, owners)


async def save_link(
    admin: Admin, owner: str, code: str, draft: Draft, *, new: bool
) -> tuple[Published, str | None]:
    """Write the draft as a new or rebuilt link; (publish outcome, old-asset warning)."""
    assets = admin.data.assets_dir(owner)
    placed = await _blocking(_place_asset, assets, draft)
    action = "create" if new else "update"
    try:
        if new:
            path = await _blocking(admin.store.add, owner, code, draft.fields)
            previous: LinkFields = {}
        else:
            previous = await _blocking(admin.store.update, owner, code, draft.fields)
            path = admin.data.links_file(owner)
    except BaseException:
        if placed is not None:
            placed.unlink(missing_ok=True)
        admin.metrics.saves.labels(action, "error").inc()
        raise
    warning = None
    if previous.get("path") != draft.fields.get("path"):
        warning = await _blocking(remove_asset, assets, previous)
    published = await admin.publisher.publish(path, links={code: draft.fields})
    admin.metrics.saves.labels(action, published.outcome.value).inc()
    return published, warning


async def delete_link(admin: Admin, owner: str, code: str) -> tuple[Published, str | None]:
    """Remove a link from its owner's file, then its asset; (publish outcome, warning)."""
    previous = await _blocking(admin.store.remove, owner, code)
    warning = await _blocking(remove_asset, admin.data.assets_dir(owner), previous)
    published = await admin.publisher.publish(admin.data.links_file(owner), removed=[code])
    admin.metrics.saves.labels("delete", published.outcome.value).inc()
    return published, warning
