"""Every call a bot makes to the Bot API, counted and timed (metrics.py, provider
"telegram"): by method, with the class of the error it ended in, 429s (TelegramRetryAfter) apart.
An aiogram session middleware, so it sees the calls of every router, of delivery and of polling alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

import metrics

if TYPE_CHECKING:
    from aiogram import Bot

PROVIDER = "telegram"


class CountedApiCalls(BaseRequestMiddleware):
    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        # The method's API name (sendPhoto, getUpdates...): a bounded set, and never a chat or a user.
        with metrics.provider_call(PROVIDER, method.__api_method__, rate_limited=TelegramRetryAfter):
            return await make_request(bot, method)
