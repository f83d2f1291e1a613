"""What a request may hold (SPEC §4.6): ids the database columns hold, no NUL, numbers and flags of their
own type; request keys that fit their column; and the fingerprint that tells a client's retry from
another request under the same Idempotency-Key."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.catalog import Kind, load_catalog
from generation.intake import MAX_IDEMPOTENCY_KEY, FromApi, FromTelegram
from generation.requests import (
    MAX_TELEGRAM_ID,
    REQUEST_TYPES,
    InvalidRequest,
    TextToImageRequest,
    ValidRequest,
    validate_request,
)
from generation.store import REQUEST_KEY_LENGTH, Generation

BOTS = {"main"}


def valid(kind: Kind = Kind.text_to_image, **fields: Any) -> ValidRequest:
    return validate_request(kind, {"telegram_id": 42, "bot_name": "main", **fields}, load_catalog(), BOTS)


def refused_fields(kind: Kind = Kind.text_to_image, **fields: Any) -> list[str]:
    with pytest.raises(InvalidRequest) as refused:
        valid(kind, **fields)
    return [problem.field for problem in refused.value.problems]


@pytest.mark.parametrize(
    "fields",
    [
        {"telegram_id": MAX_TELEGRAM_ID + 1},
        {"telegram_id": 2**63},
        {"chat_id": MAX_TELEGRAM_ID + 1},
        {"chat_id": -MAX_TELEGRAM_ID - 1},
        {"telegram_id": True},
        {"telegram_id": "42"},
        {"telegram_id": 42.0},
        {"is_ru": 1},
        {"is_ru": "true"},
        {"num_images": "2"},
        {"username": "a\x00b"},
    ],
)
def test_a_value_no_column_holds_or_of_another_type_is_refused(fields: dict[str, Any]) -> None:
    assert refused_fields(prompt="a fox", **fields) == list(fields)


def test_ids_at_the_bounds_are_taken_and_chats_may_be_negative() -> None:
    request = valid(prompt="a fox", telegram_id=MAX_TELEGRAM_ID, chat_id=-MAX_TELEGRAM_ID).request
    assert (request.telegram_id, request.target_chat) == (MAX_TELEGRAM_ID, -MAX_TELEGRAM_ID)


def test_the_fingerprint_is_the_validated_request_and_kind() -> None:
    fox = valid(prompt="a fox", num_images=2).request.request_fingerprint
    assert valid(num_images=2, prompt="  a fox ").request.request_fingerprint == fox
    assert valid(prompt="a fox", num_images=1).request.request_fingerprint != fox
    assert valid(prompt="a wolf", num_images=2).request.request_fingerprint != fox
    # The same fields asked of another kind are another request.
    assert valid(Kind.neuro_photo, prompt="a fox", num_images=2).request.request_fingerprint != fox
    # Stored with the request (the dispatcher stores its dump), never taken from a client.
    assert valid(prompt="a fox").request.model_dump()["request_fingerprint"]
    assert all("request_fingerprint" not in model.model_fields for model in REQUEST_TYPES.values())
    assert "request_fingerprint" not in str(TextToImageRequest.model_json_schema())
    assert refused_fields(prompt="a fox", request_fingerprint=fox) == ["request_fingerprint"]


def recorded(kind: Kind, request: ValidRequest, **stored: Any) -> Generation:
    return Generation(kind=kind.value, request={**request.request.model_dump(mode="json"), **stored})


def test_an_api_repeat_must_be_the_same_request_and_a_telegram_one_is_the_same_event() -> None:
    fox = valid(prompt="a fox")
    earlier = recorded(Kind.text_to_image, fox, lora_version="what a preparer added")
    assert FromApi("k").repeats(earlier, fox)
    assert not FromApi("k").repeats(earlier, valid(prompt="a wolf"))
    assert not FromApi("k").repeats(recorded(Kind.neuro_photo, fox), fox)
    # Recorded before requests carried a fingerprint: nothing to compare with.
    legacy = Generation(kind="text_to_image", request={"prompt": "a fox"})
    assert FromApi("k").repeats(legacy, valid(prompt="a wolf"))
    # A redelivered update is the update it was, whatever its fields resolve to now.
    assert FromTelegram("main", 42, "7").repeats(earlier, valid(prompt="a wolf"))


def test_an_idempotency_key_must_leave_the_whole_request_key_within_its_column() -> None:
    request = TextToImageRequest(telegram_id=MAX_TELEGRAM_ID, prompt="x")
    long_bot = "b" * 64
    room = REQUEST_KEY_LENGTH - len(f"http:{long_bot}:{MAX_TELEGRAM_ID}:")
    assert room < MAX_IDEMPOTENCY_KEY  # so this bound, not the other, is the one tested
    assert len(FromApi("k" * room).request_key(long_bot, request)) == REQUEST_KEY_LENGTH
    with pytest.raises(InvalidRequest) as refused:
        FromApi("k" * (room + 1)).request_key(long_bot, request)
    assert f"at most {room}" in refused.value.problems[0].message("en")


@settings(max_examples=200, deadline=None, database=None)
@given(
    bot_name=st.text(min_size=1, max_size=64),
    telegram_id=st.integers(1, MAX_TELEGRAM_ID),
    key=st.text(max_size=MAX_IDEMPOTENCY_KEY + 10),
)
def test_a_request_key_is_either_refused_or_fits_its_column_as_ascii(
    bot_name: str, telegram_id: int, key: str
) -> None:
    request = TextToImageRequest(telegram_id=telegram_id, prompt="x")
    try:
        request_key = FromApi(key).request_key(bot_name, request)
    except InvalidRequest as refused:
        assert [problem.field for problem in refused.problems] == ["Idempotency-Key"]
        return
    assert len(request_key) <= REQUEST_KEY_LENGTH
    assert request_key.endswith(key) and key.isascii() and key.isprintable()
