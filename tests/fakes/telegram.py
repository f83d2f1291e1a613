"""A fake Telegram Bot API server for tests.

The real aiogram ``Bot`` talks to it over HTTP on loopback::

    fake = FakeTelegram()
    await fake.start()
    fake.add_bot("123456:ABC-def", "test_bot")
    bot = Bot("123456:ABC-def", session=AiohttpSession(api=TelegramAPIServer.from_base(fake.url)))

It answers in Telegram's wire format (``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": ..., "description": ...}`` with the same HTTP status), keeps a
per-bot update queue served by real long polling, remembers the messages each bot sent (so that
edits, deletes, replies and button presses behave like Telegram's), parses ``parse_mode``
(HTML, MarkdownV2, Markdown) into entities with Telegram's error texts, and records every request
as a :class:`Call`.

Deliberate choices worth knowing:

* Chats the fake has not seen are accepted (a private chat ``{"id", "type": "private",
  "first_name": "Test"}`` is made up); use :meth:`FakeTelegram.block_user` or
  :meth:`FakeTelegram.fail_next` for 403s. Sending to another registered bot's id answers
  403 "Forbidden: bot can't send messages to bots".
* file_ids are per bot, as on Telegram: a file_id minted by the fake for one bot is refused
  ("wrong file identifier/HTTP URL specified") when another bot uses it. A file_id the fake never
  minted is accepted as an opaque id (its bytes are unknown).
* A file sent as an HTTP URL is fetched, as Telegram fetches it, when the URL is on loopback (no test
  reaches beyond this machine): an answer other than 200 or a connection that fails answers 400
  "failed to get HTTP URL content", a photo that is not an image "wrong type of the web page
  content", one over 5 MB (Telegram's limit by URL; 20 MB for other files) "failed to get HTTP URL
  content". The bytes fetched are in :attr:`Call.fetched`. Other URLs are accepted, never fetched.
* Photo bytes are not decoded; PNG/JPEG/GIF/WebP headers give width and height when present.
* ``getUpdates`` only forgets updates it has handed out and that a later ``offset`` confirms, so
  :meth:`FakeTelegram.push_update` redelivers an update even after aiogram moved its offset past it.
  ``allowed_updates`` filters (and drops) updates at delivery time. A newer ``getUpdates`` of the
  same bot ends a pending one with 409 "terminated by other getUpdates request", as Telegram does.
* Each bot has its own update_id sequence and all start at the same number, so update_ids of
  different bots collide (dedupe must key on the bot too).
* Editing text without ``reply_markup`` removes the inline keyboard; an edit that changes
  nothing answers 400 "message is not modified", as Telegram does.

Telegram Stars payments (``sendInvoice``, ``answerPreCheckoutQuery``, ``refundStarPayment``):

* The user's side is played by :meth:`FakeTelegram.pay` (tap Pay on an invoice: pre_checkout_query,
  wait for the bot's answer, then a ``successful_payment`` message) and
  :meth:`FakeTelegram.push_pre_checkout` (a forged or stale pre-checkout for any payload/amount).
* Error texts follow the Bot API server: missing parameters answer 'parameter "x" is required',
  a zero total answers "total price must be positive" (checked by TDLib before Telegram's servers
  see it), an unknown, expired (over 10 s) or already answered pre-checkout query answers "query is
  too old and response timeout expired or query ID is invalid" (the Bot API's rewording of
  QUERY_ID_INVALID). Telegram's own codes are kept where the servers decide: PAYMENT_PROVIDER_INVALID
  (XTR with a provider token, or another currency without one), STARS_INVOICE_INVALID (XTR with
  several prices or with tips), CURRENCY_TOTAL_AMOUNT_INVALID (over :data:`MAX_STARS_AMOUNT` stars),
  INVOICE_PAYLOAD_INVALID (over 128 bytes), CHARGE_NOT_FOUND, CHARGE_ALREADY_REFUNDED. The codes for
  a title over 32 or a description over 255 characters (INVOICE_TITLE_INVALID,
  INVOICE_DESCRIPTION_INVALID) are the fake's guesses: Telegram's texts for them are undocumented.
* A non-empty ``reply_markup`` of an invoice must start with a Pay button (BUTTON_TYPE_INVALID
  otherwise); without one the message carries no ``reply_markup`` (clients draw the Pay button).
* An invoice in a private chat can be paid once (afterwards clients show a receipt instead).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import mimetypes
import re
import secrets
import struct
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout, web

JSON = dict[str, Any]

__all__ = ["CHAT_METHODS", "Call", "Charge", "FakeTelegram", "Invoice", "Payment"]

CHAT_METHODS: Final[frozenset[str]] = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendMediaGroup",
        "sendVideo",
        "sendVoice",
        "sendAudio",
        "sendDocument",
        "sendAnimation",
        "editMessageText",
        "editMessageCaption",
        "sendInvoice",
    }
)

MAX_TEXT: Final = 4096
MAX_CAPTION: Final = 1024
MAX_UPLOAD: Final = 50 * 1024 * 1024
MAX_PHOTO: Final = 10 * 1024 * 1024
# What Telegram fetches of a file sent as an HTTP URL: 5 MB for a photo, 20 MB for other files.
MAX_PHOTO_BY_URL: Final = 5 * 1024 * 1024
MAX_FILE_BY_URL: Final = 20 * 1024 * 1024
# The hosts whose URLs the fake fetches: loopback only, as no test may reach beyond this machine.
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
# The parameter that carries the file of each method sending one.
MEDIA_PARAMS: Final = {
    "sendPhoto": "photo",
    "sendVideo": "video",
    "sendVoice": "voice",
    "sendAudio": "audio",
    "sendDocument": "document",
    "sendAnimation": "animation",
}
MAX_DOWNLOAD: Final = 20 * 1024 * 1024
FIRST_UPDATE_ID: Final = 700_000_000
MAX_INVOICE_TITLE: Final = 32
MAX_INVOICE_DESCRIPTION: Final = 255
MAX_INVOICE_PAYLOAD: Final = 128
MAX_STARS_AMOUNT: Final = 10_000
"""Largest price of one Stars invoice Telegram accepts (more answers CURRENCY_TOTAL_AMOUNT_INVALID)."""
MAX_CURRENCY_AMOUNT: Final = 9_999_9999_9999
PRE_CHECKOUT_TIMEOUT: Final = 10.0
"""Seconds a bot has to answer a pre_checkout_query before Telegram drops it."""
STARS: Final = "XTR"

# Form fields Telegram reads as strings even when they look like JSON numbers or booleans.
_STRING_PARAMS: Final[frozenset[str]] = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "photo",
        "video",
        "voice",
        "audio",
        "document",
        "animation",
        "sticker",
        "video_note",
        "thumbnail",
        "url",
        "secret_token",
        "ip_address",
        "callback_query_id",
        "inline_message_id",
        "file_id",
        "action",
        "title",
        "performer",
        "emoji",
        "business_connection_id",
        "message_effect_id",
        "language_code",
        "description",
        "short_description",
        "name",
        "payload",
        "currency",
        "provider_token",
        "start_parameter",
        "question",
        "first_name",
        "last_name",
        "phone_number",
        "address",
        "vcard",
        "custom_title",
        "invite_link",
        "query_id",
        "inline_query_id",
        "pre_checkout_query_id",
        "shipping_query_id",
        "error_message",
        "switch_pm_text",
        "switch_pm_parameter",
        "next_offset",
        "cache_time_text",
    }
)

# Parameters FakeTelegram.summary() shows for each call.
_SUMMARY_PARAMS: Final = (
    "chat_id",
    "text",
    "caption",
    "message_id",
    "data",
    "offset",
    "media",
    "payload",
    "prices",
    "pre_checkout_query_id",
    "ok",
    "error_message",
    "user_id",
    "telegram_payment_charge_id",
)

_DEFAULT_UPDATE_TYPES: Final[frozenset[str]] = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
    }
)

_CHAT_ACTIONS: Final[frozenset[str]] = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

_BUTTON_ACTIONS: Final[frozenset[str]] = frozenset(
    {
        "url",
        "callback_data",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)


@dataclass(frozen=True)
class _Kind:
    directory: str
    extension: str
    mime_type: str
    id_prefix: str


_KINDS: Final[dict[str, _Kind]] = {
    "photo": _Kind("photos", "jpg", "image/jpeg", "AgACAgIAAxkBAAI"),
    "video": _Kind("videos", "mp4", "video/mp4", "BAACAgIAAxkBAAI"),
    "voice": _Kind("voice", "oga", "audio/ogg", "AwACAgIAAxkBAAI"),
    "audio": _Kind("music", "mp3", "audio/mpeg", "CQACAgIAAxkBAAI"),
    "document": _Kind("documents", "bin", "application/octet-stream", "BQACAgIAAxkBAAI"),
    "animation": _Kind("animations", "mp4", "video/mp4", "CgACAgIAAxkBAAI"),
}
_KIND_BY_DIRECTORY: Final[dict[str, str]] = {kind.directory: name for name, kind in _KINDS.items()}


@dataclass
class Hold:
    arrived: asyncio.Event
    release: asyncio.Event
    # Which calls of the method wait (by their parameters); every one when None.
    only: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class Call:
    """One request the fake received."""

    token: str
    method: str
    params: dict[str, Any]
    """Decoded parameters: JSON-encoded fields parsed back, numbers as ints, ``attach://x`` kept."""
    files: dict[str, bytes]
    """Uploaded files keyed by their multipart field name."""
    result: Any = None
    """What the fake answered on success (the Message dict, True, ...); None for an error."""
    error: JSON | None = None
    """The error body answered (``{"ok": false, "error_code": ...}``), None on success."""
    fetched: dict[str, bytes] = field(default_factory=dict)
    """Files sent as HTTP URLs that the fake fetched (loopback ones), keyed by URL."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        """``text`` or ``caption`` as sent (before parse_mode parsing)."""
        value = self.params.get("text", self.params.get("caption"))
        return value if isinstance(value, str) else None

    def upload(self, param: str) -> bytes | None:
        """Bytes uploaded for ``param`` (through ``attach://name`` or a part named ``param``), or
        fetched from the URL it gave."""
        value = self.params.get(param)
        if isinstance(value, str) and value.startswith("attach://"):
            return self.files.get(value.removeprefix("attach://"))
        if isinstance(value, str) and value in self.fetched:
            return self.fetched[value]
        return self.files.get(param)

    def media(self, value: str) -> bytes | None:
        """The bytes of one file the call sent (an ``attach://`` reference or a fetched URL)."""
        if value.startswith("attach://"):
            return self.files.get(value.removeprefix("attach://"))
        return self.fetched.get(value)


@dataclass(frozen=True)
class Invoice:
    """An invoice a bot sent (``sendInvoice``)."""

    token: str
    chat_id: int
    message_id: int
    title: str
    description: str
    payload: str
    currency: str
    total_amount: int
    start_parameter: str


@dataclass(frozen=True)
class Charge:
    """A payment Telegram made to a bot (what ``refundStarPayment`` looks up)."""

    token: str
    user_id: int
    charge_id: str
    """``telegram_payment_charge_id``."""
    provider_charge_id: str
    payload: str
    currency: str
    total_amount: int
    refunded: bool = False


@dataclass(frozen=True)
class Payment:
    """What came of :meth:`FakeTelegram.pay`."""

    ok: bool
    """The bot answered the pre_checkout_query with ok=true and the user was charged."""
    error_message: str | None
    """The bot's error_message when it refused the payment."""
    query_id: str
    charge_id: str | None = None
    """``telegram_payment_charge_id`` of the charge, None when nothing was paid."""
    provider_charge_id: str | None = None
    update: JSON | None = None
    """The update with the ``successful_payment`` message (push it again to simulate a redelivery)."""


@dataclass
class _PreCheckout:
    query_id: str
    user_id: int
    payload: str
    currency: str
    total_amount: int
    expires_at: float
    answer: JSON | None = None


class _ApiError(Exception):
    def __init__(self, error_code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


@dataclass
class _File:
    file_id: str
    file_unique_id: str
    kind: str
    content: bytes | None
    file_name: str | None = None
    mime_type: str | None = None
    width: int = 0
    height: int = 0
    declared_size: int | None = None
    file_path: str | None = None
    sizes: list[JSON] | None = None

    @property
    def file_size(self) -> int | None:
        if self.declared_size is not None:
            return self.declared_size
        return None if self.content is None else len(self.content)


@dataclass
class _Queued:
    update: JSON
    delivered: bool = False


@dataclass
class _Failure:
    method: str
    error: _ApiError
    times: int
    chat_id: int | None


@dataclass
class _Bot:
    token: str
    id: int
    username: str
    first_name: str
    queue: list[_Queued] = field(default_factory=list)
    next_update_id: int = FIRST_UPDATE_ID
    allowed_updates: list[str] | None = None
    poll_generation: int = 0
    pollers: int = 0
    webhook: JSON | None = None
    commands: dict[tuple[str, str], list[JSON]] = field(default_factory=dict)
    files: dict[str, _File] = field(default_factory=dict)
    paths: dict[str, _File] = field(default_factory=dict)
    next_path: int = 1
    chats: dict[int, JSON] = field(default_factory=dict)
    users: dict[int, JSON] = field(default_factory=dict)
    messages: dict[tuple[int, int], JSON] = field(default_factory=dict)
    deleted: set[tuple[int, int]] = field(default_factory=set)
    last_message_id: dict[int, int] = field(default_factory=dict)
    callback_queries: set[str] = field(default_factory=set)
    blocked: set[int] = field(default_factory=set)
    invoices: dict[tuple[int, int], Invoice] = field(default_factory=dict)
    paid_invoices: set[tuple[int, int]] = field(default_factory=set)
    pre_checkouts: dict[str, _PreCheckout] = field(default_factory=dict)
    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: list[tuple[int, str]] = field(default_factory=list)
    # The bot's Star transactions, oldest first, as getStarTransactions lists them.
    transactions: list[JSON] = field(default_factory=list)
    next_provider_charge: int = 1

    @property
    def user(self) -> JSON:
        return {"id": self.id, "is_bot": True, "first_name": self.first_name, "username": self.username}


class _Req:
    """Parameters of one request with Telegram-like readers."""

    def __init__(
        self,
        params: dict[str, Any],
        files: dict[str, bytes],
        filenames: dict[str, str],
        fetched: dict[str, bytes] | None = None,
    ) -> None:
        self.params = params
        self.files = files
        self.filenames = filenames
        self.fetched = fetched or {}

    def get(self, name: str) -> Any:
        value = self.params.get(name)
        return None if value == "" else value

    def str_(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return value
        return json.dumps(value) if isinstance(value, dict | list) else str(value)

    def int_(self, name: str, *, missing: str | None = None) -> int | None:
        value = self.get(name)
        if value is None:
            if missing is not None:
                raise _bad(missing)
            return None
        parsed = _as_int(value)
        if parsed is None:
            raise _bad(f'field "{name}" must be of type Integer')
        return parsed

    def bool_(self, name: str) -> bool:
        return _truthy(self.get(name))

    def obj(self, name: str, what: str) -> Any:
        value = self.get(name)
        if isinstance(value, str):
            raise _bad(f"can't parse {what} JSON object")
        return value


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _decode_field(name: str, value: str) -> Any:
    if name in _STRING_PARAMS:
        return value
    try:
        decoded = json.loads(value, parse_constant=_reject_constant)
    except ValueError:
        return value
    if isinstance(decoded, dict | list | bool | int | float):
        return decoded
    return value


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _update_type(update: JSON) -> str:
    return next((key for key in update if key != "update_id"), "")


# --------------------------------------------------------------------------- text formatting


class _TextBuilder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.offset = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.offset += _utf16_len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _byte_offset(src: str, pos: int) -> int:
    return len(src[:pos].encode())


def _entities_error(message: str) -> _ApiError:
    return _bad(f"can't parse entities: {message}")


_HTML_TAGS: Final[dict[str, str]] = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "tg-emoji": "custom_emoji",
    "blockquote": "blockquote",
}
_HTML_NAMED: Final[dict[str, str]] = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_HTML_ENTITY_RE: Final = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z]{2,8});")


def _html_entity(src: str, pos: int) -> tuple[str, int]:
    match = _HTML_ENTITY_RE.match(src, pos)
    if match is None:
        return "&", 1
    name = match.group(1)
    if name.startswith(("#x", "#X")):
        code = int(name[2:], 16)
    elif name.startswith("#"):
        code = int(name[1:])
    elif name in _HTML_NAMED:
        return _HTML_NAMED[name], match.end() - pos
    else:
        return "&", 1
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return "&", 1
    return chr(code), match.end() - pos


def _html_unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "&":
            text, used = _html_entity(value, i)
            out.append(text)
            i += used
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _parse_html(src: str) -> tuple[str, list[JSON]]:
    out = _TextBuilder()
    entities: list[JSON] = []
    stack: list[tuple[str, int, dict[str, str]]] = []
    n = len(src)
    i = 0
    while i < n:
        char = src[i]
        if char == "&":
            text, used = _html_entity(src, i)
            out.add(text)
            i += used
            continue
        if char != "<":
            j = i
            while j < n and src[j] not in "<&":
                j += 1
            out.add(src[i:j])
            i = j
            continue
        begin = i
        if i + 1 < n and src[i + 1] == "/":
            end = src.find(">", i)
            if end < 0:
                raise _entities_error(f"Unclosed end tag at byte offset {_byte_offset(src, begin)}")
            name = src[i + 2 : end].strip().lower()
            if not stack:
                raise _entities_error(f"Unexpected end tag at byte offset {_byte_offset(src, begin)}")
            open_name, start, open_attrs = stack.pop()
            if name != open_name:
                raise _entities_error(
                    f"Unmatched end tag at byte offset {_byte_offset(src, begin)}, "
                    f'expected "</{open_name}>", found "</{name}>"'
                )
            _close_html_tag(open_name, start, out.offset - start, open_attrs, entities, stack)
            i = end + 1
            continue
        unclosed = _entities_error(f"Unclosed start tag at byte offset {_byte_offset(src, begin)}")
        j = i + 1
        while j < n and not src[j].isspace() and src[j] != ">":
            j += 1
        if j >= n:
            raise unclosed
        name = src[i + 1 : j].lower()
        if name not in _HTML_TAGS:
            raise _entities_error(f'Unsupported start tag "{name}" at byte offset {_byte_offset(src, begin)}')
        attrs: dict[str, str] = {}
        while True:
            while j < n and src[j].isspace():
                j += 1
            if j >= n:
                raise unclosed
            if src[j] == ">":
                j += 1
                break
            k = j
            while j < n and not src[j].isspace() and src[j] not in "=>":
                j += 1
            attr = src[k:j].lower()
            if not attr:
                raise _entities_error(
                    f'Empty attribute name in the tag "{name}" at byte offset {_byte_offset(src, begin)}'
                )
            while j < n and src[j].isspace():
                j += 1
            if j >= n:
                raise unclosed
            if src[j] != "=":
                attrs[attr] = ""
                continue
            j += 1
            while j < n and src[j].isspace():
                j += 1
            if j >= n:
                raise unclosed
            if src[j] in "\"'":
                close = src.find(src[j], j + 1)
                if close < 0:
                    raise unclosed
                attrs[attr] = _html_unescape(src[j + 1 : close])
                j = close + 1
            else:
                k = j
                while j < n and (src[j].isalnum() or src[j] in ".-_"):
                    j += 1
                attrs[attr] = src[k:j]
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise _entities_error(
                f'Tag "span" must have class "tg-spoiler" at byte offset {_byte_offset(src, begin)}'
            )
        stack.append((name, out.offset, attrs))
        i = j
    if stack:
        raise _entities_error(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return out.text(), entities


def _close_html_tag(
    name: str,
    start: int,
    length: int,
    attrs: dict[str, str],
    entities: list[JSON],
    stack: list[tuple[str, int, dict[str, str]]],
) -> None:
    entity: JSON = {"type": _HTML_TAGS[name], "offset": start, "length": length}
    if name == "a":
        url = attrs.get("href", "")
        if not url:
            return
        entity["url"] = url
    elif name == "code" and stack and stack[-1][0] == "pre":
        language = attrs.get("class", "")
        if language.startswith("language-"):
            stack[-1][2]["\0language"] = language.removeprefix("language-")
        return
    elif name == "pre":
        if attrs.get("\0language"):
            entity["language"] = attrs["\0language"]
    elif name == "blockquote":
        if "expandable" in attrs:
            entity["type"] = "expandable_blockquote"
    elif name == "tg-emoji":
        entity["custom_emoji_id"] = attrs.get("emoji-id", "")
    if length > 0:
        entities.append(entity)


_MDV2_RESERVED: Final = "_*[]()~`>#+-=|{}.!"
_MD_TYPE_NAMES: Final[dict[str, str]] = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
}


def _is_escapable(char: str) -> bool:
    return 0 < ord(char) <= 126


def _mdv2_closes(top: str | None, src: str, i: int) -> bool:
    char = src[i]
    nxt = src[i + 1] if i + 1 < len(src) else ""
    if top == "bold":
        return char == "*"
    if top == "italic":
        return char == "_" and nxt != "_"
    if top == "underline":
        return char == "_" and nxt == "_"
    if top == "strikethrough":
        return char == "~"
    if top == "spoiler":
        return char == "|" and nxt == "|"
    if top == "code":
        return char == "`"
    if top == "pre":
        return src.startswith("```", i)
    if top in ("text_link", "custom_emoji"):
        return char == "]"
    return False


def _parse_markdown_v2(src: str) -> tuple[str, list[JSON]]:
    out = _TextBuilder()
    entities: list[JSON] = []
    stack: list[tuple[str, int, int, JSON]] = []
    quote_start: int | None = None
    n = len(src)
    i = 0
    while i < n:
        char = src[i]
        if char == "\\" and i + 1 < n and _is_escapable(src[i + 1]):
            out.add(src[i + 1])
            i += 2
            continue
        top = stack[-1][0] if stack else None
        in_code = top in ("code", "pre")
        if not in_code and char == ">" and (i == 0 or src[i - 1] == "\n"):
            if quote_start is None:
                quote_start = out.offset
            i += 1
            continue
        if char == "\n" and quote_start is not None and not (i + 1 < n and src[i + 1] == ">"):
            entities.append({"type": "blockquote", "offset": quote_start, "length": out.offset - quote_start})
            quote_start = None
        if char not in ("`" if in_code else _MDV2_RESERVED):
            out.add(char)
            i += 1
            continue
        if _mdv2_closes(top, src, i):
            kind, start, _, extra = stack.pop()
            if kind in ("underline", "spoiler"):
                i += 2
            elif kind == "pre":
                i += 3
            elif kind in ("text_link", "custom_emoji"):
                i += 1
                url = ""
                if i < n and src[i] == "(":
                    j = i + 1
                    chars: list[str] = []
                    while j < n and src[j] != ")":
                        if src[j] == "\\" and j + 1 < n and _is_escapable(src[j + 1]):
                            chars.append(src[j + 1])
                            j += 2
                            continue
                        chars.append(src[j])
                        j += 1
                    if j >= n:
                        raise _entities_error(
                            f"Can't find end of a URL at byte offset {_byte_offset(src, i)}"
                        )
                    url = "".join(chars)
                    i = j + 1
                if kind == "custom_emoji":
                    match = re.fullmatch(r"tg://emoji\?id=(\d+)", url)
                    if match is None:
                        raise _entities_error("Custom emoji entity must contain a tg://emoji URL")
                    extra["custom_emoji_id"] = match.group(1)
                elif url:
                    extra["url"] = url
                else:
                    continue
            else:
                i += 1
            length = out.offset - start
            if length > 0:
                entities.append({"type": kind, "offset": start, "length": length, **extra})
            continue
        begin = _byte_offset(src, i)
        nxt = src[i + 1] if i + 1 < n else ""
        extra = {}
        if char == "_" and nxt == "_":
            kind, i = "underline", i + 2
        elif char == "_":
            kind, i = "italic", i + 1
        elif char == "*":
            kind, i = "bold", i + 1
        elif char == "~":
            kind, i = "strikethrough", i + 1
        elif char == "|" and nxt == "|":
            kind, i = "spoiler", i + 2
        elif char == "!" and nxt == "[":
            kind, i = "custom_emoji", i + 2
        elif char == "[":
            kind, i = "text_link", i + 1
        elif src.startswith("```", i):
            kind, i = "pre", i + 3
            newline = src.find("\n", i)
            closing = src.find("```", i)
            if newline >= 0 and (closing < 0 or newline < closing):
                language = src[i:newline].strip()
                if language:
                    extra["language"] = language
                i = newline + 1
        elif char == "`":
            kind, i = "code", i + 1
        else:
            raise _entities_error(
                f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
            )
        stack.append((kind, out.offset, begin, extra))
    if stack:
        kind, _, begin, _ = stack[-1]
        raise _entities_error(f"Can't find end of {_MD_TYPE_NAMES[kind]} entity at byte offset {begin}")
    if quote_start is not None and out.offset > quote_start:
        entities.append({"type": "blockquote", "offset": quote_start, "length": out.offset - quote_start})
    return out.text(), entities


def _parse_markdown(src: str) -> tuple[str, list[JSON]]:
    out = _TextBuilder()
    entities: list[JSON] = []
    n = len(src)
    i = 0
    while i < n:
        char = src[i]
        if char == "\\" and i + 1 < n and src[i + 1] in "_*`[":
            out.add(src[i + 1])
            i += 2
            continue
        if char not in "_*`[":
            out.add(char)
            i += 1
            continue
        unclosed = _entities_error(
            f"Can't find end of the entity starting at byte offset {_byte_offset(src, i)}"
        )
        start = out.offset
        if char == "[":
            end = src.find("]", i + 1)
            if end < 0:
                raise unclosed
            inner = src[i + 1 : end]
            url = ""
            i = end + 1
            if i < n and src[i] == "(":
                close = src.find(")", i + 1)
                if close < 0:
                    raise unclosed
                url = src[i + 1 : close]
                i = close + 1
            out.add(inner)
            if url and inner:
                entities.append(
                    {"type": "text_link", "offset": start, "length": out.offset - start, "url": url}
                )
            continue
        if src.startswith("```", i):
            end = src.find("```", i + 3)
            if end < 0:
                raise unclosed
            inner = src[i + 3 : end]
            entity: JSON = {"type": "pre"}
            newline = inner.find("\n")
            if newline >= 0:
                language = inner[:newline].strip()
                if language:
                    entity["language"] = language
                inner = inner[newline + 1 :]
            i = end + 3
        else:
            end = src.find(char, i + 1)
            if end < 0:
                raise unclosed
            inner = src[i + 1 : end]
            entity = {"type": {"_": "italic", "*": "bold", "`": "code"}[char]}
            i = end + 1
        out.add(inner)
        if inner:
            entity.update(offset=start, length=out.offset - start)
            entities.append(entity)
    return out.text(), entities


def _trim(text: str, entities: list[JSON]) -> tuple[str, list[JSON]]:
    stripped = text.strip()
    if stripped == text:
        return text, entities
    shift = _utf16_len(text[: len(text) - len(text.lstrip())])
    total = _utf16_len(stripped)
    trimmed: list[JSON] = []
    for entity in entities:
        start = max(int(entity.get("offset", 0)) - shift, 0)
        end = min(int(entity.get("offset", 0)) + int(entity.get("length", 0)) - shift, total)
        if end > start:
            trimmed.append({**entity, "offset": start, "length": end - start})
    return stripped, trimmed


def _format(text: str, parse_mode: Any, entities: Any) -> tuple[str, list[JSON]]:
    """Telegram's view of a text: parse_mode applied (or explicit entities), whitespace trimmed."""
    if isinstance(entities, list) and entities:
        parsed = [dict(entity) for entity in entities if isinstance(entity, dict)]
    elif parse_mode in (None, ""):
        parsed = []
    else:
        mode = str(parse_mode).lower()
        if mode == "html":
            text, parsed = _parse_html(text)
        elif mode == "markdownv2":
            text, parsed = _parse_markdown_v2(text)
        elif mode == "markdown":
            text, parsed = _parse_markdown(text)
        else:
            raise _bad("unsupported parse_mode")
    parsed.sort(key=lambda entity: (int(entity.get("offset", 0)), -int(entity.get("length", 0))))
    return _trim(text, parsed)


def _command_entities(text: str) -> list[JSON]:
    match = re.match(r"/[A-Za-z0-9_]{1,64}(@[A-Za-z0-9_]{3,64})?", text)
    if match is None:
        return []
    return [{"type": "bot_command", "offset": 0, "length": _utf16_len(match.group(0))}]


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF, JPEG or WebP header; None when unrecognized."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return int(width) & 0x3FFF, int(height) & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            i += 2 + int(length)
    return None


def _check_reply_markup(markup: Any) -> JSON | None:
    """Validate reply_markup; return it when it is an inline keyboard (the only kind a Message shows)."""
    if markup is None or markup == "":
        return None
    if not isinstance(markup, dict):
        raise _bad("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                raise _bad('can\'t parse inline keyboard button: Field "text" must be of type String')
            if not _BUTTON_ACTIONS & set(button):
                raise _bad(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            if "callback_data" in button:
                data = button["callback_data"]
                if not isinstance(data, str) or not 1 <= len(data.encode()) <= 64:
                    raise _bad("BUTTON_DATA_INVALID")
    return markup


def _callback_data(message: JSON) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [
        button["callback_data"]
        for row in markup.get("inline_keyboard", [])
        for button in row
        if isinstance(button, dict) and "callback_data" in button
    ]


_Handler = Callable[[_Bot, _Req], Awaitable[Any]]


class FakeTelegram:
    """Fake Telegram Bot API server (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.internal_errors: list[str] = []
        """Tracebacks of bugs in the fake itself (answered as 500)."""
        self.url = ""
        self._bots: dict[str, _Bot] = {}
        self._file_owner: dict[str, str] = {}
        self._failures: list[_Failure] = []
        self._holds: dict[str, Hold] = {}
        self._changed = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._fetching: ClientSession | None = None
        self._methods: dict[str, _Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "sendChatAction": self._send_chat_action,
            "sendPhoto": self._media_sender("photo"),
            "sendVideo": self._media_sender("video"),
            "sendVoice": self._media_sender("voice"),
            "sendAudio": self._media_sender("audio"),
            "sendDocument": self._media_sender("document"),
            "sendAnimation": self._media_sender("animation"),
            "sendMediaGroup": self._send_media_group,
            "answerCallbackQuery": self._answer_callback_query,
            "getFile": self._get_file,
            "getChat": self._get_chat,
            "sendInvoice": self._send_invoice,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
            "getStarTransactions": self._get_star_transactions,
        }
        self._canonical = {name.lower(): name for name in self._methods}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_UPLOAD + 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_route("GET", "/file/bot{token}/{path:.+}", self._handle_file)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown_path)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._closing = False
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self._closing = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._fetching is not None:
            await self._fetching.close()
            self._fetching = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ set-up helpers

    def add_bot(self, token: str, username: str) -> int:
        left, sep, right = token.partition(":")
        if not sep or not left.isdigit() or not right:
            raise ValueError(f"token must look like '123456:ABC-def', got {token!r}")
        bot_id = int(left)
        self._bots[token] = _Bot(token=token, id=bot_id, username=username, first_name=username)
        return bot_id

    def block_user(self, token: str, user_id: int, blocked: bool = True) -> None:
        """Make every send/edit to ``user_id`` answer 403 "Forbidden: bot was blocked by the user"."""
        bot = self._bot(token)
        if blocked:
            bot.blocked.add(user_id)
        else:
            bot.blocked.discard(user_id)

    def add_file(self, token: str, content: bytes, file_path: str = "photos/file_1.jpg") -> str:
        """Register a file of ``token``'s bot; returns its file_id.

        The kind follows the directory (photos/, documents/, videos/, voice/, music/, animations/).
        A ``file_path`` already taken by another file of the bot gets its number bumped.
        """
        bot = self._bot(token)
        kind = _KIND_BY_DIRECTORY.get(file_path.split("/", 1)[0], "document")
        name = file_path.rsplit("/", 1)[-1]
        mime = mimetypes.guess_type(name)[0] or _KINDS[kind].mime_type
        file = self._mint(bot, kind, content, file_name=None if kind == "photo" else name, mime_type=mime)
        if kind == "photo":
            file.width, file.height = _image_size(content) or (1280, 960)
        stem, dot, extension = file_path.rpartition(".")
        if not dot:
            stem, extension = file_path, ""
        match = re.search(r"\d+$", stem)
        base, number = (stem[: match.start()], int(match.group())) if match else (f"{stem}_", 1)
        path = file_path
        while path in bot.paths:
            number += 1
            path = f"{base}{number}{dot}{extension}"
        file.file_path = path
        bot.paths[path] = file
        return file.file_id

    # ------------------------------------------------------------------ updates

    def user_message(
        self,
        token: str,
        *,
        user_id: int,
        text: str | None = None,
        language_code: str = "en",
        first_name: str = "Test",
        username: str | None = None,
        chat_id: int | None = None,
        photo_file_id: str | None = None,
        document: JSON | None = None,
        voice: JSON | None = None,
        audio: JSON | None = None,
        caption: str | None = None,
        reply_to_message: JSON | None = None,
    ) -> JSON:
        """Queue a message from a user to the bot (private chat unless ``chat_id`` says otherwise)."""
        bot = self._bot(token)
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username is not None:
            user["username"] = username
        user["language_code"] = language_code
        bot.users[user_id] = user
        cid = user_id if chat_id is None else chat_id
        if cid > 0:
            chat: JSON = {"id": cid, "type": "private", "first_name": first_name}
            if username is not None:
                chat["username"] = username
        else:
            chat = self._chat(bot, cid)
        bot.chats[cid] = chat
        message: JSON = {
            "message_id": self._next_message_id(bot, cid),
            "from": user,
            "chat": dict(chat),
            "date": int(time.time()),
        }
        if reply_to_message is not None:
            message["reply_to_message"] = reply_to_message
        if text is not None:
            message["text"] = text
            entities = _command_entities(text)
            if entities:
                message["entities"] = entities
        if photo_file_id is not None:
            file = bot.files.get(photo_file_id)
            if file is None:
                file = self._register(
                    bot, _File(photo_file_id, self._unique_id(None, photo_file_id), "photo", None)
                )
                file.width, file.height = 1280, 960
            message["photo"] = self._photo_sizes(bot, file)
        for key, value, defaults in (
            ("document", document, {"file_name": "file.bin", "mime_type": "application/octet-stream"}),
            ("voice", voice, {"duration": 1, "mime_type": "audio/ogg"}),
            ("audio", audio, {"duration": 1, "mime_type": "audio/mpeg"}),
        ):
            if value is not None:
                message[key] = self._user_media(bot, key, value, defaults)
        if caption is not None:
            message["caption"] = caption
        bot.messages[(cid, message["message_id"])] = message
        return self._enqueue(bot, {"message": message})

    def push_update(self, token: str, update: JSON) -> None:
        """Queue a raw update (as is, update_id included); it is delivered even if already confirmed."""
        bot = self._bot(token)
        bot.queue.append(_Queued(copy.deepcopy(update)))
        self._notify()

    def press_button(
        self,
        token: str,
        *,
        user_id: int,
        message: JSON,
        data: str,
        language_code: str = "en",
        as_shown: bool = False,
    ) -> JSON:
        """Queue a callback_query for the inline button with ``data`` on a message the bot sent.

        The message is looked up in its current state (after edits); raises AssertionError when it
        was deleted, is not the bot's, or has no button with that callback_data. With ``as_shown``
        the press is made on ``message`` as given, an older version: the user pressed the button
        just before an edit that removed it reached their app.
        """
        bot = self._bot(token)
        cid = int(message["chat"]["id"])
        key = (cid, int(message["message_id"]))
        current = bot.messages.get(key)
        if current is None:
            raise AssertionError(f"message {key} of bot {bot.username} does not exist (deleted?)")
        if current.get("from", {}).get("id") != bot.id:
            raise AssertionError(f"message {key} was not sent by bot {bot.username}")
        if as_shown:
            current = message
        buttons = _callback_data(current)
        if data not in buttons:
            raise AssertionError(f"message {key} has no button with callback_data {data!r}; it has {buttons}")
        query_id = str(secrets.randbits(62))
        bot.callback_queries.add(query_id)
        query: JSON = {
            "id": query_id,
            "from": self._user_of(bot, user_id, language_code),
            "message": copy.deepcopy(current),
            "chat_instance": str(-((bot.id * 1_000_003 + cid) % 10**18)),
            "data": data,
        }
        return self._enqueue(bot, {"callback_query": query})

    def push_pre_checkout(
        self,
        token: str,
        user_id: int,
        *,
        payload: str,
        total_amount: int,
        currency: str = STARS,
        language_code: str = "en",
    ) -> str:
        """Queue a pre_checkout_query from ``user_id`` (as when the user taps Pay); returns its id.

        Nothing checks that such an invoice exists: this is how a test forges a pre-checkout for a
        payload that was never invoiced, or with another amount. The bot must answer it within
        :data:`PRE_CHECKOUT_TIMEOUT` seconds (see :meth:`pre_checkout_answer`).
        """
        query_id, _ = self._push_pre_checkout(
            self._bot(token), user_id, payload, total_amount, currency, language_code
        )
        return query_id

    async def pre_checkout_answer(self, query_id: str, timeout: float = 10.0) -> JSON:
        """Wait for the bot's answerPreCheckoutQuery to ``query_id``: ``{"ok", "error_message"}``."""
        query = next(
            (bot.pre_checkouts[query_id] for bot in self._bots.values() if query_id in bot.pre_checkouts),
            None,
        )
        if query is None:
            raise AssertionError(f"no pre_checkout_query with id {query_id!r} was pushed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while query.answer is None:
            changed = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"pre_checkout_query {query_id} was not answered within {timeout}s; "
                    f"calls so far:\n{self.summary()}"
                ) from None
        return dict(query.answer)

    async def pay(
        self,
        token: str,
        user_id: int,
        invoice_message_id: int,
        *,
        chat_id: int | None = None,
        language_code: str = "en",
        timeout: float = 10.0,
        deliver: Callable[[JSON], Awaitable[object]] | None = None,
    ) -> Payment:
        """Tap Pay on an invoice the bot sent to ``user_id`` (or to ``chat_id``), as Telegram runs it.

        Queues the pre_checkout_query for the invoice's payload, currency and amount and waits for
        the bot's answer. On ok=true the user is charged: a new ``telegram_payment_charge_id`` is
        minted and recorded (refundStarPayment finds it) and a message from the user carrying
        ``successful_payment`` is queued. On ok=false nothing is charged. ``deliver`` (for webhook
        mode) is awaited with each queued update, e.g. to POST it to the bot's webhook.

        Raises AssertionError when the invoice does not exist (or was deleted), was already paid in
        a private chat, or when the bot does not answer within ``timeout`` seconds (the query then
        expires, as on Telegram, and a late answer is refused).
        """
        bot = self._bot(token)
        cid = user_id if chat_id is None else chat_id
        key = (cid, invoice_message_id)
        invoice = bot.invoices.get(key)
        if invoice is None:
            raise AssertionError(f"bot {bot.username} sent no invoice as message {key}")
        if key not in bot.messages:
            raise AssertionError(f"invoice message {key} of bot {bot.username} was deleted")
        if cid > 0 and key in bot.paid_invoices:
            raise AssertionError(f"invoice message {key} was already paid (Telegram shows a receipt)")
        query_id, update = self._push_pre_checkout(
            bot, user_id, invoice.payload, invoice.total_amount, invoice.currency, language_code
        )
        if deliver is not None:
            await deliver(update)
        try:
            answer = await self.pre_checkout_answer(query_id, timeout=timeout)
        except AssertionError:
            bot.pre_checkouts[query_id].expires_at = 0.0
            raise
        if not answer["ok"]:
            return Payment(ok=False, error_message=answer["error_message"], query_id=query_id)
        charge = Charge(
            token=token,
            user_id=user_id,
            charge_id="stx" + secrets.token_urlsafe(72),
            provider_charge_id=f"{user_id}_{bot.next_provider_charge}",
            payload=invoice.payload,
            currency=invoice.currency,
            total_amount=invoice.total_amount,
        )
        bot.next_provider_charge += 1
        bot.charges[charge.charge_id] = charge
        bot.transactions.append(self._star_transaction(bot, charge, "source"))
        bot.paid_invoices.add(key)
        message: JSON = {
            "message_id": self._next_message_id(bot, cid),
            "from": self._user_of(bot, user_id, language_code),
            "chat": self._chat(bot, cid),
            "date": int(time.time()),
            "successful_payment": {
                "currency": charge.currency,
                "total_amount": charge.total_amount,
                "invoice_payload": charge.payload,
                "telegram_payment_charge_id": charge.charge_id,
                "provider_payment_charge_id": charge.provider_charge_id,
            },
        }
        bot.messages[(cid, message["message_id"])] = message
        paid = self._enqueue(bot, {"message": message})
        if deliver is not None:
            await deliver(copy.deepcopy(paid))
        return Payment(
            ok=True,
            error_message=None,
            query_id=query_id,
            charge_id=charge.charge_id,
            provider_charge_id=charge.provider_charge_id,
            update=paid,
        )

    # ------------------------------------------------------------------ inspection

    def sent(
        self,
        token: str | None = None,
        *,
        chat_id: int | None = None,
        methods: Iterable[str] | None = None,
        include_failed: bool = False,
    ) -> list[Call]:
        """Calls that put something in a chat (successful ones unless ``include_failed``)."""
        wanted = CHAT_METHODS if methods is None else frozenset(methods)
        return [
            call
            for call in self.calls
            if call.method in wanted
            and (token is None or call.token == token)
            and (chat_id is None or _as_int(call.params.get("chat_id")) == chat_id)
            and (include_failed or call.ok)
        ]

    def chat_messages(self, token: str, chat_id: int) -> list[JSON]:
        """The chat as it looks now: user and bot messages, edits applied, deleted ones gone."""
        bot = self._bot(token)
        return [copy.deepcopy(msg) for (cid, _), msg in sorted(bot.messages.items()) if cid == chat_id]

    def webhook_of(self, token: str) -> JSON | None:
        webhook = self._bot(token).webhook
        return None if webhook is None else dict(webhook)

    def commands_of(
        self, token: str, *, scope: JSON | None = None, language_code: str = ""
    ) -> list[JSON] | None:
        commands = self._bot(token).commands.get((self._scope_key(scope), language_code))
        return None if commands is None else copy.deepcopy(commands)

    def invoices(self, token: str, *, chat_id: int | None = None) -> list[Invoice]:
        """Invoices the bot sent (oldest first), optionally to one chat only."""
        return [
            invoice
            for invoice in self._bot(token).invoices.values()
            if chat_id is None or invoice.chat_id == chat_id
        ]

    def charges(self, token: str) -> list[Charge]:
        """Payments made to the bot through :meth:`pay` (``refunded`` tells which were refunded)."""
        return list(self._bot(token).charges.values())

    def refunds(self, token: str) -> list[tuple[int, str]]:
        """Successful refundStarPayment calls of the bot: ``(user_id, telegram_payment_charge_id)``."""
        return list(self._bot(token).refunds)

    def pending_updates(self, token: str) -> list[JSON]:
        """Updates queued for the bot and not yet confirmed."""
        return [copy.deepcopy(queued.update) for queued in self._bot(token).queue]

    async def wait_for(self, predicate: Callable[[Call], bool], timeout: float = 10.0) -> Call:
        """First call (already made or future) matching ``predicate``."""
        index = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while index < len(self.calls):
                call = self.calls[index]
                index += 1
                if predicate(call):
                    return call
            changed = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                raise AssertionError(
                    f"no matching Telegram call within {timeout}s; calls so far:\n{self.summary()}"
                ) from None

    async def wait_polling(self, token: str, timeout: float = 10.0) -> None:
        """Wait until a getUpdates long poll of the bot is waiting for updates."""
        bot = self._bot(token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while bot.pollers == 0:
            changed = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                raise AssertionError(f"bot {bot.username} did not poll within {timeout}s") from None

    def hold(self, method: str, *, only: Callable[[dict[str, Any]], bool] | None = None) -> Hold:
        """Chaos: calls of `method` (those whose parameters pass `only`, when given) wait (unanswered)
        until `release` is set; `arrived` fires when one is waiting. A client that dies meanwhile never
        learns the answer; the call still takes effect once released, as on the real server."""
        name = self._canonical.get(method.lower(), method)
        hold = self._holds[name] = Hold(arrived=asyncio.Event(), release=asyncio.Event(), only=only)
        return hold

    def fail_next(
        self,
        method: str,
        *,
        error_code: int,
        description: str,
        retry_after: int | None = None,
        times: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (optionally only for ``chat_id``) with an error."""
        parameters = None if retry_after is None else {"retry_after": retry_after}
        name = self._canonical.get(method.lower(), method)
        self._failures.append(_Failure(name, _ApiError(error_code, description, parameters), times, chat_id))

    def summary(self) -> str:
        lines: list[str] = []
        polls = 0
        for number, call in enumerate(self.calls):
            if call.method == "getUpdates" and call.ok and not call.result:
                polls += 1
                continue
            bot = self._bots.get(call.token)
            who = bot.username if bot else call.token[:12]
            detail = ", ".join(
                f"{key}={str(value)[:60]!r}" for key, value in call.params.items() if key in _SUMMARY_PARAMS
            )
            outcome = "ok" if call.ok else f"error {call.error}"
            lines.append(f"  #{number} {who} {call.method}({detail}) -> {outcome}")
        if polls:
            lines.append(f"  (+{polls} empty getUpdates)")
        return "\n".join(lines) or "  (none)"

    # ------------------------------------------------------------------ HTTP

    async def _handle_api(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        raw_method = request.match_info["method"]
        method = self._canonical.get(raw_method.lower(), raw_method)
        call = Call(token=token, method=method, params={}, files={})
        try:
            params, files, filenames = await self._read_request(request)
            call.params, call.files = params, files
            bot = self._bots.get(token)
            if bot is None:
                raise _ApiError(401, "Unauthorized")
            handler = self._methods.get(method)
            if handler is None:
                raise _ApiError(404, "Not Found: method not found")
            self._check_failures(method, params)
            hold = self._holds.get(method)
            if hold is not None and not hold.release.is_set() and (hold.only is None or hold.only(params)):
                hold.arrived.set()
                await hold.release.wait()
            call.fetched = await self._fetch_urls(method, params)
            result = await handler(bot, _Req(params, files, filenames, call.fetched))
        except _ApiError as error:
            body = call.error = error.body()
            self._record(call)
            return web.json_response(body, status=error.error_code)
        except Exception:
            self.internal_errors.append(traceback.format_exc())
            failure = _ApiError(500, "Internal Server Error: bug in FakeTelegram, see fake.internal_errors")
            body = call.error = failure.body()
            self._record(call)
            return web.json_response(body, status=500)
        call.result = copy.deepcopy(result)
        self._record(call)
        return web.json_response({"ok": True, "result": result})

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        bot = self._bots.get(request.match_info["token"])
        if bot is None:
            return web.json_response(_ApiError(401, "Unauthorized").body(), status=401)
        file = bot.paths.get(request.match_info["path"])
        if file is None or file.content is None:
            return web.json_response(_ApiError(404, "Not Found").body(), status=404)
        return web.Response(body=file.content, content_type=file.mime_type or "application/octet-stream")

    async def _handle_unknown_path(self, request: web.Request) -> web.Response:
        return web.json_response(_ApiError(404, "Not Found").body(), status=404)

    async def _fetch_urls(self, method: str, params: dict[str, Any]) -> dict[str, bytes]:
        """The files the request sends as loopback HTTP URLs, fetched as Telegram fetches them."""
        refs: list[tuple[Any, Any]] = []  # (kind, file) as sent: the method itself checks them
        if method in MEDIA_PARAMS:
            refs.append((MEDIA_PARAMS[method], params.get(MEDIA_PARAMS[method])))
        elif method == "sendMediaGroup" and isinstance(params.get("media"), list):
            refs.extend(
                (item.get("type"), item.get("media")) for item in params["media"] if isinstance(item, dict)
            )
        fetched: dict[str, bytes] = {}
        for kind, ref in refs:
            if isinstance(ref, str) and ref not in fetched and _loopback_url(ref):
                fetched[ref] = await self._fetch(ref, kind == "photo")
        return fetched

    async def _fetch(self, url: str, photo: bool) -> bytes:
        limit = MAX_PHOTO_BY_URL if photo else MAX_FILE_BY_URL
        if self._fetching is None:
            self._fetching = ClientSession(timeout=ClientTimeout(total=10))
        try:
            async with self._fetching.get(url) as response:
                content = await response.content.read(limit + 1)
                status, content_type = response.status, response.content_type
        except (ClientError, TimeoutError):
            raise _bad("failed to get HTTP URL content") from None
        if status != 200 or len(content) > limit:
            raise _bad("failed to get HTTP URL content")
        if photo and not content_type.startswith("image/"):
            raise _bad("wrong type of the web page content")
        return content

    async def _read_request(
        self, request: web.Request
    ) -> tuple[dict[str, Any], dict[str, bytes], dict[str, str]]:
        params: dict[str, Any] = {key: _decode_field(key, value) for key, value in request.query.items()}
        files: dict[str, bytes] = {}
        filenames: dict[str, str] = {}
        if not request.body_exists:
            return params, files, filenames
        content_type = request.content_type
        try:
            if content_type == "application/json":
                try:
                    body = json.loads(await request.text())
                except ValueError:
                    raise _bad("can't parse JSON encoded request") from None
                if not isinstance(body, dict):
                    raise _bad("JSON object expected as request body")
                for key, value in body.items():
                    params[key] = _decode_field(key, value) if isinstance(value, str) else value
            elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        files[key] = value.file.read()
                        filenames[key] = value.filename
                    elif isinstance(value, bytes | bytearray):
                        try:
                            params[key] = _decode_field(key, bytes(value).decode())
                        except UnicodeDecodeError:
                            files[key] = bytes(value)
                    else:
                        params[key] = _decode_field(key, value)
        except web.HTTPRequestEntityTooLarge:
            raise _ApiError(413, "Request Entity Too Large") from None
        if any(len(data) > MAX_UPLOAD for data in files.values()):
            raise _ApiError(413, "Request Entity Too Large")
        return params, files, filenames

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _check_failures(self, method: str, params: dict[str, Any]) -> None:
        for failure in self._failures:
            if failure.method != method or failure.times <= 0:
                continue
            if failure.chat_id is not None and _as_int(params.get("chat_id")) != failure.chat_id:
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            raise failure.error

    # ------------------------------------------------------------------ state helpers

    def _bot(self, token: str) -> _Bot:
        try:
            return self._bots[token]
        except KeyError:
            raise KeyError(f"unknown bot token {token!r}; call add_bot first") from None

    def _enqueue(self, bot: _Bot, payload: JSON) -> JSON:
        update: JSON = {"update_id": bot.next_update_id, **payload}
        bot.next_update_id += 1
        bot.queue.append(_Queued(update))
        self._notify()
        return copy.deepcopy(update)

    def _user_of(self, bot: _Bot, user_id: int, language_code: str) -> JSON:
        user = dict(bot.users.get(user_id) or {"id": user_id, "is_bot": False, "first_name": "Test"})
        user["language_code"] = language_code
        return user

    def _push_pre_checkout(
        self, bot: _Bot, user_id: int, payload: str, total_amount: int, currency: str, language_code: str
    ) -> tuple[str, JSON]:
        query_id = str(secrets.randbits(62))
        bot.pre_checkouts[query_id] = _PreCheckout(
            query_id, user_id, payload, currency, total_amount, time.monotonic() + PRE_CHECKOUT_TIMEOUT
        )
        query: JSON = {
            "id": query_id,
            "from": self._user_of(bot, user_id, language_code),
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": payload,
        }
        return query_id, self._enqueue(bot, {"pre_checkout_query": query})

    def _next_message_id(self, bot: _Bot, chat_id: int) -> int:
        message_id = bot.last_message_id.get(chat_id, 0) + 1
        bot.last_message_id[chat_id] = message_id
        return message_id

    def _chat(self, bot: _Bot, chat_id: int) -> JSON:
        chat = bot.chats.get(chat_id)
        if chat is None:
            if chat_id > 0:
                chat = {"id": chat_id, "type": "private", "first_name": "Test"}
            elif chat_id <= -1_000_000_000_000:
                chat = {"id": chat_id, "type": "supergroup", "title": "Test group"}
            else:
                chat = {"id": chat_id, "type": "group", "title": "Test group"}
            bot.chats[chat_id] = chat
        return dict(chat)

    def _resolve_chat(self, bot: _Bot, req: _Req, *, sending: bool) -> int:
        value = req.get("chat_id")
        if value is None:
            raise _bad("chat_id is empty")
        chat_id = _as_int(value)
        if chat_id is None and isinstance(value, str) and value.startswith("@"):
            chat_id = next(
                (
                    cid
                    for cid, chat in bot.chats.items()
                    if chat.get("username", "").lower() == value[1:].lower()
                ),
                None,
            )
        if chat_id is None or chat_id == 0:
            raise _bad("chat not found")
        if sending:
            if any(other.id == chat_id for other in self._bots.values()):
                raise _ApiError(403, "Forbidden: bot can't send messages to bots")
            if chat_id in bot.blocked:
                raise _ApiError(403, "Forbidden: bot was blocked by the user")
        return chat_id

    def _new_message(self, bot: _Bot, chat_id: int, req: _Req) -> JSON:
        reply_to: JSON | None = None
        reply = req.get("reply_parameters")
        reply_id = req.int_("reply_to_message_id")
        allow_missing = req.bool_("allow_sending_without_reply")
        if isinstance(reply, dict):
            reply_id = _as_int(reply.get("message_id"))
            allow_missing = _truthy(reply.get("allow_sending_without_reply"))
        elif isinstance(reply, str):
            raise _bad("can't parse reply parameters JSON object")
        if reply_id is not None:
            target = bot.messages.get((chat_id, reply_id))
            if target is None and not allow_missing:
                raise _bad("message to be replied not found")
            if target is not None:
                reply_to = {key: value for key, value in target.items() if key != "reply_to_message"}
        message: JSON = {
            "message_id": 0,
            "from": bot.user,
            "chat": self._chat(bot, chat_id),
            "date": int(time.time()),
        }
        if reply_to is not None:
            message["reply_to_message"] = copy.deepcopy(reply_to)
        if req.bool_("protect_content"):
            message["has_protected_content"] = True
        return message

    def _store(self, bot: _Bot, chat_id: int, message: JSON) -> JSON:
        message["message_id"] = self._next_message_id(bot, chat_id)
        bot.messages[(chat_id, message["message_id"])] = message
        return copy.deepcopy(message)

    @staticmethod
    def _unique_id(content: bytes | None, salt: str) -> str:
        digest = hashlib.sha256(content or b"")
        digest.update(salt.encode())
        return "AQAD" + digest.hexdigest()[:16]

    def _mint(
        self,
        bot: _Bot,
        kind: str,
        content: bytes | None,
        *,
        file_name: str | None = None,
        mime_type: str | None = None,
        salt: str = "",
    ) -> _File:
        file_id = _KINDS[kind].id_prefix + secrets.token_urlsafe(27)
        unique = self._unique_id(content, salt if content is not None else file_id)
        file = _File(file_id, unique, kind, content, file_name=file_name, mime_type=mime_type)
        return self._register(bot, file)

    def _register(self, bot: _Bot, file: _File) -> _File:
        bot.files[file.file_id] = file
        self._file_owner[file.file_id] = bot.token
        return file

    def _photo_sizes(self, bot: _Bot, file: _File) -> list[JSON]:
        if file.sizes is None:
            width, height = file.width or 1280, file.height or 960
            sizes: list[JSON] = []
            for side in (90, 320, 800):
                if max(width, height) <= side:
                    break
                scale = side / max(width, height)
                small = self._mint(bot, "photo", file.content, salt=f"size{side}")
                small.width, small.height = max(1, round(width * scale)), max(1, round(height * scale))
                if file.content is not None:
                    small.declared_size = max(1, round(len(file.content) * scale * scale))
                small.sizes = []
                sizes.append(self._photo_size(small))
            file.width, file.height = width, height
            sizes.append(self._photo_size(file))
            file.sizes = sizes
        return copy.deepcopy(file.sizes) or [self._photo_size(file)]

    def _photo_size(self, file: _File) -> JSON:
        size: JSON = {
            "file_id": file.file_id,
            "file_unique_id": file.file_unique_id,
            "width": file.width,
            "height": file.height,
        }
        if file.file_size is not None:
            size["file_size"] = file.file_size
        return size

    def _user_media(self, bot: _Bot, kind: str, value: JSON, defaults: JSON) -> JSON:
        media = {**defaults, **value}
        file_id = media.get("file_id")
        if not isinstance(file_id, str):
            file_id = self._mint(bot, kind, None).file_id
            media["file_id"] = file_id
        known = bot.files.get(file_id)
        if known is None:
            known = self._register(bot, _File(file_id, self._unique_id(None, file_id), kind, None))
        media.setdefault("file_unique_id", known.file_unique_id)
        if known.file_size is not None:
            media.setdefault("file_size", known.file_size)
        return media

    def _input_file(self, bot: _Bot, req: _Req, ref: Any, *, field: str, kind: str) -> _File:
        missing = f"there is no {field} in the request"
        content: bytes | None = None
        filename: str | None = None
        if isinstance(ref, str) and ref.startswith("attach://"):
            key = ref.removeprefix("attach://")
            if key not in req.files:
                raise _bad(missing)
            content, filename = req.files[key], req.filenames.get(key)
        elif ref in (None, "") and field in req.files:
            content, filename = req.files[field], req.filenames.get(field)
        elif ref in (None, "") or not isinstance(ref, str):
            raise _bad(missing)
        if content is None and isinstance(ref, str) and ref in req.fetched:
            content, filename = req.fetched[ref], urlsplit(ref).path.rsplit("/", 1)[-1] or None
        if content is not None:
            return self._upload(bot, kind, content, filename)
        assert isinstance(ref, str)
        if "." in ref or "://" in ref:
            parts = urlsplit(ref if "://" in ref else f"http://{ref}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _bad("wrong file identifier/HTTP URL specified")
            name = parts.path.rsplit("/", 1)[-1] or None
            remote = self._mint(bot, kind, None, file_name=name, mime_type=_KINDS[kind].mime_type)
            if kind == "photo":
                remote.width, remote.height = 1280, 960
            return remote
        owner = self._file_owner.get(ref)
        if owner is not None and owner != bot.token:
            raise _bad("wrong file identifier/HTTP URL specified")
        file = bot.files.get(ref)
        if file is None:
            file = self._register(bot, _File(ref, self._unique_id(None, ref), kind, None))
            if kind == "photo":
                file.width, file.height = 1280, 960
            return file
        if (file.kind == "photo") != (kind == "photo"):
            raise _bad(f"can't use file of type {file.kind.title()} as {kind.title()}")
        return file

    def _upload(self, bot: _Bot, kind: str, content: bytes, filename: str | None) -> _File:
        if not content:
            raise _bad("file must be non-empty")
        if len(content) > MAX_UPLOAD:
            raise _ApiError(413, "Request Entity Too Large")
        if kind == "photo" and len(content) > MAX_PHOTO:
            raise _bad(
                f"file of size {len(content)} bytes is too big for a photo; "
                f"the maximum size is {MAX_PHOTO} bytes"
            )
        mime = (mimetypes.guess_type(filename)[0] if filename else None) or _KINDS[kind].mime_type
        if kind in ("voice", "audio", "video", "animation"):
            mime = _KINDS[kind].mime_type if not mime.startswith(("audio/", "video/")) else mime
        file = self._mint(bot, kind, content, file_name=None if kind == "photo" else filename, mime_type=mime)
        if kind == "photo":
            file.width, file.height = _image_size(content) or (1280, 960)
        return file

    def _media_fields(self, bot: _Bot, kind: str, file: _File, options: dict[str, Any]) -> JSON:
        if kind == "photo":
            return {"photo": self._photo_sizes(bot, file)}
        media: JSON = {"file_id": file.file_id, "file_unique_id": file.file_unique_id}
        if kind in ("video", "animation"):
            media["width"] = _as_int(options.get("width")) or file.width or 1280
            media["height"] = _as_int(options.get("height")) or file.height or 720
        if kind in ("video", "animation", "voice", "audio"):
            media["duration"] = _as_int(options.get("duration")) or 1
        if kind == "audio":
            for key in ("performer", "title"):
                if isinstance(options.get(key), str) and options[key]:
                    media[key] = options[key]
        if file.file_name and kind != "voice":
            media["file_name"] = file.file_name
        if file.mime_type:
            media["mime_type"] = file.mime_type
        if file.file_size is not None:
            media["file_size"] = file.file_size
        if kind == "animation":
            return {"animation": media, "document": dict(media)}
        return {kind: media}

    def _caption(self, options: dict[str, Any]) -> tuple[str, list[JSON]]:
        caption = options.get("caption")
        if caption in (None, ""):
            return "", []
        text, entities = _format(str(caption), options.get("parse_mode"), options.get("caption_entities"))
        if len(text) > MAX_CAPTION:
            raise _bad("message caption is too long")
        return text, entities

    @staticmethod
    def _scope_key(scope: Any) -> str:
        if not isinstance(scope, dict) or not scope:
            return json.dumps({"type": "default"})
        return json.dumps(scope, sort_keys=True)

    def _find_own_message(self, bot: _Bot, req: _Req) -> JSON | None:
        """The bot message an edit targets; None when the edit is for an inline message."""
        if req.get("inline_message_id") is not None:
            return None
        chat_id = self._resolve_chat(bot, req, sending=True)
        message_id = req.int_("message_id", missing="message identifier is not specified")
        assert message_id is not None
        message = bot.messages.get((chat_id, message_id))
        if message is None:
            raise _bad("message to edit not found")
        if message.get("from", {}).get("id") != bot.id:
            raise _bad("message can't be edited")
        return message

    # ------------------------------------------------------------------ methods

    async def _get_me(self, bot: _Bot, req: _Req) -> Any:
        return {
            **bot.user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, bot: _Bot, req: _Req) -> Any:
        if bot.webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = req.int_("offset")
        limit = req.int_("limit") or 100
        limit = min(max(limit, 1), 100)
        timeout = max(req.int_("timeout") or 0, 0)
        allowed = req.get("allowed_updates")
        if isinstance(allowed, list):
            bot.allowed_updates = [str(kind) for kind in allowed]
        if offset is not None:
            if offset < 0:
                bot.queue = bot.queue[offset:]
            else:
                bot.queue = [
                    q for q in bot.queue if not (q.delivered and q.update.get("update_id", 0) < offset)
                ]
        bot.poll_generation += 1
        generation = bot.poll_generation
        deadline = asyncio.get_running_loop().time() + timeout
        bot.pollers += 1
        self._notify()  # ends a superseded poll of this bot, wakes wait_polling()
        try:
            while True:
                if bot.poll_generation != generation:
                    raise _ApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; "
                        "make sure that only one bot instance is running",
                    )
                updates = self._take_updates(bot, limit)
                if updates or self._closing or asyncio.get_running_loop().time() >= deadline:
                    return updates
                changed = self._changed
                try:
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()
                except TimeoutError:
                    pass
        finally:
            bot.pollers -= 1

    def _take_updates(self, bot: _Bot, limit: int) -> list[JSON]:
        allowed = frozenset(bot.allowed_updates) if bot.allowed_updates else _DEFAULT_UPDATE_TYPES
        taken: list[_Queued] = []
        for queued in list(bot.queue):
            if _update_type(queued.update) not in allowed:
                bot.queue.remove(queued)
                continue
            taken.append(queued)
            if len(taken) >= limit:
                break
        for queued in taken:
            queued.delivered = True
        return [copy.deepcopy(queued.update) for queued in taken]

    async def _set_webhook(self, bot: _Bot, req: _Req) -> Any:
        url = req.str_("url") or ""
        if not url:
            return await self._delete_webhook(bot, req)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        try:
            port = parts.port
        except ValueError:
            raise _bad("bad webhook: Failed to resolve host: port is invalid") from None
        if port not in (None, 80, 88, 443, 8443):
            raise _bad("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
        secret = req.str_("secret_token")
        if secret is not None:
            if len(secret) > 256:
                raise _bad("secret token is too long")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", secret):
                raise _bad("secret token contains unallowed characters")
        max_connections = req.int_("max_connections")
        if max_connections is not None and not 1 <= max_connections <= 100:
            raise _bad("max_connections must be between 1 and 100")
        if req.bool_("drop_pending_updates"):
            bot.queue.clear()
        allowed = req.get("allowed_updates")
        if isinstance(allowed, list):
            bot.allowed_updates = [str(kind) for kind in allowed]
        webhook: JSON = {"url": url}
        for key in (
            "secret_token",
            "max_connections",
            "allowed_updates",
            "ip_address",
            "drop_pending_updates",
        ):
            if req.get(key) is not None:
                webhook[key] = req.get(key)
        webhook["has_custom_certificate"] = "certificate" in req.files or req.get("certificate") is not None
        bot.webhook = webhook
        return True

    async def _delete_webhook(self, bot: _Bot, req: _Req) -> Any:
        bot.webhook = None
        if req.bool_("drop_pending_updates"):
            bot.queue.clear()
        return True

    async def _get_webhook_info(self, bot: _Bot, req: _Req) -> Any:
        info: JSON = {"url": "", "has_custom_certificate": False, "pending_update_count": len(bot.queue)}
        if bot.webhook is not None:
            info["url"] = bot.webhook["url"]
            info["has_custom_certificate"] = bool(bot.webhook.get("has_custom_certificate"))
            info["max_connections"] = bot.webhook.get("max_connections", 40)
            for key in ("ip_address", "allowed_updates"):
                if key in bot.webhook:
                    info[key] = bot.webhook[key]
        return info

    async def _set_my_commands(self, bot: _Bot, req: _Req) -> Any:
        commands = req.obj("commands", "bot commands")
        if commands is None:
            raise _bad('parameter "commands" is required')
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH" if isinstance(commands, list) else "can't parse commands")
        for command in commands:
            if not isinstance(command, dict):
                raise _bad("can't parse BotCommand")
            name, description = command.get("command"), command.get("description")
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", name.lstrip("/")):
                raise _bad("BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description.strip()) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        key = (self._scope_key(req.obj("scope", "bot command scope")), req.str_("language_code") or "")
        bot.commands[key] = [
            {"command": c["command"].lstrip("/"), "description": c["description"]} for c in commands
        ]
        return True

    async def _get_my_commands(self, bot: _Bot, req: _Req) -> Any:
        key = (self._scope_key(req.obj("scope", "bot command scope")), req.str_("language_code") or "")
        return copy.deepcopy(bot.commands.get(key, []))

    async def _delete_my_commands(self, bot: _Bot, req: _Req) -> Any:
        key = (self._scope_key(req.obj("scope", "bot command scope")), req.str_("language_code") or "")
        bot.commands.pop(key, None)
        return True

    async def _send_message(self, bot: _Bot, req: _Req) -> Any:
        chat_id = self._resolve_chat(bot, req, sending=True)
        raw = req.get("text")
        if raw is None:
            raise _bad("message text is empty")
        text, entities = _format(str(raw), req.get("parse_mode"), req.get("entities"))
        if not text:
            raise _bad("message text is empty")
        if len(text) > MAX_TEXT:
            raise _bad("message is too long")
        markup = _check_reply_markup(req.get("reply_markup"))
        message = self._new_message(bot, chat_id, req)
        message["text"] = text
        if entities:
            message["entities"] = entities
        if markup is not None:
            message["reply_markup"] = markup
        return self._store(bot, chat_id, message)

    def _media_sender(self, kind: str) -> _Handler:
        async def send(bot: _Bot, req: _Req) -> Any:
            chat_id = self._resolve_chat(bot, req, sending=True)
            caption, entities = self._caption(req.params)
            file = self._input_file(bot, req, req.get(kind), field=kind, kind=kind)
            markup = _check_reply_markup(req.get("reply_markup"))
            message = self._new_message(bot, chat_id, req)
            message.update(self._media_fields(bot, kind, file, req.params))
            if caption:
                message["caption"] = caption
                if entities:
                    message["caption_entities"] = entities
                if req.bool_("show_caption_above_media"):
                    message["show_caption_above_media"] = True
            if req.bool_("has_spoiler"):
                message["has_media_spoiler"] = True
            if markup is not None:
                message["reply_markup"] = markup
            return self._store(bot, chat_id, message)

        return send

    async def _send_media_group(self, bot: _Bot, req: _Req) -> Any:
        chat_id = self._resolve_chat(bot, req, sending=True)
        media = req.get("media")
        if media is None:
            raise _bad('parameter "media" is required')
        if not isinstance(media, list):
            raise _bad("can't parse media JSON object")
        if not media:
            raise _bad("there are no messages to send")
        if len(media) > 10:
            raise _bad("too many messages to send as an album")
        if len(media) < 2:
            raise _bad("media group must include 2-10 items")
        kinds: list[str] = []
        for item in media:
            if not isinstance(item, dict):
                raise _bad("can't parse InputMedia JSON object")
            kind = item.get("type")
            if kind == "animation":
                raise _bad("can't parse InputMedia: type \"animation\" can't be used in sendMediaGroup")
            if kind not in ("photo", "video", "document", "audio"):
                raise _bad(f'can\'t parse InputMedia: type "{kind}" is unsupported')
            kinds.append(kind)
        for exclusive in ("document", "audio"):
            if exclusive in kinds and len(set(kinds)) > 1:
                raise _bad(f"{exclusive} can't be mixed with other media types")
        prepared: list[tuple[str, _File, str, list[JSON], JSON]] = []
        for kind, item in zip(kinds, media, strict=True):
            ref = item.get("media")
            if (
                isinstance(ref, str)
                and ref.startswith("attach://")
                and ref.removeprefix("attach://") not in req.files
            ):
                raise _bad("can't parse InputMedia: media not found")
            if ref in (None, ""):
                raise _bad("can't parse InputMedia: media not found")
            caption, entities = self._caption(item)
            file = self._input_file(bot, req, ref, field=kind, kind=kind)
            prepared.append((kind, file, caption, entities, item))
        group_id = str(secrets.randbits(62))
        results: list[JSON] = []
        for kind, file, caption, entities, item in prepared:
            message = self._new_message(bot, chat_id, req)
            message["media_group_id"] = group_id
            message.update(self._media_fields(bot, kind, file, item))
            if caption:
                message["caption"] = caption
                if entities:
                    message["caption_entities"] = entities
                if _truthy(item.get("show_caption_above_media")):
                    message["show_caption_above_media"] = True
            if _truthy(item.get("has_spoiler")):
                message["has_media_spoiler"] = True
            results.append(self._store(bot, chat_id, message))
        return results

    async def _edit_message_text(self, bot: _Bot, req: _Req) -> Any:
        message = self._find_own_message(bot, req)
        raw = req.get("text")
        if raw is None:
            raise _bad("message text is empty")
        text, entities = _format(str(raw), req.get("parse_mode"), req.get("entities"))
        if not text:
            raise _bad("message text is empty")
        if len(text) > MAX_TEXT:
            raise _bad("MESSAGE_TOO_LONG")
        markup = _check_reply_markup(req.get("reply_markup"))
        if message is None:
            return True
        if "text" not in message:
            raise _bad("there is no text in the message to edit")
        if (
            message.get("text") == text
            and message.get("entities", []) == entities
            and message.get("reply_markup") == markup
        ):
            raise self._not_modified()
        message["text"] = text
        self._set_optional(message, "entities", entities or None)
        self._set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    async def _edit_message_caption(self, bot: _Bot, req: _Req) -> Any:
        message = self._find_own_message(bot, req)
        caption, entities = self._caption(req.params)
        markup = _check_reply_markup(req.get("reply_markup"))
        if message is None:
            return True
        if not any(key in message for key in ("photo", "video", "document", "audio", "animation", "voice")):
            raise _bad("there is no caption in the message to edit")
        if (
            message.get("caption", "") == caption
            and message.get("caption_entities", []) == entities
            and message.get("reply_markup") == markup
        ):
            raise self._not_modified()
        self._set_optional(message, "caption", caption or None)
        self._set_optional(message, "caption_entities", entities or None)
        self._set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    async def _edit_message_reply_markup(self, bot: _Bot, req: _Req) -> Any:
        message = self._find_own_message(bot, req)
        markup = _check_reply_markup(req.get("reply_markup"))
        if message is None:
            return True
        if message.get("reply_markup") == markup:
            raise self._not_modified()
        self._set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    @staticmethod
    def _not_modified() -> _ApiError:
        return _bad(
            "message is not modified: specified new message content and reply markup are exactly "
            "the same as a current content and reply markup of the message"
        )

    @staticmethod
    def _set_optional(message: JSON, key: str, value: Any) -> None:
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value

    async def _delete_message(self, bot: _Bot, req: _Req) -> Any:
        chat_id = self._resolve_chat(bot, req, sending=False)
        message_id = req.int_("message_id", missing="message identifier is not specified")
        assert message_id is not None
        if bot.messages.pop((chat_id, message_id), None) is None:
            raise _bad("message to delete not found")
        bot.deleted.add((chat_id, message_id))
        return True

    async def _delete_messages(self, bot: _Bot, req: _Req) -> Any:
        chat_id = self._resolve_chat(bot, req, sending=False)
        ids = req.obj("message_ids", "message identifiers")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise _bad("message identifiers are not specified")
        for value in ids:
            message_id = _as_int(value)
            if message_id is not None and bot.messages.pop((chat_id, message_id), None) is not None:
                bot.deleted.add((chat_id, message_id))
        return True

    async def _send_chat_action(self, bot: _Bot, req: _Req) -> Any:
        self._resolve_chat(bot, req, sending=True)
        action = req.str_("action")
        if action is None:
            raise _bad('parameter "action" is required')
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    async def _answer_callback_query(self, bot: _Bot, req: _Req) -> Any:
        query_id = req.str_("callback_query_id")
        if query_id is None:
            raise _bad('parameter "callback_query_id" is required')
        if query_id not in bot.callback_queries:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        text = req.str_("text")
        if text is not None and len(text) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        return True

    async def _get_file(self, bot: _Bot, req: _Req) -> Any:
        file_id = req.str_("file_id")
        if file_id is None:
            raise _bad('parameter "file_id" is required')
        owner = self._file_owner.get(file_id)
        if owner is not None and owner != bot.token:
            raise _bad("wrong file identifier/HTTP URL specified")
        file = bot.files.get(file_id)
        if file is None:
            raise _bad("invalid file_id")
        if file.file_size is not None and file.file_size > MAX_DOWNLOAD:
            raise _bad("file is too big")
        if file.file_path is None:
            kind = _KINDS[file.kind]
            extension = kind.extension
            if file.file_name and "." in file.file_name:
                extension = file.file_name.rsplit(".", 1)[-1]
            file.file_path = f"{kind.directory}/file_{bot.next_path}.{extension}"
            bot.next_path += 1
            bot.paths[file.file_path] = file
        result: JSON = {
            "file_id": file.file_id,
            "file_unique_id": file.file_unique_id,
            "file_path": file.file_path,
        }
        if file.file_size is not None:
            result["file_size"] = file.file_size
        return result

    async def _get_chat(self, bot: _Bot, req: _Req) -> Any:
        chat_id = self._resolve_chat(bot, req, sending=False)
        chat = self._chat(bot, chat_id)
        info: JSON = {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": True,
                "limited_gifts": True,
                "unique_gifts": True,
                "premium_subscription": True,
                "gifts_from_channels": True,
            },
        }
        user = bot.users.get(chat_id)
        if chat.get("type") == "private" and user is not None:
            for key in ("first_name", "last_name", "username"):
                if key in user:
                    info[key] = user[key]
        return info

    # ------------------------------------------------------------------ payments

    @staticmethod
    def _required(req: _Req, name: str) -> str:
        value = req.str_(name)
        if value is None:
            raise _bad(f'parameter "{name}" is required')
        return value

    @staticmethod
    def _labeled_prices(req: _Req) -> list[int]:
        prices = req.get("prices")
        if prices is None:
            raise _bad('parameter "prices" is required')
        if isinstance(prices, str):
            raise _bad("can't parse prices JSON object")
        if not isinstance(prices, list):
            raise _bad("expected an Array of labeled prices")
        amounts: list[int] = []
        for price in prices:
            if not isinstance(price, dict):
                raise _bad("can't parse labeled price: LabeledPrice must be an Object")
            label, amount = price.get("label"), price.get("amount")
            if label is None:
                raise _bad("can't parse labeled price: Can't find field \"label\"")
            if not isinstance(label, str):
                raise _bad('can\'t parse labeled price: Field "label" must be of type String')
            if not label:
                raise _bad("can't parse labeled price: LabeledPrice label must be non-empty")
            if amount is None:
                raise _bad("can't parse labeled price: Can't find field \"amount\"")
            if isinstance(amount, bool) or not isinstance(amount, int | float | str):
                raise _bad('can\'t parse labeled price: Field "amount" must be a Number')
            parsed = amount if isinstance(amount, int) else None
            if isinstance(amount, str) and re.fullmatch(r"-?\d+", amount):
                parsed = int(amount)
            if parsed is None:
                raise _bad(f"can't parse labeled price: Can't parse \"{amount}\" as number")
            amounts.append(parsed)
        if not amounts:
            raise _bad("there must be at least one price")
        return amounts

    @staticmethod
    def _tips(req: _Req) -> tuple[int, list[int]]:
        max_tip = 0
        raw_max = req.get("max_tip_amount")
        if raw_max is not None:
            parsed = _as_int(raw_max)
            if parsed is None:
                raise _bad('can\'t parse "max_tip_amount" as Number')
            max_tip = parsed
        tips: list[int] = []
        raw_tips = req.get("suggested_tip_amounts")
        if raw_tips is not None:
            if isinstance(raw_tips, str):
                raise _bad("can't parse suggested_tip_amounts JSON object")
            if not isinstance(raw_tips, list):
                raise _bad("expected an Array of suggested tip amounts")
            for tip in raw_tips:
                if isinstance(tip, bool) or not isinstance(tip, int | float | str):
                    raise _bad("suggested tip amount must be of type Number or String")
                parsed = _as_int(tip) if not isinstance(tip, float) else None
                if parsed is None:
                    raise _bad("can't parse suggested tip amount as Number")
                tips.append(parsed)
        return max_tip, tips

    async def _send_invoice(self, bot: _Bot, req: _Req) -> Any:
        title = self._required(req, "title")
        description = self._required(req, "description")
        payload = self._required(req, "payload")
        provider_token = req.str_("provider_token") or ""
        start_parameter = req.str_("start_parameter") or ""
        currency = self._required(req, "currency")
        amounts = self._labeled_prices(req)
        max_tip, tips = self._tips(req)
        markup = _check_reply_markup(req.get("reply_markup"))
        rows = [row for row in (markup or {}).get("inline_keyboard", []) if row]
        if rows and rows[0][0].get("pay") is not True:
            raise _bad("BUTTON_TYPE_INVALID")
        chat_id = self._resolve_chat(bot, req, sending=True)
        # TDLib's checks (InputInvoice::process_input_message_invoice)
        if any(abs(amount) > MAX_CURRENCY_AMOUNT for amount in amounts):
            raise _bad("too big amount of the currency specified")
        total = sum(amounts)
        if total <= 0:
            raise _bad("total price must be positive")
        if total > MAX_CURRENCY_AMOUNT:
            raise _bad("total price is too big")
        if not 0 <= max_tip <= MAX_CURRENCY_AMOUNT:
            raise _bad("invalid max_tip_amount of the currency specified")
        for tip in tips:
            if tip <= 0:
                raise _bad("suggested tip amount must be positive")
            if tip > max_tip:
                raise _bad("suggested tip amount can't be bigger than max_tip_amount")
        if len(tips) > 4:
            raise _bad("there can be at most 4 suggested tip amounts")
        # Telegram's servers
        if len(title) > MAX_INVOICE_TITLE:
            raise _bad("INVOICE_TITLE_INVALID")
        if len(description) > MAX_INVOICE_DESCRIPTION:
            raise _bad("INVOICE_DESCRIPTION_INVALID")
        if len(payload.encode()) > MAX_INVOICE_PAYLOAD:
            raise _bad("INVOICE_PAYLOAD_INVALID")
        if currency == STARS:
            if provider_token:
                raise _bad("PAYMENT_PROVIDER_INVALID")
            if len(amounts) != 1 or max_tip or tips:
                raise _bad("STARS_INVOICE_INVALID")
            if total > MAX_STARS_AMOUNT:
                raise _bad("CURRENCY_TOTAL_AMOUNT_INVALID")
        elif not provider_token:
            raise _bad("PAYMENT_PROVIDER_INVALID")
        message = self._new_message(bot, chat_id, req)
        message["invoice"] = {
            "title": title,
            "description": description,
            "start_parameter": start_parameter,
            "currency": currency,
            "total_amount": total,
        }
        if rows:
            message["reply_markup"] = markup
        sent = self._store(bot, chat_id, message)
        bot.invoices[(chat_id, sent["message_id"])] = Invoice(
            token=bot.token,
            chat_id=chat_id,
            message_id=sent["message_id"],
            title=title,
            description=description,
            payload=payload,
            currency=currency,
            total_amount=total,
            start_parameter=start_parameter,
        )
        return sent

    async def _answer_pre_checkout_query(self, bot: _Bot, req: _Req) -> Any:
        ok = req.bool_("ok")
        error_message = None if ok else self._required(req, "error_message")
        query = bot.pre_checkouts.get(req.str_("pre_checkout_query_id") or "")
        if query is None or query.answer is not None or time.monotonic() > query.expires_at:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        query.answer = {"ok": ok, "error_message": error_message}
        return True

    async def _refund_star_payment(self, bot: _Bot, req: _Req) -> Any:
        user_id = _as_int(req.get("user_id"))
        if user_id is None or user_id <= 0:
            raise _bad("invalid user_id specified")
        charge_id = self._required(req, "telegram_payment_charge_id")
        charge = bot.charges.get(charge_id)
        if charge is None or charge.user_id != user_id:
            raise _bad("CHARGE_NOT_FOUND")
        if charge.refunded:
            raise _bad("CHARGE_ALREADY_REFUNDED")
        bot.charges[charge_id] = replace(charge, refunded=True)
        bot.refunds.append((user_id, charge_id))
        # A refund is listed with the payment's id, the user as its receiver.
        bot.transactions.append(self._star_transaction(bot, charge, "receiver"))
        return True

    async def _get_star_transactions(self, bot: _Bot, req: _Req) -> Any:
        offset = req.int_("offset") or 0
        limit = req.int_("limit")
        limit = 100 if limit is None else limit
        if offset < 0 or not 1 <= limit <= 100:
            raise _bad("invalid offset or limit specified")
        return {"transactions": copy.deepcopy(bot.transactions[offset : offset + limit])}

    def _star_transaction(self, bot: _Bot, charge: Charge, side: str) -> JSON:
        """A StarTransaction: a payment comes from its user (`source`), a refund goes to them (`receiver`)."""
        partner: JSON = {
            "type": "user",
            "transaction_type": "invoice_payment",
            "user": self._user_of(bot, charge.user_id, "en"),
            "invoice_payload": charge.payload,
        }
        return {
            "id": charge.charge_id,
            "amount": charge.total_amount,
            "date": int(time.time()),
            side: partner,
        }


def _loopback_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS
