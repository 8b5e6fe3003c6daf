"""Reading the admin's forms: streamed multipart with size caps, and Trunk8's name rules.

An upload is written to a hidden temp file in the destination folder while it streams,
counted chunk by chunk: a part over its cap is refused the moment it crosses it, and its
temp file is removed (nothing left on disk). The whole body is capped too (T8-056).
Fields are capped in size, and the CSRF token must come before any file part, so a
forged upload is refused before a byte of it is stored (T8-W05).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import BodyPartReader, web

from .errors import AdminError, CsrfError, FormError, RequestTooLarge

CHUNK = 256 * 1024
# Form fields other than files (URLs, codes, markdown typed into a textarea).
MAX_FIELD_BYTES = 4 * 1024 * 1024
MAX_PARTS = 64
CSRF_FIELD = "csrf_token"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def secure_filename(name: str) -> str:
    """Werkzeug's `secure_filename`, as Trunk8 applies it to uploads (§5.2)."""
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    for separator in ("/", "\\"):
        name = name.replace(separator, " ")
    return _UNSAFE.sub("", "_".join(name.split())).strip("._")


@dataclass
class Upload:
    """One received file: where its bytes are, and what the browser called it."""

    filename: str
    temp_path: Path
    size: int

    def discard(self) -> None:
        """Remove the temp file (when the upload is not used)."""
        self.temp_path.unlink(missing_ok=True)


@dataclass
class UploadForm:
    """Fields and uploads of one multipart form; `discard` removes unused temp files."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        """A field's value ("" when absent)."""
        return self.fields.get(name, default)

    def file(self, name: str) -> Upload | None:
        """An uploaded file with a non-empty name, or None."""
        upload = self.files.get(name)
        return upload if upload is not None and upload.filename else None

    def discard(self) -> None:
        """Remove every temp file not claimed by the handler."""
        for upload in self.files.values():
            upload.discard()


def check_length(request: web.Request, limit: int) -> None:
    """Refuse a body that says it is larger than `limit` before reading any of it."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(limit)


async def read_upload_form(
    request: web.Request,
    csrf_token: str,
    upload_dir: Path,
    request_limit: int,
    file_limits: dict[str, int],
    idle_timeout: float = 60.0,
) -> UploadForm:
    """Stream a multipart form: fields in memory, files to temp files in `upload_dir`.

    `file_limits` caps named file parts (others get `request_limit`); a part over its cap
    raises `FormError` naming the cap, the body over `request_limit` `RequestTooLarge`. A
    client that sends nothing for `idle_timeout` seconds is given up on (`FormError`).
    """
    check_length(request, request_limit)
    if not request.content_type.startswith("multipart/"):
        raise FormError("The form must be sent as multipart/form-data.")
    form = UploadForm()
    total = 0
    token_seen = False
    try:
        reader = await request.multipart()
        for _ in range(MAX_PARTS):
            part = await asyncio.wait_for(reader.next(), idle_timeout)
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise FormError("Nested multipart forms are not accepted.")
            name = part.name or ""
            if part.filename is None:
                value, total = await _read_field(part, total, request_limit, idle_timeout)
                if name == CSRF_FIELD:
                    token_seen = secrets.compare_digest(value, csrf_token)
                    if not token_seen:
                        raise CsrfError()
                form.fields.setdefault(name, value)
                continue
            if not token_seen:
                raise CsrfError()  # before any byte of a file is stored
            if not part.filename:
                # A file input left empty: browsers still send it, with no name.
                total += await _drain(part, request_limit - total, idle_timeout)
                continue
            limit = file_limits.get(name, request_limit)
            upload, total = await _save_part(
                part, upload_dir, total, (request_limit, limit), idle_timeout
            )
            if name in form.files:
                upload.discard()
            else:
                form.files[name] = upload
        else:
            raise FormError("Too many form parts.")
        if not token_seen:
            raise CsrfError()
    except AdminError:
        form.discard()
        raise
    except TimeoutError as err:
        form.discard()
        raise FormError(f"The upload stalled: nothing arrived for {idle_timeout:g} s.") from err
    except (ValueError, AssertionError, EOFError, ConnectionError, aiohttp.ClientError) as err:
        # A body cut short (the client went away), or not multipart as it claims.
        form.discard()
        raise FormError(f"The upload could not be read ({err or type(err).__name__}).") from err
    except BaseException:
        form.discard()
        raise
    return form


async def _read_field(
    part: BodyPartReader, total: int, request_limit: int, idle_timeout: float
) -> tuple[str, int]:
    data = bytearray()
    while chunk := await asyncio.wait_for(part.read_chunk(CHUNK), idle_timeout):
        data += chunk
        total += len(chunk)
        if total > request_limit:
            raise RequestTooLarge(request_limit)
        if len(data) > MAX_FIELD_BYTES:
            raise FormError(f"The field {part.name!r} is too long.")
    try:
        return data.decode("utf-8"), total
    except UnicodeDecodeError as err:
        raise FormError(f"The field {part.name!r} is not UTF-8 text.") from err


async def _drain(part: BodyPartReader, allowed: int, idle_timeout: float) -> int:
    """Read and drop a part; its size (more than `allowed` is refused)."""
    size = 0
    while chunk := await asyncio.wait_for(part.read_chunk(CHUNK), idle_timeout):
        size += len(chunk)
        if size > allowed:
            raise RequestTooLarge(allowed)
    return size


async def _save_part(
    part: BodyPartReader,
    folder: Path,
    total: int,
    limits: tuple[int, int],
    idle_timeout: float,
) -> tuple[Upload, int]:
    request_limit, limit = limits
    os.makedirs(folder, exist_ok=True)  # one mkdir, usually existing
    temp_path = folder / f".upload-{secrets.token_hex(8)}.part"
    size = 0
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await asyncio.wait_for(part.read_chunk(CHUNK), idle_timeout):
                size += len(chunk)
                total += len(chunk)
                if total > request_limit:
                    raise RequestTooLarge(request_limit)
                if size > limit:
                    raise FormError(f"File too large (max {limit // (1024 * 1024)}MB)", part.name)
                out.write(chunk)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return Upload(part.filename or "", temp_path, size), total
