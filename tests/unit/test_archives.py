"""The checks of a training's ZIP of photos (generation/archives.py), on archives built in memory and on
files, as a fetch leaves them."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import pytest

from generation.archives import (
    _SCAN_CHUNK,
    MEGABYTE,
    TRAINING_ARCHIVE,
    ArchiveLimits,
    _count_central_records,
    check_training_archive,
)
from generation.requests import InvalidRequest
from tests.zip_samples import JPEG, WEBP, make_zip, photos, photos_zip, png


def rejection(content: bytes, limits: ArchiveLimits = TRAINING_ARCHIVE) -> tuple[str, dict[str, object]]:
    with pytest.raises(InvalidRequest) as raised:
        check_training_archive(content, field="zip_url", limits=limits)
    [problem] = raised.value.problems
    assert problem.field == "zip_url"
    return problem.code, problem.params


def test_ten_photos_of_any_supported_kind_pass() -> None:
    files = {
        **{f"me_{index}.png": png(index) for index in range(4)},
        **{f"me_{index}.JPG": JPEG for index in range(3)},
        "me_7.jpeg": JPEG,
        "me_8.webp": WEBP,
        "nested/deeper/me_9.PNG": png(9),
    }
    summary = check_training_archive(make_zip(files))
    assert summary.images == 10
    assert summary.entries == 10


def test_stored_entries_count_as_well_as_deflated_ones() -> None:
    assert check_training_archive(make_zip(photos(12), compression=zipfile.ZIP_STORED)).images == 12


def test_nine_photos_are_too_few_and_the_message_says_how_many() -> None:
    code, params = rejection(photos_zip(9))
    assert (code, params) == ("zip_too_few_images", {"count": 9, "min": 10})


def test_macos_leftovers_hidden_files_and_other_files_are_not_photos() -> None:
    content = photos_zip(
        9,
        **{
            "__MACOSX/photos/._me_00.png": png(0),
            "photos/._me_01.png": png(1),
            ".hidden/me.png": png(2),
            "photos/.DS_Store": b"\x00\x00\x00\x01Bud1",
            "notes.txt": b"my photos",
            "me.gif": b"GIF89a",
        },
    )
    code, params = rejection(content)
    assert code == "zip_too_few_images" and params["count"] == 9


def test_a_photo_is_judged_by_its_content_not_its_name() -> None:
    content = photos_zip(9, **{"fake.jpg": b"this is not a jpeg", "empty.png": b""})
    code, params = rejection(content)
    assert code == "zip_too_few_images" and params["count"] == 9


@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04 but nothing after", png(0), b"%PDF-1.7 photos", b"\x00" * 1000],
    ids=["empty", "truncated", "png", "pdf", "zeros"],
)
def test_what_is_not_a_zip_is_refused_whatever_its_name(content: bytes) -> None:
    assert rejection(content)[0] == "zip_not_archive"


def test_an_archive_over_the_size_limit_is_refused_before_it_is_opened() -> None:
    content = photos_zip(10)
    limits = ArchiveLimits(max_bytes=len(content) - 1)
    assert rejection(content, limits) == ("zip_too_large", {"limit_mb": 0})
    assert TRAINING_ARCHIVE.max_bytes == 20 * MEGABYTE  # what a Telegram bot may download


def test_an_archive_unpacking_to_too_much_is_refused() -> None:
    content = photos_zip(10, **{"big.png": png(0) + b"\x00" * 3000})
    limits = ArchiveLimits(max_unpacked_bytes=2000)
    assert rejection(content, limits)[0] == "zip_unpacked_too_large"


def test_an_entry_that_compresses_like_a_zip_bomb_is_refused() -> None:
    # Two megabytes of zeros pack to about two kilobytes: no photo compresses a thousand to one.
    content = photos_zip(10, **{"photos/huge.jpg": JPEG + b"\x00" * (2 * MEGABYTE)})
    assert len(content) < 20_000
    assert rejection(content)[0] == "zip_compression"


def test_small_files_may_compress_well() -> None:
    content = photos_zip(10, **{"captions.txt": b"a photo of me " * 5000})
    assert check_training_archive(content).images == 10


def test_too_many_entries_are_refused_before_they_are_all_parsed() -> None:
    content = photos_zip(10, **{f"junk/{index}.txt": b"" for index in range(30)})
    assert rejection(content, ArchiveLimits(max_entries=20)) == ("zip_too_many_files", {"limit": 20})


def test_directories_are_not_entries() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.mkdir("photos")
        for name, content in photos(10).items():
            archive.writestr(name, content)
    summary = check_training_archive(buffer.getvalue())
    assert (summary.images, summary.entries) == (10, 10)


class ReadsRecorded(io.BytesIO):
    """A file that remembers how many bytes each read gave."""

    def __init__(self, content: bytes) -> None:
        super().__init__(content)
        self.given: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        piece = super().read(size)
        self.given.append(len(piece))
        return piece


def test_an_archive_is_read_from_its_file_in_pieces_never_whole() -> None:
    # Three megabytes that do not compress, so the file spans several of the scan's pieces.
    content = photos_zip(10, **{"clip.bin": random.Random(7).randbytes(3 * MEGABYTE)})
    archive = ReadsRecorded(content)
    assert check_training_archive(archive).images == 10
    assert len(content) > 3 * _SCAN_CHUNK
    assert max(archive.given) == _SCAN_CHUNK


def test_a_temporary_file_is_checked_as_the_fetch_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "photos.zip"
    path.write_bytes(photos_zip(10))
    with path.open("rb") as file:
        file.seek(123)  # wherever the file stands, the whole archive is judged
        assert check_training_archive(file).images == 10


def test_a_signature_split_between_two_pieces_is_counted_once() -> None:
    for offset in range(-4, 1):
        content = b"x" * (_SCAN_CHUNK + offset) + b"PK\x01\x02" + b"y" * 10 + b"PK\x01\x02"
        assert _count_central_records(io.BytesIO(content), stop_after=10) == 2, offset
