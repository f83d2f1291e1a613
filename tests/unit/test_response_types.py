"""aiogram's parsed-response types are built once and kept: pydantic's weak cache would drop them."""

import gc

from aiogram.methods import SendMessage
from aiogram.methods.base import Response

from bot.telegram.response_types import keep_response_types


def test_response_types_survive_garbage_collection() -> None:
    assert keep_response_types() > 30
    before = id(Response[SendMessage.__returning__])  # type: ignore[valid-type]
    gc.collect()
    assert id(Response[SendMessage.__returning__]) == before  # type: ignore[valid-type]
