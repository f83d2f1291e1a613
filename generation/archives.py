"""Checks of the ZIP of photos a LoRA training is made from, before anything is charged.

The archive is read from a file (a fetch streams it to a temporary one), in pieces: it is never whole in
memory here. Everything is read from its content (never from its name or MIME type) and bounded: the size
of the download, the number of entries, what the entries claim to unpack to, and how much better than
photos they compress (photos barely compress; a "zip bomb" compresses a thousand to one). Images are
counted by extension and by their first bytes; only those few bytes of each entry are ever unpacked.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from generation.delivery import DOWNLOAD_LIMIT
from generation.requests import InvalidRequest, Problem

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
MEGABYTE = 1024 * 1024
# A central directory record is at least 46 bytes and starts with this signature; counting it before
# zipfile parses every record keeps a 20 MB archive of 400,000 empty entries from costing memory.
_CENTRAL_RECORD = b"PK\x01\x02"
# The archive is scanned for those signatures this many bytes at a time.
_SCAN_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    min_images: int = 10
    # Telegram lets a bot download at most 20 MB; HTTP clients' archives get the same limit.
    max_bytes: int = DOWNLOAD_LIMIT
    max_entries: int = 1000
    max_unpacked_bytes: int = 200 * MEGABYTE
    # Photos are already compressed; an entry that unpacks to this many times its packed size is not one.
    max_ratio: int = 100
    # Small files (captions, thumbnails) may compress well; the ratio is checked above this size.
    ratio_checked_from: int = MEGABYTE


TRAINING_ARCHIVE = ArchiveLimits()


@dataclass(frozen=True)
class ArchiveSummary:
    images: int
    entries: int
    unpacked_bytes: int


def check_training_archive(
    archive_file: IO[bytes] | bytes, *, field: str = "zip", limits: ArchiveLimits = TRAINING_ARCHIVE
) -> ArchiveSummary:
    """Answer what the archive holds, or raise InvalidRequest naming `field` with what is wrong.
    `archive_file` is a seekable binary file (or, for small archives already in memory, bytes)."""

    def reject(code: str, **params: object) -> InvalidRequest:
        return InvalidRequest([Problem(field, code, dict(params))])

    file = io.BytesIO(archive_file) if isinstance(archive_file, bytes) else archive_file
    if file.seek(0, io.SEEK_END) > limits.max_bytes:
        raise reject("zip_too_large", limit_mb=limits.max_bytes // MEGABYTE)
    if _count_central_records(file, stop_after=limits.max_entries) > limits.max_entries:
        raise reject("zip_too_many_files", limit=limits.max_entries)
    file.seek(0)
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise reject("zip_not_archive") from None
    with archive:
        entries = [entry for entry in archive.infolist() if not entry.is_dir()]
        if len(entries) > limits.max_entries:
            raise reject("zip_too_many_files", limit=limits.max_entries)
        unpacked = sum(entry.file_size for entry in entries)
        if unpacked > limits.max_unpacked_bytes:
            raise reject("zip_unpacked_too_large", limit_mb=limits.max_unpacked_bytes // MEGABYTE)
        if any(_compresses_too_well(entry, limits) for entry in entries):
            raise reject("zip_compression")
        images = sum(1 for entry in entries if _is_image(archive, entry))
    if images < limits.min_images:
        raise reject("zip_too_few_images", count=images, min=limits.min_images)
    return ArchiveSummary(images=images, entries=len(entries), unpacked_bytes=unpacked)


def _count_central_records(file: IO[bytes], *, stop_after: int) -> int:
    """The central directory records' signatures in the file, read a piece at a time (counting stops
    once over `stop_after`). The last bytes of a piece are kept for the next, so a signature split
    between two pieces is counted, and only once: it is longer than what is kept."""
    file.seek(0)
    count = 0
    kept = b""
    while piece := file.read(_SCAN_CHUNK):
        window = kept + piece
        count += window.count(_CENTRAL_RECORD)
        if count > stop_after:
            break
        kept = window[-(len(_CENTRAL_RECORD) - 1) :]
    return count


def _compresses_too_well(entry: zipfile.ZipInfo, limits: ArchiveLimits) -> bool:
    if entry.file_size < limits.ratio_checked_from:
        return False
    return entry.file_size > max(entry.compress_size, 1) * limits.max_ratio


def _is_image(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bool:
    path = PurePosixPath(entry.filename.replace("\\", "/"))
    # macOS adds __MACOSX/ and ._name resource forks; hidden files (.DS_Store) are not photos either.
    if any(part == "__MACOSX" or part.startswith(".") for part in path.parts):
        return False
    if path.suffix.lower() not in IMAGE_EXTENSIONS or entry.file_size == 0:
        return False
    try:
        with archive.open(entry) as opened:
            head = opened.read(12)
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError, NotImplementedError):
        return False  # encrypted, damaged, or packed with a method we cannot read: not a usable photo
    return looks_like_image(head)


def looks_like_image(head: bytes) -> bool:
    """JPEG, PNG or WebP, by their signatures."""
    return (
        head.startswith(b"\xff\xd8\xff")
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )
