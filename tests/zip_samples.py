"""ZIP archives of photos for tests, built in memory: tiny but real PNG, JPEG and WebP files."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib


def png(index: int = 0) -> bytes:
    """A valid 1x1 RGB PNG whose colour depends on `index` (so archives of them differ)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = bytes(((index * 37) % 256, (index * 91) % 256, (index * 53) % 256))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" + pixel))
        + chunk(b"IEND", b"")
    )


# A 1x1 baseline JPEG's markers (SOI, JFIF APP0, ..., EOI): the signature is what the checks read.
JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    b"\xff\xdb\x00C\x00" + bytes(range(1, 65)) + b"\xff\xd9"
)
# A 1x1 lossless WebP.
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"


def make_zip(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def photos(count: int) -> dict[str, bytes]:
    return {f"photos/me_{index:02d}.png": png(index) for index in range(count)}


def photos_zip(count: int = 10, **extra: bytes) -> bytes:
    """`count` PNG photos in a folder, plus `extra` files by name."""
    return make_zip({**photos(count), **extra})
