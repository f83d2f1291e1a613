"""Delivery to Telegram chats through the bot each user talks to (generation.delivery.ChatDelivery).

Maps aiogram's errors to the pipeline's: flood control and network trouble are retryable (with
Telegram's retry_after), a blocked bot or a missing chat is final.

Images are sent as their provider's URLs, which Telegram fetches itself: the bytes of a result never
pass through this process, which saves a download and an upload of each image (their time, CPU and
traffic). Telegram refuses a URL it cannot fetch or will not take (a host it cannot reach, such as a
provider on a private network or the web chat's in-memory bot; a photo over 5 MB): the images are
then fetched here and uploaded, and that bot sends the host's images as uploads for a while.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
)
from loguru import logger

from generation.delivery import (
    DOWNLOAD_LIMIT,
    Button,
    DeliveryRefused,
    DeliveryRetryLater,
    InputTooLarge,
    Media,
)

# Part of Telegram's description of a 400 answered to an edit that would change nothing.
NOT_MODIFIED = "message is not modified"
# How long a bot uploads the images of a host after Telegram could not take one of its URLs (and
# the upload that followed went through: the URL was at fault, not the chat).
UPLOADS_AFTER_URL_REFUSED = 600.0


class TelegramDelivery:
    def __init__(self, bots: dict[str, Bot], clock: Callable[[], float] = time.monotonic) -> None:
        self.bots = bots
        self.clock = clock
        # (bot name, host) -> until when that bot uploads that host's images instead of their URLs.
        self._uploads_until: dict[tuple[str, str], float] = {}

    def can_deliver(self, bot_name: str) -> bool:
        return bot_name in self.bots

    async def send_text(
        self, bot_name: str, chat_id: int, text: str, *, buttons: list[Button] | None = None
    ) -> int:
        async with _mapped_errors():
            message = await self._bot(bot_name).send_message(chat_id, text, reply_markup=_markup(buttons))
        return message.message_id

    async def send_images(self, bot_name: str, chat_id: int, images: list[Media]) -> list[int]:
        files = [BufferedInputFile(image.content, filename=image.filename) for image in images]
        async with _mapped_errors():
            return await self._send_photos(bot_name, chat_id, files)

    async def send_image_urls(
        self, bot_name: str, chat_id: int, urls: list[str], fetch: Callable[[str], Awaitable[bytes]]
    ) -> list[int]:
        hosts = {(bot_name, urlsplit(url).hostname or "") for url in urls}
        refusal: str | None = None
        if self._by_url(urls, hosts):
            async with _mapped_errors():
                try:
                    return await self._send_photos(bot_name, chat_id, list(urls))
                except TelegramBadRequest as error:
                    refusal = error.message  # uploaded below: a chat at fault refuses that too
        images = await asyncio.gather(*(fetch(url) for url in urls))
        named = [
            Media(content, _filename(url, index))
            for index, (url, content) in enumerate(zip(urls, images, strict=True))
        ]
        message_ids = await self.send_images(bot_name, chat_id, named)
        if refusal is not None:
            until = self.clock() + UPLOADS_AFTER_URL_REFUSED
            self._uploads_until.update(dict.fromkeys(hosts, until))
            logger.bind(bot=bot_name).info(
                "Telegram did not take images by URL from {} ({}); uploading them for {:.0f} minutes",
                ", ".join(sorted(host for _, host in hosts)),
                refusal,
                UPLOADS_AFTER_URL_REFUSED / 60,
            )
        return message_ids

    def _by_url(self, urls: list[str], hosts: set[tuple[str, str]]) -> bool:
        """Whether to hand Telegram the URLs themselves: web URLs of hosts it did not refuse lately."""
        now = self.clock()
        for key in hosts:
            until = self._uploads_until.get(key)
            if until is not None and until <= now:
                del self._uploads_until[key]
        web = all(urlsplit(url).scheme in ("http", "https") for url in urls)
        return web and not any(key in self._uploads_until for key in hosts)

    async def _send_photos(self, bot_name: str, chat_id: int, photos: Sequence[str | InputFile]) -> list[int]:
        """One photo, or an album of them (Telegram takes 2-10 in one group): uploads or URLs."""
        bot = self._bot(bot_name)
        if len(photos) == 1:
            message = await bot.send_photo(chat_id, photos[0])
            return [message.message_id]
        messages = await bot.send_media_group(chat_id, [InputMediaPhoto(media=photo) for photo in photos])
        return [message.message_id for message in messages]

    async def send_video(self, bot_name: str, chat_id: int, video: Media, caption: str | None = None) -> int:
        async with _mapped_errors():
            message = await self._bot(bot_name).send_video(chat_id, _file(video), caption=caption)
        return message.message_id

    async def send_voice(self, bot_name: str, chat_id: int, voice: Media, caption: str | None = None) -> int:
        async with _mapped_errors():
            message = await self._bot(bot_name).send_voice(chat_id, _file(voice), caption=caption)
        return message.message_id

    async def send_audio(self, bot_name: str, chat_id: int, audio: Media, caption: str | None = None) -> int:
        async with _mapped_errors():
            message = await self._bot(bot_name).send_audio(chat_id, _file(audio), caption=caption)
        return message.message_id

    async def send_document(
        self, bot_name: str, chat_id: int, document: Media, caption: str | None = None
    ) -> int:
        async with _mapped_errors():
            message = await self._bot(bot_name).send_document(chat_id, _file(document), caption=caption)
        return message.message_id

    async def download_file(self, bot_name: str, file_id: str, max_bytes: int = DOWNLOAD_LIMIT) -> bytes:
        bot = self._bot(bot_name)
        async with _mapped_errors():
            file = await bot.get_file(file_id)
            if file.file_size is not None and file.file_size > max_bytes:
                raise InputTooLarge(f"the file is {file.file_size} bytes, over {max_bytes}")
            if file.file_path is None:
                raise DeliveryRefused("Telegram gave no path for the file")
            buffer = await bot.download_file(file.file_path)
        assert buffer is not None
        content = buffer.read()
        if len(content) > max_bytes:
            raise InputTooLarge(f"the file is {len(content)} bytes, over {max_bytes}")
        return content

    async def edit_text(
        self, bot_name: str, chat_id: int, message_id: int, text: str, *, buttons: list[Button] | None = None
    ) -> None:
        bot = self._bot(bot_name)
        async with _mapped_errors():
            try:
                await bot.edit_message_text(
                    text=text, chat_id=chat_id, message_id=message_id, reply_markup=_markup(buttons)
                )
            except TelegramBadRequest as error:
                # Telegram refuses an edit to the text the message already has: it shows what we want.
                if NOT_MODIFIED not in error.message:
                    raise

    async def delete_message(self, bot_name: str, chat_id: int, message_id: int) -> None:
        try:
            async with _mapped_errors():
                await self._bot(bot_name).delete_message(chat_id, message_id)
        except DeliveryRefused:
            pass  # already gone, or too old to delete: nothing to clean up

    async def chat_action(self, bot_name: str, chat_id: int, action: str) -> None:
        async with _mapped_errors():
            await self._bot(bot_name).send_chat_action(chat_id, action)

    def _bot(self, bot_name: str) -> Bot:
        bot = self.bots.get(bot_name)
        if bot is None:
            raise DeliveryRefused(f"no bot {bot_name!r} in this process")
        return bot


def _markup(buttons: list[Button] | None) -> InlineKeyboardMarkup | None:
    """One button a row, or no keyboard at all."""
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=button.text, callback_data=button.callback_data)] for button in buttons
        ]
    )


def _filename(url: str, index: int) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1] or f"image-{index}.png"


def _file(media: Media) -> BufferedInputFile:
    return BufferedInputFile(media.content, filename=media.filename)


@asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    try:
        yield
    except TelegramRetryAfter as error:
        raise DeliveryRetryLater("telegram flood control", retry_after=float(error.retry_after)) from None
    except (TelegramNetworkError, TelegramServerError) as error:
        raise DeliveryRetryLater(f"telegram unavailable: {type(error).__name__}") from None
    except (TelegramForbiddenError, TelegramNotFound, TelegramUnauthorizedError, TelegramBadRequest) as error:
        # aiogram's message is Telegram's description ("Forbidden: bot was blocked by the user"); no token.
        raise DeliveryRefused(f"telegram refused: {error.message}") from None
    except aiohttp.ClientResponseError as error:
        # A file download (`/file/bot<token>/...`) answers with aiohttp's own errors, whose text holds
        # that URL and so the token: only the status goes on.
        if error.status >= 500 or error.status == 429:
            raise DeliveryRetryLater(f"telegram file server answered {error.status}") from None
        raise DeliveryRefused(f"telegram file server answered {error.status}") from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise DeliveryRetryLater(f"telegram file download failed: {type(error).__name__}") from None
