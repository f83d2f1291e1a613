"""The bots' HTTP session: aiogram's own, but a request without files goes as JSON, and one with a
small file goes out in one piece.

aiogram sends every request as a form, each field's value encoded apart (a keyboard as a JSON string
inside it). The Bot API takes a JSON body as well, and for a method without files (a message, an edit,
a deletion: three of a generation's four calls) that is one `json.dumps` of the fields, half the CPU
of the form (about 40 against 85 µs for a status message with its Cancel button, here).

aiogram hands a file to aiohttp as an async generator of chunks, so aiohttp sends the whole form
chunked, each boundary, part header, value and line end a write of its own: a photo took 14 socket
writes where a text message takes one. On this machine a write to a local socket costs about 0.1 ms
of CPU (a profile of the hot-path benchmark put a fifth of the product's CPU in socket writes), and
a message is what every generation ends with. A form whose files are in memory and small is
built here as one body with its length, written at once with its headers; a larger one (a video)
is sent as aiogram sends it, not copied whole once more.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods.base import TelegramType
from aiogram.types import BufferedInputFile, InputFile
from aiohttp import ClientError, ClientTimeout, FormData

if TYPE_CHECKING:
    from aiogram.client.bot import Bot
    from aiogram.methods import TelegramMethod

# Files up to this size in all are sent in the request's one body; larger ones stream as chunks.
ONE_PIECE_UP_TO = 1024 * 1024


class TelegramSession(AiohttpSession):
    def build_form_data(self, bot: Bot, method: TelegramMethod[TelegramType]) -> FormData:
        """aiogram's form, with the bytes of in-memory files (BufferedInputFile) when they are small,
        instead of a generator of their chunks: a form of known length."""
        form = FormData(quote_fields=False)
        files: dict[str, InputFile] = {}
        for key, value in method.model_dump(warnings=False).items():
            value = self.prepare_value(value, bot=bot, files=files)
            if not value:
                continue
            form.add_field(key, value)
        in_memory = sum(len(file.data) for file in files.values() if isinstance(file, BufferedInputFile))
        small = in_memory <= ONE_PIECE_UP_TO
        for key, file in files.items():
            content: Any = file.data if small and isinstance(file, BufferedInputFile) else file.read(bot)
            form.add_field(key, content, filename=file.filename or key)
        return form

    def json_fields(self, bot: Bot, method: TelegramMethod[TelegramType]) -> dict[str, Any] | None:
        """The method's fields as a JSON body holds them (nested objects as objects, not strings), the
        fields the form leaves out left out too (no value, an empty string); None when the method
        sends a file, which only a form can carry."""
        files: dict[str, InputFile] = {}
        fields: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":
                fields[key] = prepared
        return None if files else fields

    async def make_request(
        self, bot: Bot, method: TelegramMethod[TelegramType], timeout: int | None = None
    ) -> TelegramType:
        """aiogram's `make_request`, but for the body: JSON without files; with files, a form of known
        length goes as bytes, so that aiohttp writes it with its headers at once."""
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=method.__api_method__)
        data: Any
        headers = {}
        fields = self.json_fields(bot, method)
        if fields is not None:
            data = json.dumps(fields, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        else:
            payload = self.build_form_data(bot=bot, method=method)()
            data = payload
            if payload.size is not None:  # no file given as a stream of chunks (build_form_data)
                data = await payload.as_bytes()
                headers["Content-Type"] = payload.content_type
        try:
            async with session.post(
                url,
                data=data,
                headers=headers,
                timeout=ClientTimeout(total=self.timeout if timeout is None else timeout),
            ) as response:
                raw_result = await response.text()
        except TimeoutError as error:
            raise TelegramNetworkError(method=method, message="Request timeout error") from error
        except ClientError as error:
            raise TelegramNetworkError(method=method, message=f"{type(error).__name__}: {error}") from error
        result = self.check_response(bot=bot, method=method, status_code=response.status, content=raw_result)
        return cast(TelegramType, result.result)
