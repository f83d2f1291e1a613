"""The request keys of the intake's origins (SPEC §4.2): Telegram's from the bot, chat and event, the
API's from the Idempotency-Key scoped to the bot and user, never from the request's content."""

import pytest

from generation.intake import API_ONLY_BOT, MAX_IDEMPOTENCY_KEY, FromApi, FromTelegram
from generation.requests import GenerationRequest, InvalidRequest


def test_a_telegram_key_is_the_bot_the_chat_and_the_event() -> None:
    request = GenerationRequest(telegram_id=7, bot_name="image_bot", chat_id=-100)
    message = FromTelegram("image_bot", -100, "42")
    assert message.bot_for(request, "other_bot") == "image_bot"
    assert message.request_key("image_bot", request) == "tg:image_bot:-100:42"
    press = FromTelegram("image_bot", -100, "repeat:9001")
    assert press.request_key("image_bot", request) == "tg:image_bot:-100:repeat:9001"


def test_an_api_key_is_scoped_to_the_bot_and_user_and_new_without_a_header() -> None:
    named = GenerationRequest(telegram_id=7, bot_name="voice_bot")
    unnamed = GenerationRequest(telegram_id=7)
    assert FromApi("order-1").bot_for(named, "image_bot") == "voice_bot"
    assert FromApi("order-1").bot_for(unnamed, "image_bot") == "image_bot"
    assert FromApi("order-1").bot_for(unnamed, None) == API_ONLY_BOT
    assert FromApi("order-1").request_key("voice_bot", named) == "http:voice_bot:7:order-1"
    first, second = (FromApi().request_key("voice_bot", named) for _ in range(2))
    assert first.startswith("http:voice_bot:7:") and first != second


def test_an_overlong_idempotency_key_is_a_problem_of_the_request() -> None:
    request = GenerationRequest(telegram_id=7)
    assert FromApi("k" * MAX_IDEMPOTENCY_KEY).request_key("api", request).endswith("k" * MAX_IDEMPOTENCY_KEY)
    with pytest.raises(InvalidRequest) as refused:
        FromApi("k" * (MAX_IDEMPOTENCY_KEY + 1)).request_key("api", request)
    assert [problem.field for problem in refused.value.problems] == ["Idempotency-Key"]
