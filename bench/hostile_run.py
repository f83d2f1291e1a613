"""A hostile run against a real `aibot run`, black box (issue 10): malformed bodies and headers, huge
and deep JSON, URLs at private addresses in every spelling, forged webhooks, slow clients and racing
requests. Passes when no answer is a 5xx, no private address is ever fetched, no secret reaches a log
line, memory stays bounded, the process stays up and the ledger sums exactly.

    uv run --locked python -m bench.hostile_run                      # PostgreSQL, Plan A (about 20 s)
    uv run --locked python -m bench.hostile_run --database sqlite --plan B
    uv run --locked python -m bench.hostile_run --keep-logs /tmp/hostile --log-level DEBUG

It starts the fake Telegram and Replicate (``bench.fakes_server``, as bench/hot_path.py does) and the
product, ``aibot run`` through ``bench/counted.py``, on loopback: webhook mode with WEBHOOK_SECRET, an
API_TOKEN, a Replicate token and webhook secret, an ElevenLabs key, LOG_FORMAT=text (stdout and stderr
to a file), a fresh database (a PostgreSQL database made for the run and dropped after it, or a SQLite
file), Redis database 12 (flushed) for Plan A, NEW_USER_BONUS=10, and FETCH_ALLOW_PRIVATE unset: the
fakes are configured providers, while every URL a client gives that points at this machine or a
private network must be refused. Each of those URLs names the port of a listener the run opens on
every local address (``tests/fakes/file_host.py``: files, a trickling body, an endless body,
redirects); it counts the connections it accepts, which must stay 0 for the whole run.

The attacks (each group counted: requests, status classes, 5xx, unexpected answers):

* HTTP API authorization: missing, wrong, near-miss, non-ASCII, invalid UTF-8, oversized;
* bodies: not JSON, invalid UTF-8, JSON nested 1,000 and 100,000 deep, 5,000-digit numbers, NaN and
  Infinity, huge strings and arrays, wrong types, ids out of range (telegram_id 2^63 and -1, chat_id
  2^63), NUL characters, a 30 MB body (with a length, and chunked), broken framing (lengths,
  chunking, request lines, header syntax);
* Idempotency-Key: 10,000 characters, 121, non-ASCII, invalid UTF-8, control characters; one reused
  with another body (422 idempotency_key_reused) and with the same body (the same generation);
* unknown kinds and methods; path fuzz of GET /api/generations/{id} and /api/users/{bot}/{id};
* zip_url (model-training) and audio_url (voice-avatar) at loopback, private, link-local, mapped
  and NAT64 addresses in every spelling (decimal, hex, octal, short forms, IPv6, user:password@, the
  host's own name and addresses), and other schemes: each a 422 (an address: the `*_unreachable` code);
* Telegram webhooks without a secret, with a wrong one, another bot's (the secret derived for another
  name), for unknown bot names: every refusal must be the same answer; with the right secret,
  malformed updates (ids out of range, NUL, huge, deep) and forged callback buttons;
* Replicate callbacks with bad, stale or missing signatures (401), and signed ones with odd fields;
* 100 slow clients holding connections open (headers and bodies a byte at a time) while /livez is timed;
* 50 bodies of ~1 MB at once, and 300 concurrent reads of a user (memory, the database's pool);
* racing: 200 concurrent identical requests under one Idempotency-Key (one generation, one charge),
  and 100 concurrent different requests of one user with a small balance (never below zero).

Then: the process is alive and answers /livez; no line of its log holds a configured secret (bot token
and its secret half, the API token, the webhook secret and the bot's derived one, the Replicate token
and webhook secret, the ElevenLabs key) nor the password or query of a URL a client gave; its RSS
(after warm-up, after the attacks, the highest sample, the kernel's peak); and, read from the database
itself: every user's balance equals the sum of their ledger lines, every ledger line's balance_after
follows from the previous one, no balance below zero, every generation's ledger lines sum to what it
kept (charged minus refunded), and no generation exists that a request expected to be refused made.

Prints the figures as Markdown tables and the exact requests that failed; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fakes_server import BOT_NAME, BOT_TOKEN, REPLICATE_TOKEN
from bench.fetch_memory import rss_mib
from bench.hot_path import (
    API_TOKEN,
    BOT_WEBHOOK_SECRET,
    WEBHOOK_SECRET,
    BenchError,
    Config,
    Fakes,
    Postgres,
    Product,
    flush_redis,
    free_port,
    fresh_database,
    post_update,
    work_folder,
)
from bench.hot_path import Options as ProductOptions
from bench.processes import Children, peak_rss_mib
from bot.http.secrets import TELEGRAM_WEBHOOK_HEADER, telegram_webhook_secret
from tests.fakes.file_host import FileHost
from tests.zip_samples import photos_zip

REPLICATE_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"hostile-run-replicate-signing!!").decode()
ELEVENLABS_KEY = "el_hostile_run_elevenlabs_key_5150"
# A client's own secrets in the URLs it gives: the product may log the URL, never these.
URL_PASSWORD = "canaryUrlPassword7301"
URL_QUERY_SECRET = "canaryUrlQuery9944"
OTHER_BOT = "other_bot"
# Put after a newline wherever a client's text may reach a log line: no log line may begin with it.
INJECTED = "HOSTILE-INJECTED-LINE"  # not configured: its derived secret stands for "another bot's secret"

NEW_USER_BONUS = 10  # stars every new user gets: small, for the balance race
IMAGE_PRICE = 1  # flux-schnell, per image (generation/catalog.toml)
HOSTILE_USER = 9_100_001  # requests that must be refused name this user
REUSE_USER = 9_100_002  # the Idempotency-Key reuse checks
IDEMPOTENT_USER = 9_100_003  # 200 identical requests at once
BALANCE_USER = 9_100_004  # 100 different requests at once, 10 stars
URL_USER = 9_100_005  # zip_url / audio_url spellings
TELEGRAM_USER = 9_100_006  # malformed and forged updates
READ_USER = 9_100_007  # concurrent reads
FAKE_UPDATES_START = 880_000_000  # update_ids of the updates this run writes itself

NOTHING = object()
LOG_LINE = re.compile(r"^\S+ \S+ (TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL)\s+(.*)$")
Status = int | str  # an HTTP status, or "closed", "reset", "timeout", "garbled" (no HTTP answer)


@dataclass
class Answer:
    status: Status
    text: str = ""
    seconds: float = 0.0

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def codes(self) -> list[str]:
        """The `code`s of a 422's problems."""
        found = self.json()
        if not isinstance(found, list):
            return []
        return [str(item.get("code")) for item in found if isinstance(item, dict)]


def status_class(status: Status) -> str:
    if isinstance(status, int):
        return f"{status // 100}xx"
    return "no answer" if status in ("closed", "reset") else str(status)


@dataclass
class Group:
    name: str
    sent: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0


@dataclass
class Tally:
    groups: dict[str, Group] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    valid_ids: set[str] = field(default_factory=set)  # generations of requests meant to be accepted
    wrongly_accepted: list[str] = field(default_factory=list)

    def record(
        self, group: str, label: str, answer: Answer, ok: bool | None = None, *, valid: bool = False
    ) -> Answer:
        """`ok`: whether the answer is the one expected (None: any answer but a 5xx or a timeout)."""
        counted = self.groups.setdefault(group, Group(group))
        counted.sent += 1
        counted.classes[status_class(answer.status)] += 1
        counted.statuses[str(answer.status)] += 1
        excerpt = answer.text[:240].replace("\n", " ")
        if answer.status == 202:
            body = answer.json()
            identifier = str(body.get("id")) if isinstance(body, dict) else "?"
            if valid:
                self.valid_ids.add(identifier)
            else:
                self.wrongly_accepted.append(f"[{group}] {label}: 202 {excerpt}")
        if ok is None:
            ok = not (isinstance(answer.status, int) and answer.status >= 500) and answer.status != "timeout"
        failed = not ok or (isinstance(answer.status, int) and answer.status >= 500)
        if failed:
            counted.unexpected += 1
            self.findings.append(f"[{group}] {label}: answered {answer.status} {excerpt}")
        return answer


# --------------------------------------------------------------------------------------- requests


class Client:
    """Requests to the product: through aiohttp, or as raw bytes on a socket of their own."""

    def __init__(self, base: str, port: int, http: aiohttp.ClientSession, tally: Tally) -> None:
        self.base = base
        self.port = port
        self.http = http
        self.tally = tally

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        json_body: Any = NOTHING,
        auth: bool = True,
        timeout: float = 30.0,
    ) -> Answer:
        """`path` is sent as written (already percent-encoded)."""
        sent = {"Authorization": f"Bearer {API_TOKEN}"} if auth else {}
        sent.update(headers or {})
        if body is None and json_body is not NOTHING:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        started = time.monotonic()
        try:
            async with self.http.request(
                method,
                URL(self.base + path, encoded=True),
                headers=sent,
                data=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                text = await response.text(errors="replace")
                return Answer(response.status, text, time.monotonic() - started)
        except TimeoutError:
            return Answer("timeout", "", time.monotonic() - started)
        except aiohttp.ServerDisconnectedError:
            return Answer("closed", "", time.monotonic() - started)
        except aiohttp.ClientError as error:
            return Answer("reset", repr(error), time.monotonic() - started)

    async def raw(self, data: bytes | Iterable[bytes], timeout: float = 20.0) -> Answer:
        """Bytes on a new connection (written while the answer is awaited: a server may answer before
        the body is all sent); the status line of the answer, and its start."""
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as error:
            return Answer("reset", repr(error))
        chunks = [data] if isinstance(data, bytes) else data

        async def send() -> None:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
            rest = b""
            with contextlib.suppress(Exception):
                rest = await asyncio.wait_for(reader.read(4096), 1.0)
        except TimeoutError:
            return Answer("timeout", "", time.monotonic() - started)
        except OSError as error:
            return Answer("reset", repr(error), time.monotonic() - started)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        elapsed = time.monotonic() - started
        if not line:
            return Answer("closed", "", elapsed)
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            return Answer("garbled", line[:100].decode("latin-1"), elapsed)
        text = rest.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")
        return Answer(int(parts[1]), text, elapsed)


def raw_head(method: str, path: bytes, headers: Sequence[tuple[bytes, bytes]], length: int | None) -> bytes:
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def raw_post(path: bytes, body: bytes, *headers: tuple[bytes, bytes], auth: bool = True) -> bytes:
    given = [(b"Authorization", b"Bearer " + API_TOKEN.encode())] if auth else []
    return raw_head("POST", path, [*given, *headers], len(body)) + body


async def gather_limited(jobs: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


# --------------------------------------------------------------------------------------- bodies


def image_fields(user: int, prompt: str = "a red fox", images: int = 1) -> dict[str, str]:
    """A valid text-to-image request, as raw JSON text per field (to be replaced one at a time)."""
    return {
        "telegram_id": str(user),
        "bot_name": json.dumps(BOT_NAME),
        "prompt": json.dumps(prompt),
        "num_images": str(images),
    }


def json_text(fields: dict[str, str]) -> bytes:
    return ("{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in fields.items()) + "}").encode()


def changed(name: str, raw_value: str | None, user: int = HOSTILE_USER) -> bytes:
    """The valid request with field `name` set to `raw_value` (JSON text), or removed (None)."""
    fields = image_fields(user)
    if raw_value is None:
        fields.pop(name, None)
    else:
        fields[name] = raw_value
    return json_text(fields)


def nested(depth: int, kind: str = "array") -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


DIGITS_5000 = "1" + "0" * 4999


def body_cases() -> list[tuple[str, bytes]]:
    """Bodies for POST /api/generation/text-to-image that must be refused (400, 413 or 422)."""
    valid = json_text(image_fields(HOSTILE_USER))
    cases: list[tuple[str, bytes]] = [
        ("empty body", b""),
        ("not JSON", b"hello"),
        ("truncated JSON", valid[:-5]),
        ("single-quoted keys", b"{'telegram_id': 1}"),
        ("JSON null", b"null"),
        ("JSON array", b"[]"),
        ("JSON string", b'"text-to-image"'),
        ("JSON number", b"42"),
        ("two objects", valid + valid),
        ("trailing garbage", valid + b" x"),
        ("UTF-8 BOM then JSON", b"\xef\xbb\xbf" + valid),
        ("UTF-16 JSON", valid.decode().encode("utf-16")),
        ("invalid UTF-8 in a string", valid.replace(b"a red fox", b"a \xff\xfe fox")),
        ("overlong UTF-8 NUL", valid.replace(b"a red fox", b"a \xc0\x80 fox")),
        ("raw NUL byte in a string", valid.replace(b"a red fox", b"a \x00 fox")),
        ("1,000-deep arrays (the body)", nested(1000).encode()),
        ("1,000-deep objects (the body)", nested(1000, "object").encode()),
        ("1,000-deep arrays in prompt", changed("prompt", nested(1000))),
        ("100,000-deep arrays (the body)", nested(100_000).encode()),
        ("100,000-deep objects (the body)", nested(100_000, "object").encode()),
        ("100,000-deep arrays in telegram_id", changed("telegram_id", nested(100_000))),
        ("5,000-digit telegram_id", changed("telegram_id", DIGITS_5000)),
        ("5,000-digit negative num_images", changed("num_images", "-" + DIGITS_5000)),
        ("5,000-digit decimal telegram_id", changed("telegram_id", "1." + "0" * 4999)),
        ("telegram_id 1e5000", changed("telegram_id", "1e5000")),
        ("NaN num_images", changed("num_images", "NaN")),
        ("Infinity telegram_id", changed("telegram_id", "Infinity")),
        ("-Infinity num_images", changed("num_images", "-Infinity")),
        ("telegram_id 1e400", changed("telegram_id", "1e400")),
        ("900 KB prompt", changed("prompt", json.dumps("a" * 900_000))),
        ("150,000 escaped NULs in prompt", changed("prompt", '"' + "\\u0000" * 150_000 + '"')),
        ("150,000 lone surrogates in prompt", changed("prompt", '"' + "\\ud800" * 150_000 + '"')),
        ("500 KB bot_name", changed("bot_name", json.dumps("b" * 500_000))),
        ("500 KB unknown key", changed("k" * 500_000, "1")),
        ("200,000-element array as prompt", changed("prompt", "[" + ",".join(["0"] * 200_000) + "]")),
        ("100,000 objects as prompt", changed("prompt", "[" + ",".join(["{}"] * 100_000) + "]")),
        ("900 KB array (the body)", ("[" + ",".join(["0"] * 450_000) + "]").encode()),
        ("empty object", b"{}"),
        ("no prompt", changed("prompt", None)),
        ("no telegram_id", changed("telegram_id", None)),
        ("prompt of 2,001 characters", changed("prompt", json.dumps("p" * 2001))),
        ("empty prompt", changed("prompt", '""')),
        ("prompt with NUL", changed("prompt", '"a \\u0000 fox"')),
        ("NUL in a key", changed("tele\\u0000gram_id", "1")),
        ("unknown field price", json_text({**image_fields(HOSTILE_USER), "price": "0"})),
        ("unknown field __proto__", json_text({**image_fields(HOSTILE_USER), "__proto__": "{}"})),
        ("unknown field user_id", json_text({**image_fields(HOSTILE_USER), "user_id": "1"})),
        (
            "username of 65 characters",
            json_text({**image_fields(HOSTILE_USER), "username": '"' + "u" * 65 + '"'}),
        ),
        ("username 5", json_text({**image_fields(HOSTILE_USER), "username": "5"})),
        ("username with NUL", json_text({**image_fields(HOSTILE_USER), "username": '"a\\u0000b"'})),
        ("is_ru 'yes'", json_text({**image_fields(HOSTILE_USER), "is_ru": '"yes"'})),
        ("is_ru 1", json_text({**image_fields(HOSTILE_USER), "is_ru": "1"})),
        ("is_ru null", json_text({**image_fields(HOSTILE_USER), "is_ru": "null"})),
        ("model unknown", json_text({**image_fields(HOSTILE_USER), "model": '"no-such-model"'})),
        (
            "model with a forged log line",
            json_text({**image_fields(HOSTILE_USER), "model": json.dumps(f"x\n{INJECTED}")}),
        ),
        ("bot_name with a forged log line", changed("bot_name", json.dumps(f"x\n{INJECTED}"))),
        ("model of another kind", json_text({**image_fields(HOSTILE_USER), "model": '"kling-t2v"'})),
        ("model 5", json_text({**image_fields(HOSTILE_USER), "model": "5"})),
        ("model with NUL", json_text({**image_fields(HOSTILE_USER), "model": '"flux-dev\\u0000"'})),
        ("chat_id 2^63", json_text({**image_fields(HOSTILE_USER), "chat_id": str(2**63)})),
        ("chat_id -2^63", json_text({**image_fields(HOSTILE_USER), "chat_id": str(-(2**63))})),
        ("chat_id 2^52", json_text({**image_fields(HOSTILE_USER), "chat_id": str(2**52)})),
        ("chat_id '1'", json_text({**image_fields(HOSTILE_USER), "chat_id": '"1"'})),
        ("chat_id 1.5", json_text({**image_fields(HOSTILE_USER), "chat_id": "1.5"})),
    ]
    for label, value in [
        ("'123'", '"123"'),
        ("true", "true"),
        ("1.5", "1.5"),
        ("null", "null"),
        ("[]", "[]"),
        ("{}", "{}"),
        ("0", "0"),
        ("-1", "-1"),
        ("2^52", str(2**52)),
        ("2^63", str(2**63)),
        ("-2^63", str(-(2**63))),
        ("2^64", str(2**64)),
    ]:
        cases.append((f"telegram_id {label}", changed("telegram_id", value)))
    for label, value in [("5", "5"), ("null", "null"), ("{}", "{}"), ("[]", "[]"), ("true", "true")]:
        cases.append((f"prompt {label}", changed("prompt", value)))
    for label, value in [
        ("'1'", '"1"'),
        ("1.0", "1.0"),
        ("0", "0"),
        ("5", "5"),
        ("-1", "-1"),
        ("2^63", str(2**63)),
        ("true", "true"),
        ("null", "null"),
    ]:
        cases.append((f"num_images {label}", changed("num_images", value)))
    for label, value in [
        ("5", "5"),
        ("unknown", '"nope"'),
        ("empty", '""'),
        ("with NUL", json.dumps(BOT_NAME + "\x00")),
        ("../bench_bot", json.dumps("../" + BOT_NAME)),
        ("upper case", json.dumps(BOT_NAME.upper())),
        ("[]", "[]"),
    ]:
        cases.append((f"bot_name {label}", changed("bot_name", value)))
    return cases


def other_kind_cases() -> list[tuple[str, str, bytes]]:
    """(kind, label, body) for the other kinds, each invalid."""
    user = str(HOSTILE_USER)
    bot = json.dumps(BOT_NAME)

    def body(**fields: str) -> bytes:
        return json_text({"telegram_id": user, "bot_name": bot, **fields})

    return [
        ("text-to-video", "num_images given", body(prompt='"a"', num_images="1")),
        ("text-to-video", "no prompt", body()),
        ("image-to-video", "no image", body(prompt='"a"')),
        (
            "image-to-video",
            "image_url and image_file_id",
            body(prompt='"a"', image_url='"https://a.b/c.png"', image_file_id='"x"'),
        ),
        ("image-to-video", "image_url file://", body(prompt='"a"', image_url='"file:///etc/passwd"')),
        ("text-to-speech", "60,000-character text", body(text=json.dumps("t" * 60_000))),
        ("text-to-speech", "voice_id ../x", body(text='"hi"', voice_id='"../x"')),
        ("text-to-speech", "voice_id with NUL", body(text='"hi"', voice_id='"a\\u0000"')),
        ("voice-avatar", "neither audio_url nor audio_file_id", body()),
        (
            "voice-avatar",
            "audio_mime_type of 65 characters",
            body(audio_file_id='"x"', audio_mime_type=json.dumps("m" * 65)),
        ),
        ("model-training", "no trigger_word", body(zip_url='"https://a.b/c.zip"')),
        (
            "model-training",
            "trigger_word with a space",
            body(zip_url='"https://a.b/c.zip"', trigger_word='"a b"'),
        ),
        (
            "model-training",
            "trigger_word of 33 characters",
            body(zip_url='"https://a.b/c.zip"', trigger_word=json.dumps("w" * 33)),
        ),
        ("neuro-photo", "num_images 5", body(prompt='"a"', num_images="5")),
        ("neuro-photo", "no trained model yet", body(prompt='"a"')),
    ]


# --------------------------------------------------------------------------------------- attacks


async def attack_authorization(client: Client) -> None:
    group = "API authorization"
    body = json_text(image_fields(HOSTILE_USER, "auth probe"))
    path = "/api/generation/text-to-image"
    cases: list[tuple[str, str | None, set[int]]] = [
        ("no Authorization", None, {401}),
        ("empty Authorization", "", {401}),
        ("'Bearer' alone", "Bearer", {401}),
        ("'Bearer ' and nothing", "Bearer ", {401}),
        ("a wrong token", "Bearer wrong-token", {401}),
        ("the token with a character more", f"Bearer {API_TOKEN}x", {401}),
        ("the token less its last character", f"Bearer {API_TOKEN[:-1]}", {401}),
        ("the token in upper case", f"Bearer {API_TOKEN.upper()}", {401}),
        ("the token twice", f"Bearer {API_TOKEN} {API_TOKEN}", {401}),
        ("the token without a scheme", API_TOKEN, {401}),
        ("the token under Basic", "Basic " + base64.b64encode(f"api:{API_TOKEN}".encode()).decode(), {401}),
        ("the token under 'Token'", f"Token {API_TOKEN}", {401}),
        ("an 8,000-character token", "Bearer " + "a" * 8000, {401}),
        ("a 20,000-character header", "Bearer " + "a" * 20_000, {400, 431}),
    ]
    for label, value, expected in cases:
        headers = {} if value is None else {"Authorization": value}
        answer = await client.call("POST", path, headers=headers, body=body, auth=False)
        client.tally.record(group, f"POST {path} with {label}", answer, answer.status in expected)
    raw_cases = [
        ("non-ASCII token", "Bearer токен".encode()),
        ("invalid UTF-8 token", b"Bearer \xff\xfe\xfd"),
        ("the token then invalid UTF-8", b"Bearer " + API_TOKEN.encode() + b"\xff"),
        ("the token then a NUL byte", b"Bearer " + API_TOKEN.encode() + b"\x00"),
        ("a NUL byte", b"Bearer \x00"),
        ("the token split by a tab", b"Bearer\t" + API_TOKEN.encode()[:3] + b"\t" + API_TOKEN.encode()[3:]),
    ]
    for label, raw_value in raw_cases:
        answer = await client.raw(raw_post(path.encode(), body, (b"Authorization", raw_value), auth=False))
        client.tally.record(group, f"POST {path} with {label} (raw)", answer, answer.status in {400, 401})
    for path in ("/api/generations/0123456789abcdef", f"/api/users/{BOT_NAME}/{HOSTILE_USER}"):
        for label, value in (("no Authorization", None), ("a wrong token", "Bearer nope")):
            headers = {} if value is None else {"Authorization": value}
            answer = await client.call("GET", path, headers=headers, auth=False)
            client.tally.record(group, f"GET {path} with {label}", answer, answer.status == 401)


async def attack_bodies(client: Client) -> None:
    group = "API bodies"
    path = "/api/generation/text-to-image"
    refused = {400, 413, 422}

    def job(label: str, body: bytes) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            answer = await client.call("POST", path, body=body)
            client.tally.record(group, f"POST {path} body: {label}", answer, answer.status in refused)

        return run

    await gather_limited([job(label, body) for label, body in body_cases()], 8)
    for kind, label, body in other_kind_cases():
        answer = await client.call("POST", f"/api/generation/{kind}", body=body)
        client.tally.record(
            group, f"POST /api/generation/{kind} body: {label}", answer, answer.status in refused
        )
    # A 30 MB body, announced and chunked: refused at the app's 1 MB cap, never read whole.
    size = 30 * 1024 * 1024
    chunk = b"0" * 65536
    head = raw_head("POST", path.encode(), [(b"Authorization", b"Bearer " + API_TOKEN.encode())], size)
    answer = await client.raw(iter([head, *([chunk] * (size // len(chunk)))]))
    client.tally.record(
        group,
        f"POST {path} with a 30 MB body (Content-Length)",
        answer,
        answer.status in {413, "closed", "reset"},
    )
    chunked_head = raw_head(
        "POST",
        path.encode(),
        [(b"Authorization", b"Bearer " + API_TOKEN.encode()), (b"Transfer-Encoding", b"chunked")],
        None,
    )
    pieces = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(size // len(chunk)))
    answer = await client.raw(iter([chunked_head, *pieces, b"0\r\n\r\n"]))
    client.tally.record(
        group, f"POST {path} with a 30 MB chunked body", answer, answer.status in {413, "closed", "reset"}
    )


async def attack_framing(client: Client) -> None:
    """Broken HTTP itself: answered 4xx or closed, never a 5xx, never hanging."""
    group = "HTTP framing"
    auth = (b"Authorization", b"Bearer " + API_TOKEN.encode())
    body = json_text(image_fields(HOSTILE_USER, "framing probe"))
    path = b"/api/generation/text-to-image"
    line = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    cases: list[tuple[str, bytes]] = [
        (
            "Content-Length: abc",
            line + b"Authorization: Bearer " + API_TOKEN.encode() + b"\r\nContent-Length: abc\r\n\r\n" + body,
        ),
        ("Content-Length: -1", line + b"Content-Length: -1\r\n\r\n" + body),
        ("two different Content-Lengths", line + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n" + body),
        (
            "Content-Length and chunked",
            line + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("a bad chunk size", line + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("a chunk size of 2^64", line + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nhello\r\n"),
        ("Transfer-Encoding: gzip, chunked", line + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("a TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)),
        ("HTTP/0.9", b"GET /livez\r\n\r\n"),
        ("HTTP/9.9", b"GET /livez HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("a header without a colon", line + b"NoColonHere\r\n\r\n"),
        ("a header name with a space", line + b"Bad Name: 1\r\n\r\n"),
        ("a folded header", line + b"X-A: 1\r\n folded\r\n\r\n"),
        ("a NUL in a header name", line + b"X-\x00: 1\r\n\r\n"),
        ("a CR alone in a header", line + b"X-A: 1\r2\r\n\r\n"),
        ("a 9,000-byte request line", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a 70,000-byte header", line + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n"),
        ("200 headers", line + b"".join(b"X-%d: 1\r\n" % index for index in range(200)) + b"\r\n"),
        ("a method of junk", b"\x00\xff / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "an absolute URI at another host",
            b"GET http://169.254.169.254/livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
        ("CONNECT to loopback", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"),
        (
            "a raw non-ASCII path",
            b"GET /api/generations/\xd1\x82\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"Authorization: Bearer "
            + API_TOKEN.encode()
            + b"\r\n\r\n",
        ),
        ("the body cut short", raw_head("POST", path, [auth], len(body) + 10) + body),
    ]
    for label, data in cases:
        # A body cut short is never completed: the product waits for it, the client gives up.
        timeout = 3.0 if label == "the body cut short" else 20.0
        answer = await client.raw(data, timeout=timeout)
        if label == "the body cut short" and answer.status == "timeout":
            answer.status = "closed"  # the client hung up, as it meant to
        ok = answer.status != "timeout" and not (isinstance(answer.status, int) and answer.status >= 500)
        if isinstance(answer.status, int) and 200 <= answer.status < 300 and label != "HTTP/0.9":
            ok = label in ("HTTP/9.9", "an absolute URI at another host")  # answered by /livez
        client.tally.record(group, label, answer, ok)


async def attack_idempotency(client: Client) -> None:
    group = "Idempotency-Key"
    path = "/api/generation/text-to-image"
    first = json_text(image_fields(REUSE_USER, "the first request"))
    key = "hostile-reuse-1"
    answer = client.tally.record(
        group,
        "a valid request with a key",
        await client.call("POST", path, body=first, headers={"Idempotency-Key": key}),
        None,
        valid=True,
    )
    first_id = (answer.json() or {}).get("id") if isinstance(answer.json(), dict) else None
    again = await client.call("POST", path, body=first, headers={"Idempotency-Key": key})
    again_id = (again.json() or {}).get("id") if isinstance(again.json(), dict) else None
    client.tally.record(
        group,
        "the same key and body again (same generation)",
        again,
        again.status == 202 and again_id == first_id,
        valid=True,
    )
    reused: list[tuple[str, str, bytes]] = [
        ("another prompt", path, json_text(image_fields(REUSE_USER, "another request"))),
        ("another num_images", path, json_text(image_fields(REUSE_USER, "the first request", 2))),
        (
            "another kind",
            "/api/generation/text-to-video",
            json_text(
                {
                    "telegram_id": str(REUSE_USER),
                    "bot_name": json.dumps(BOT_NAME),
                    "prompt": '"the first request"',
                }
            ),
        ),
        (
            "another model",
            path,
            json_text({**image_fields(REUSE_USER, "the first request"), "model": '"flux-dev"'}),
        ),
    ]
    for label, where, body in reused:
        answer = await client.call("POST", where, body=body, headers={"Idempotency-Key": key})
        ok = answer.status == 422 and "idempotency_key_reused" in answer.codes()
        client.tally.record(
            group, f"the key reused with {label} (expect 422 idempotency_key_reused)", answer, ok
        )
    exact = "k" * 120
    answer = await client.call(
        "POST",
        path,
        body=json_text(image_fields(REUSE_USER, "key of 120")),
        headers={"Idempotency-Key": exact},
    )
    client.tally.record(group, "a key of 120 characters (valid)", answer, answer.status == 202, valid=True)
    body = json_text(image_fields(REUSE_USER, "bad key"))
    for label, value, expected in [
        ("a key of 121 characters", "k" * 121, {422}),
        ("a key of 10,000 characters", "k" * 10_000, {400, 422, 431}),
        ("a key of 8,000 characters", "k" * 8000, {422}),
    ]:
        answer = await client.call("POST", path, body=body, headers={"Idempotency-Key": value})
        client.tally.record(group, label, answer, answer.status in expected)
    for label, raw_value in [
        ("a non-ASCII key", "ключ-1".encode()),
        ("a key of invalid UTF-8", b"key-\xff\xfe"),
        ("a key with a control character", b"key-\x01-1"),
        ("a key with a tab inside", b"key\t1"),
        ("a key with DEL", b"key\x7f1"),
        ("a key with a NUL byte", b"key\x001"),
    ]:
        answer = await client.raw(raw_post(path.encode(), body, (b"Idempotency-Key", raw_value)))
        client.tally.record(group, f"{label} (raw)", answer, answer.status in {400, 422})


async def attack_paths(client: Client, known_id: str | None) -> None:
    group = "kinds, methods, paths"
    body = json_text(image_fields(HOSTILE_USER, "path probe"))
    # The snake-case spelling is the kind's own name (Kind.from_slug takes both): a valid request.
    answer = await client.call("POST", "/api/generation/text_to_image", body=body)
    client.tally.record(group, "POST /api/generation/text_to_image (snake case)", answer, valid=True)
    if answer.status == 202:
        client.tally.notes.append(
            "POST /api/generation/text_to_image (snake case) is accepted as text-to-image."
        )
    for kind in [
        "TEXT-TO-IMAGE",
        "text-to-image-",
        "image",
        "%00",
        "%ff",
        "..%2Ftext-to-image",
        "text-to-image%00",
        quote("текст"),
        "k" * 5000,
        "text-to-image;x",
    ]:
        answer = await client.call("POST", f"/api/generation/{kind}", body=body)
        client.tally.record(group, f"POST /api/generation/{kind[:60]}", answer, answer.status in {400, 404})
    for method, path in [
        ("GET", "/api/generation/text-to-image"),
        ("PUT", "/api/generation/text-to-image"),
        ("DELETE", f"/api/generations/{known_id or 'x'}"),
        ("PATCH", f"/api/users/{BOT_NAME}/{REUSE_USER}"),
        ("POST", "/healthz"),
        ("TRACE", "/livez"),
        ("OPTIONS", "/api/generation/text-to-image"),
    ]:
        answer = await client.call(method, path, body=body if method not in ("GET", "TRACE") else None)
        client.tally.record(group, f"{method} {path}", answer, answer.status in {400, 404, 405, 501})
    ids = [
        "x",
        "a" * 32,
        "a" * 33,
        "a" * 5000,
        "%00",
        "%ff%fe",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "'%20OR%201=1--",
        "*",
        "%25",
        quote("идентификатор"),
        "0" * 32 + "%00",
        "-1",
        "%0d%0aX-Injected:%201",
    ]
    for identifier in ids:
        answer = await client.call("GET", f"/api/generations/{identifier}")
        client.tally.record(
            group, f"GET /api/generations/{identifier[:60]}", answer, answer.status in {400, 404}
        )
    if known_id:
        answer = await client.call("GET", f"/api/generations/{known_id}")
        client.tally.record(group, "GET /api/generations/<a real id>", answer, answer.status == 200)
    bots = [
        "nope",
        "%00",
        "%ff",
        "a" * 65,
        "a" * 5000,
        "..%2F..%2Fetc",
        quote("бот"),
        "%20",
        BOT_NAME + "%00",
        BOT_NAME.upper(),
        "x%0A" + INJECTED,
    ]
    for bot in bots:
        answer = await client.call("GET", f"/api/users/{bot}/{REUSE_USER}")
        client.tally.record(
            group, f"GET /api/users/{bot[:60]}/{REUSE_USER}", answer, answer.status in {400, 404, 422}
        )
    for user in [
        "0",
        "-1",
        str(2**52),
        str(2**52 - 1),
        str(2**63),
        "9" * 20,
        "1e3",
        "0x10",
        "%2B1",
        "%201",
        "1.0",
        quote("١٢٣"),
        "%00",
        "1%0A",
        "0001",
    ]:
        answer = await client.call("GET", f"/api/users/{BOT_NAME}/{user}")
        client.tally.record(
            group, f"GET /api/users/{BOT_NAME}/{user}", answer, answer.status in {400, 404, 422}
        )
    answer = await client.call("GET", f"/api/users/{BOT_NAME}/{REUSE_USER}")
    client.tally.record(group, "GET /api/users/<bot>/<a real user>", answer, answer.status == 200)


# --------------------------------------------------------------------------------------- URLs


def own_addresses() -> list[str]:
    """This machine's addresses on its network (not loopback), as a URL host."""
    found = []
    for family, target in ((socket.AF_INET, ("203.0.113.1", 9)), (socket.AF_INET6, ("2001:db8::1", 9))):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(target)  # no packet is sent: this only picks the source address
                address = str(probe.getsockname()[0])
        except OSError:
            continue
        if ipaddress.ip_address(address).is_global:
            continue  # a public address: not what this run is about
        found.append(f"[{address}]" if family == socket.AF_INET6 else address)
    return found


def local_name() -> str | None:
    """The machine's own name when it resolves (without DNS: /etc/hosts) to a non-public address."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    if infos and all(not ipaddress.ip_address(str(info[4][0])).is_global for info in infos):
        return name
    return None


def url_cases(port: int) -> list[tuple[str, str, bool]]:
    """(label, url, whether it names an address: then the code must be `*_unreachable`)."""
    p = port
    cases: list[tuple[str, str, bool]] = [
        ("127.0.0.1", f"http://127.0.0.1:{p}/files/photos.zip", True),
        ("localhost", f"http://localhost:{p}/files/photos.zip", True),
        ("LOCALHOST.", f"http://LOCALHOST.:{p}/files/photos.zip", True),
        ("0.0.0.0 (this host)", f"http://0.0.0.0:{p}/files/photos.zip", True),
        ("0", f"http://0:{p}/files/photos.zip", True),
        ("2130706433", f"http://2130706433:{p}/files/photos.zip", True),
        ("0x7f.1", f"http://0x7f.1:{p}/files/photos.zip", True),
        ("0x7f000001", f"http://0x7f000001:{p}/files/photos.zip", True),
        ("017700000001", f"http://017700000001:{p}/files/photos.zip", True),
        ("0177.0.0.1", f"http://0177.0.0.1:{p}/files/photos.zip", True),
        ("127.1", f"http://127.1:{p}/files/photos.zip", True),
        ("127.0.1", f"http://127.0.1:{p}/files/photos.zip", True),
        ("127.000.000.001", f"http://127.000.000.001:{p}/files/photos.zip", True),
        ("127.255.255.254", f"http://127.255.255.254:{p}/files/photos.zip", True),
        ("[::1]", f"http://[::1]:{p}/files/photos.zip", True),
        ("[::ffff:127.0.0.1]", f"http://[::ffff:127.0.0.1]:{p}/files/photos.zip", True),
        ("[::ffff:7f00:1]", f"http://[::ffff:7f00:1]:{p}/files/photos.zip", True),
        ("[0:0:0:0:0:ffff:127.0.0.1]", f"http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/files/photos.zip", True),
        ("[::127.0.0.1]", f"http://[::127.0.0.1]:{p}/files/photos.zip", True),
        ("[::]", f"http://[::]:{p}/files/photos.zip", True),
        ("[64:ff9b::7f00:1] (NAT64)", f"http://[64:ff9b::7f00:1]:{p}/files/photos.zip", True),
        ("[2002:7f00:1::1] (6to4)", f"http://[2002:7f00:1::1]:{p}/files/photos.zip", True),
        ("user:password@127.0.0.1", f"http://user:{URL_PASSWORD}@127.0.0.1:{p}/files/photos.zip", True),
        ("name@127.0.0.1", f"http://example.com@127.0.0.1:{p}/files/photos.zip", True),
        ("a secret in the query", f"http://127.0.0.1:{p}/files/photos.zip?token={URL_QUERY_SECRET}", True),
        ("percent-encoded host", f"http://%31%32%37.0.0.1:{p}/files/photos.zip", True),
        ("full-width digits", f"http://１２７.０.０.１:{p}/files/photos.zip", True),
        ("https at 127.0.0.1", f"https://127.0.0.1:{p}/files/photos.zip", True),
        (
            "a redirect on 127.0.0.1",
            f"http://127.0.0.1:{p}/redirect?to=http://127.0.0.1:{p}/files/photos.zip",
            True,
        ),
        ("a trickling body on localhost", f"http://localhost:{p}/trickle", True),
        ("an endless body on localhost", f"http://localhost:{p}/endless", True),
        ("a redirect loop on localhost", f"http://localhost:{p}/loop", True),
        ("a fragment hiding the host", f"http://127.0.0.1:{p}#@example.com/photos.zip", True),
        ("169.254.169.254 (metadata)", "http://169.254.169.254/latest/meta-data/", True),
        ("169.254.169.254 as an integer", "http://2852039166/latest/meta-data/", True),
        ("10.0.0.1", f"http://10.0.0.1:{p}/files/photos.zip", True),
        ("172.16.0.1", f"http://172.16.0.1:{p}/files/photos.zip", True),
        ("192.168.0.1", f"http://192.168.0.1:{p}/files/photos.zip", True),
        ("100.64.0.1 (shared)", f"http://100.64.0.1:{p}/files/photos.zip", True),
        ("224.0.0.1 (multicast)", f"http://224.0.0.1:{p}/files/photos.zip", True),
        ("255.255.255.255", f"http://255.255.255.255:{p}/files/photos.zip", True),
        ("[fe80::1] (link-local)", f"http://[fe80::1]:{p}/files/photos.zip", True),
        ("[fc00::1] (unique local)", f"http://[fc00::1]:{p}/files/photos.zip", True),
        ("[fe80::1%25lo] (zone)", f"http://[fe80::1%25lo]:{p}/files/photos.zip", True),
        ("a backslash before @", f"http://127.0.0.1:{p}\\@example.com/photos.zip", False),
        ("file:///etc/passwd", "file:///etc/passwd", False),
        ("ftp at 127.0.0.1", f"ftp://127.0.0.1:{p}/photos.zip", False),
        ("gopher at 127.0.0.1", f"gopher://127.0.0.1:{p}/_GET", False),
        ("no scheme", f"//127.0.0.1:{p}/photos.zip", False),
        ("javascript:", "javascript:alert(1)", False),
        ("a URL of 3,000 characters", "http://127.0.0.1/" + "a" * 3000, False),
        ("CR LF in the URL", f"http://127.0.0.1:{p}/\r\nX-Injected: 1", False),
        ("a forged log line in the URL", f"http://127.0.0.1:{p}/a\n{INJECTED} 1", False),
        ("a forged log line in the host", f"http://a\n{INJECTED}:{p}/a", False),
        ("no host", "http:///photos.zip", False),
        ("port 0", "http://127.0.0.1:0/photos.zip", False),
        ("port 99999", "http://127.0.0.1:99999/photos.zip", False),
    ]
    name = local_name()
    if name:
        cases.append((f"this machine's name ({name})", f"http://{name}:{p}/files/photos.zip", True))
    for address in own_addresses():
        cases.append((f"this machine's address {address}", f"http://{address}:{p}/files/photos.zip", True))
    return cases


async def attack_urls(client: Client, port: int) -> None:
    group = "private URLs"
    kinds = [
        ("model-training", "zip_url", {"trigger_word": "hostile_tw"}),
        ("voice-avatar", "audio_url", {}),
    ]

    def job(
        kind: str, name: str, extra: dict[str, str], label: str, url: str, address: bool
    ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            body = {"telegram_id": URL_USER, "bot_name": BOT_NAME, name: url, **extra}
            answer = await client.call("POST", f"/api/generation/{kind}", json_body=body)
            wanted = "zip_unreachable" if name == "zip_url" else "audio_unreachable"
            ok = answer.status == 422 and (not address or wanted in answer.codes())
            client.tally.record(group, f"POST /api/generation/{kind} {name}={url!r} ({label})", answer, ok)

        return run

    jobs = [
        job(kind, name, extra, label, url, address)
        for kind, name, extra in kinds
        for label, url, address in url_cases(port)
    ]
    await gather_limited(jobs, 10)


# --------------------------------------------------------------------------------------- webhooks


def telegram_update(
    update_id: int, user: int, text: str, chat: int | None = None, **sender: Any
) -> dict[str, Any]:
    person = {"id": user, "is_bot": False, "first_name": "Hostile", "language_code": "en", **sender}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id % 1_000_000,
            "date": int(time.time()),
            "chat": {"id": user if chat is None else chat, "type": "private", "first_name": "Hostile"},
            "from": person,
            "text": text,
        },
    }


async def attack_telegram_webhooks(client: Client, other_generation: str | None) -> None:
    group = "Telegram webhook (forged)"
    update = json.dumps(telegram_update(FAKE_UPDATES_START, TELEGRAM_USER, "/image a forged update")).encode()
    header = TELEGRAM_WEBHOOK_HEADER
    variants: list[tuple[str, str, str | None]] = [
        (f"{BOT_NAME}, no secret", BOT_NAME, None),
        (f"{BOT_NAME}, an empty secret", BOT_NAME, ""),
        (f"{BOT_NAME}, a wrong secret", BOT_NAME, "0" * 64),
        (f"{BOT_NAME}, WEBHOOK_SECRET itself", BOT_NAME, WEBHOOK_SECRET),
        (f"{BOT_NAME}, another bot's secret", BOT_NAME, telegram_webhook_secret(WEBHOOK_SECRET, OTHER_BOT)),
        (f"{BOT_NAME}, its secret in upper case", BOT_NAME, BOT_WEBHOOK_SECRET.upper()),
        (f"{BOT_NAME}, its secret less a character", BOT_NAME, BOT_WEBHOOK_SECRET[:-1]),
        (f"{BOT_NAME}, its secret and a character more", BOT_NAME, BOT_WEBHOOK_SECRET + "0"),
        (f"{BOT_NAME}, a 4,000-character secret", BOT_NAME, "s" * 4000),
        ("an unknown bot, no secret", OTHER_BOT, None),
        (
            "an unknown bot, the secret derived for it",
            OTHER_BOT,
            telegram_webhook_secret(WEBHOOK_SECRET, OTHER_BOT),
        ),
        (f"an unknown bot, {BOT_NAME}'s secret", OTHER_BOT, BOT_WEBHOOK_SECRET),
        (
            "the bot's name in upper case, the secret derived for it",
            BOT_NAME.upper(),
            telegram_webhook_secret(WEBHOOK_SECRET, BOT_NAME.upper()),
        ),
        ("a NUL bot name, the secret derived for it", "%00", telegram_webhook_secret(WEBHOOK_SECRET, "\x00")),
        ("a 5,000-character bot name", "b" * 5000, None),
        ("a bot name with a forged log line", f"x%0A{INJECTED}", None),
        ("a non-ASCII bot name", quote("бот"), telegram_webhook_secret(WEBHOOK_SECRET, "бот")),
    ]
    answers: list[tuple[str, Answer]] = []
    for label, name, secret in variants:
        headers = {} if secret is None else {header: secret}
        answer = await client.call(
            "POST", f"/webhooks/telegram/{name}", headers=headers, body=update, auth=False
        )
        answers.append((label, answer))
    for label, value in (
        ("a non-ASCII secret", "секрет".encode()),
        ("an invalid UTF-8 secret", b"\xff\xfe" + BOT_WEBHOOK_SECRET.encode()),
    ):
        data = raw_post(
            f"/webhooks/telegram/{BOT_NAME}".encode(), update, (header.encode(), value), auth=False
        )
        answers.append((f"{BOT_NAME}, {label} (raw)", await client.raw(data)))
    reference = answers[0][1]
    timings: dict[str, float] = {}
    for label, answer in answers:
        same = answer.status == reference.status == 401 and answer.text == reference.text
        client.tally.record(
            group,
            f"POST /webhooks/telegram: {label} (must answer as every refusal: 401 {reference.text})",
            answer,
            same,
        )
        timings[label] = answer.seconds
    client.tally.notes.append(
        "Telegram webhook refusals, seconds each: "
        + ", ".join(f"{label}: {1000 * seconds:.1f} ms" for label, seconds in timings.items())
    )
    await attack_telegram_updates(client, other_generation)


async def attack_telegram_updates(client: Client, other_generation: str | None) -> None:
    """With the right secret: updates Telegram would never send. Answered 200 (taken, or dropped as a
    handler's failure) or 400 (not an update); none makes a generation."""
    group = "Telegram webhook (malformed updates)"
    headers = {TELEGRAM_WEBHOOK_HEADER: BOT_WEBHOOK_SECRET}
    path = f"/webhooks/telegram/{BOT_NAME}"
    number = iter(range(FAKE_UPDATES_START + 1, FAKE_UPDATES_START + 1000))
    user = TELEGRAM_USER

    def update(text: str, sender: int = user, chat: int | None = None, **extra: Any) -> bytes:
        return json.dumps(telegram_update(next(number), sender, text, chat, **extra)).encode()

    def callback(data: str) -> bytes:
        person = {"id": user, "is_bot": False, "first_name": "Hostile"}
        message = {
            "message_id": 5,
            "date": int(time.time()),
            "chat": {"id": user, "type": "private"},
            "text": "x",
        }
        query = {
            "id": f"cbq{next(number)}",
            "from": person,
            "chat_instance": "1",
            "data": data,
            "message": message,
        }
        return json.dumps({"update_id": next(number), "callback_query": query}).encode()

    cases: list[tuple[str, bytes]] = [
        ("not JSON", b"hello"),
        ("empty", b""),
        ("a JSON array", b"[]"),
        ("{}", b"{}"),
        ("update_id as a string", b'{"update_id": "x"}'),
        ("a 5,000-digit update_id", ('{"update_id": ' + DIGITS_5000 + "}").encode()),
        ("100,000-deep arrays", nested(100_000).encode()),
        (
            "100,000-deep objects inside a message",
            ('{"update_id": 1, "message": ' + nested(100_000, "object") + "}").encode(),
        ),
        ("NaN update_id", b'{"update_id": NaN}'),
        ("an unknown update type", json.dumps({"update_id": next(number), "hostile": {"a": 1}}).encode()),
        ("/image from user 2^63", update("/image a fox", 2**63)),
        ("/image from user -1", update("/image a fox", -1)),
        ("/image from user 0", update("/image a fox", 0)),
        ("/image from user 2^52", update("/image a fox", 2**52)),
        ("/image in chat 2^63", update("/image a fox", user, 2**63)),
        ("/image with a NUL in the prompt", update("/image a \x00 fox")),
        ("/image with 900 KB of prompt", update("/image " + "a" * 900_000)),
        ("/image 5 (too many images)", update("/image 5 a fox")),
        ("/image 5 with a forged log line", update(f"/image 5 a\n{INJECTED} fox")),
        (
            "/start with a forged log line in the names",
            update("/start", first_name=f"a\n{INJECTED}", last_name=f"\n{INJECTED}"),
        ),
        ("/image 99999999999999999999", update("/image 99999999999999999999 a fox")),
        (
            "/start with NUL in names",
            update("/start", first_name="a\x00b", username="u\x00v", last_name="\x00"),
        ),
        ("/start with a 70-character username", update("/start", username="u" * 70)),
        ("/start with language_code of 300 characters", update("/start", language_code="x" * 300)),
        ("/grant from a non-admin", update(f"/grant {user} 1000000")),
        ("/plan b from a non-admin", update("/plan b")),
        ("/refund from a non-admin", update("/refund some-charge force")),
        ("a repeat button of another user's generation", callback(f"repeat:{other_generation or 'x'}")),
        ("a cancel button of another user's generation", callback(f"cancel:{other_generation or 'x'}")),
        ("a repeat button naming a NUL", callback("repeat:\x00")),
        ("a buy button of an unknown package", callback("buy:no-such-package")),
        ("a model button of an unknown model", callback("model:\x00" + "m" * 60)),
    ]
    for label, body in cases:
        answer = await client.call("POST", path, headers=headers, body=body, auth=False)
        client.tally.record(group, f"POST {path}: {label}", answer, answer.status in {200, 400, 413})


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def attack_replicate_webhooks(client: Client, port: int, known_id: str | None) -> None:
    group = "Replicate webhook (forged)"
    generation = known_id or "0" * 32
    path = f"/webhooks/replicate?generation={generation}&step=prediction"
    payload = json.dumps(
        {
            "id": "forged-prediction",
            "status": "succeeded",
            "output": [f"http://127.0.0.1:{port}/files/photo.png"],
        }
    )
    now = int(time.time())
    wrong_key = "whsec_" + base64.b64encode(b"not-the-products-signing-key!!!").decode()

    def headers(
        webhook_id: str = "msg_forged", timestamp: int = now, signature: str | None = None
    ) -> dict[str, str]:
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature
            if signature is not None
            else sign(REPLICATE_WEBHOOK_SECRET, webhook_id, timestamp, payload),
        }

    forged: list[tuple[str, dict[str, str], str]] = [
        ("no signature headers", {}, payload),
        ("signed with another key", headers(signature=sign(wrong_key, "msg_forged", now, payload)), payload),
        ("a garbage signature", headers(signature="v1,AAAA"), payload),
        ("an empty signature", headers(signature=""), payload),
        (
            "the signature of another body",
            headers(signature=sign(REPLICATE_WEBHOOK_SECRET, "msg_forged", now, "{}")),
            payload,
        ),
        (
            "the signature of another webhook-id",
            headers(
                webhook_id="msg_other", signature=sign(REPLICATE_WEBHOOK_SECRET, "msg_forged", now, payload)
            ),
            payload,
        ),
        ("a stale timestamp (an hour old), rightly signed", headers(timestamp=now - 3600), payload),
        ("a future timestamp (an hour on), rightly signed", headers(timestamp=now + 3600), payload),
        ("a timestamp that is not a number", {**headers(), "webhook-timestamp": "soon"}, payload),
        ("no webhook-id", {key: value for key, value in headers().items() if key != "webhook-id"}, payload),
        (
            "no webhook-timestamp",
            {key: value for key, value in headers().items() if key != "webhook-timestamp"},
            payload,
        ),
        ("an 8,000-character signature", headers(signature="v1," + "A" * 8000), payload),
        ("a hundred signatures, none right", headers(signature=" ".join(["v1,AAAA"] * 100)), payload),
    ]
    for label, given, body in forged:
        answer = await client.call("POST", path, headers=given, body=body.encode(), auth=False)
        client.tally.record(group, f"POST {path}: {label}", answer, answer.status == 401)
    big = json.dumps({"id": "x", "status": "succeeded", "output": "o" * 2_000_000})
    answer = await client.call(
        "POST", path, headers=headers(signature="v1,AAAA"), body=big.encode(), auth=False
    )
    client.tally.record(group, f"POST {path}: a 2 MB body", answer, answer.status in {401, 413})
    for label, value in (
        ("a non-ASCII signature", "v1,подпись".encode()),
        ("an invalid UTF-8 signature", b"v1,\xff\xfe"),
    ):
        data = raw_post(
            path.encode(),
            payload.encode(),
            (b"webhook-id", b"msg_forged"),
            (b"webhook-timestamp", str(now).encode()),
            (b"webhook-signature", value),
            auth=False,
        )
        answer = await client.raw(data)
        client.tally.record(group, f"POST {path}: {label} (raw)", answer, answer.status in {400, 401})
    await attack_signed_callbacks(client, port, generation)


async def attack_signed_callbacks(client: Client, port: int, generation: str) -> None:
    """Rightly signed (only Replicate could send these), with odd fields: never a 5xx."""
    group = "Replicate webhook (signed, odd fields)"
    counter = iter(range(1, 1000))

    async def send(label: str, query: str, body: str, webhook_id: str | None = None) -> None:
        identifier = webhook_id if webhook_id is not None else f"msg_hostile_{next(counter)}"
        now = int(time.time())
        headers = {
            "webhook-id": identifier,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(REPLICATE_WEBHOOK_SECRET, identifier, now, body),
        }
        answer = await client.call(
            "POST", f"/webhooks/replicate{query}", headers=headers, body=body.encode(), auth=False
        )
        client.tally.record(
            group,
            f"POST /webhooks/replicate{query[:80]}: {label}",
            answer,
            answer.status in {200, 400, 401, 404, 422},
        )

    success = json.dumps(
        {"id": "forged-prediction", "status": "succeeded", "output": [f"http://127.0.0.1:{port}/files/x.png"]}
    )
    await send("an unknown generation", "?generation=deadbeef&step=prediction", success)
    # The right signature under another version label: the SDK compares the bytes only.
    now = int(time.time())
    versioned = sign(REPLICATE_WEBHOOK_SECRET, "msg_v2", now, success).replace("v1,", "v2,")
    headers = {"webhook-id": "msg_v2", "webhook-timestamp": str(now), "webhook-signature": versioned}
    query = "?generation=deadbeef&step=prediction"
    answer = await client.call(
        "POST", f"/webhooks/replicate{query}", headers=headers, body=success.encode(), auth=False
    )
    client.tally.record(group, f"POST /webhooks/replicate{query}: the right signature labelled v2", answer)
    if answer.status == 200:
        client.tally.notes.append(
            "A Replicate callback whose right signature is labelled 'v2,' instead of 'v1,' is accepted "
            "(the replicate SDK's validate ignores the version label; it still needs the key)."
        )
    await send("a real generation, another job's id", f"?generation={generation}&step=prediction", success)
    await send("a real generation, a training step", f"?generation={generation}&step=training", success)
    await send("no query", "", success)
    await send("an unknown step", f"?generation={generation}&step=..%2F..%2Fx", success)
    await send("a NUL in the generation", "?generation=%00&step=prediction", success)
    await send("a forged log line in the query", f"?generation=%0A{INJECTED}&step=%0A{INJECTED}", success)
    await send("a 10,000-character generation", f"?generation={'g' * 10_000}&step=prediction", success)
    await send("a NUL in the step", f"?generation={generation}&step=prediction%00", success)
    await send("a payload that is an array", f"?generation={generation}&step=prediction", "[1, 2]")
    await send("a payload that is not JSON", f"?generation={generation}&step=prediction", "hello")
    await send("an empty payload", f"?generation={generation}&step=prediction", "")
    await send(
        "a status that is not final",
        f"?generation={generation}&step=prediction",
        json.dumps({"id": "x", "status": "processing"}),
    )
    await send(
        "an id that is an object",
        f"?generation={generation}&step=prediction",
        json.dumps({"id": {"a": 1}, "status": "succeeded"}),
    )
    await send(
        "an id with a NUL",
        f"?generation={generation}&step=prediction",
        json.dumps({"id": "x\x00", "status": "failed"}),
    )
    await send(
        "a status with a NUL",
        f"?generation={generation}&step=prediction",
        json.dumps({"id": "x", "status": "failed\x00"}),
    )
    await send(
        "a 5,000-character webhook-id", f"?generation={generation}&step=prediction", success, "w" * 5000
    )
    await send(
        "a webhook-id with non-ASCII",
        f"?generation={generation}&step=prediction",
        success,
        "msg_идентификатор",
    )
    await send(
        "the same webhook-id twice (1)", f"?generation={generation}&step=prediction", success, "msg_twice"
    )
    await send(
        "the same webhook-id twice (2)", f"?generation={generation}&step=prediction", success, "msg_twice"
    )
    await send("100,000-deep JSON", f"?generation={generation}&step=prediction", nested(100_000))
    await send(
        "a 5,000-digit number",
        f"?generation={generation}&step=prediction",
        '{"id": "x", "status": "succeeded", "n": ' + DIGITS_5000 + "}",
    )
    await send(
        "NaN", f"?generation={generation}&step=prediction", '{"id": "x", "status": "succeeded", "n": NaN}'
    )
    await send(
        "invalid UTF-8 is not signable as text: a lone surrogate escape",
        f"?generation={generation}&step=prediction",
        '{"id": "\\ud800", "status": "succeeded"}',
    )


# --------------------------------------------------------------------------------------- load


async def attack_slow_clients(client: Client, connections: int, seconds: float) -> dict[str, Any]:
    """Connections that send their request a byte at a time; meanwhile /livez and a read must answer."""
    group = "slow clients"
    head = (
        b"POST /api/generation/text-to-image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + API_TOKEN.encode()
        + b"\r\n"
    )
    opened: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    for index in range(connections):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        except OSError:
            break
        if index % 2:
            writer.write(head + b"Content-Length: 100000\r\n\r\n{")  # a body that trickles
        else:
            writer.write(head[:20])  # headers that trickle
        opened.append(writer)
        readers.append(reader)
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for writer in opened:
            with contextlib.suppress(Exception):
                writer.write(b"0")
        answer = await client.call("GET", "/livez", auth=False, timeout=10)
        latencies.append(answer.seconds)
        client.tally.record(
            group,
            f"GET /livez while {len(opened)} slow clients hold connections",
            answer,
            answer.status == 200,
        )
        read = await client.call("GET", f"/api/users/{BOT_NAME}/{REUSE_USER}", timeout=10)
        failures += read.status != 200
        client.tally.record(
            group, "GET /api/users/<bot>/<user> while slow clients hold connections", read, read.status == 200
        )
        await asyncio.sleep(0.5)
    # What the product answered the slow ones, if anything, before they were dropped.
    still_open = sum(1 for reader in readers if not reader.at_eof())
    for writer in opened:
        writer.close()
    for writer in opened:
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return {
        "slow connections opened": len(opened),
        "still open after": still_open,
        "livez max (ms)": round(1000 * max(latencies), 1) if latencies else None,
        "reads failed": failures,
    }


async def attack_big_bodies(client: Client, count: int) -> None:
    group = "concurrent 1 MB bodies and reads"
    body = changed("prompt", "[" + ",".join(["0"] * 480_000) + "]")  # ~960 KB: under the cap, refused

    def post() -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            answer = await client.call("POST", "/api/generation/text-to-image", body=body)
            client.tally.record(
                group,
                f"{count} concurrent ~1 MB bodies (a 480,000-element prompt)",
                answer,
                answer.status == 422,
            )

        return run

    await asyncio.gather(*(post()() for _ in range(count)))

    async def read() -> None:
        answer = await client.call("GET", f"/api/users/{BOT_NAME}/{READ_USER}")
        client.tally.record(group, "300 concurrent GET /api/users/<bot>/<user>", answer, answer.status == 200)

    await asyncio.gather(*(read() for _ in range(300)))


async def attack_races(client: Client) -> dict[str, Any]:
    group = "racing requests"
    path = "/api/generation/text-to-image"
    body = json_text(image_fields(IDEMPOTENT_USER, "one key, two hundred requests"))
    key = "hostile-race-key"

    async def same() -> Answer:
        return await client.call("POST", path, body=body, headers={"Idempotency-Key": key}, timeout=60)

    answers = await asyncio.gather(*(same() for _ in range(200)))
    ids = {
        str(answer.json().get("id"))
        for answer in answers
        if answer.status == 202 and isinstance(answer.json(), dict)
    }
    for answer in answers:
        client.tally.record(
            group,
            f"200 concurrent requests under Idempotency-Key {key}",
            answer,
            answer.status == 202,
            valid=True,
        )

    async def different(index: int) -> Answer:
        fields = image_fields(BALANCE_USER, f"different request {index}", images=4)
        return await client.call("POST", path, body=json_text(fields), timeout=60)

    spent = await asyncio.gather(*(different(index) for index in range(100)))
    for answer in spent:
        client.tally.record(
            group,
            f"100 concurrent different requests of one user with {NEW_USER_BONUS} stars",
            answer,
            answer.status in {202, 402},
            valid=True,
        )
    return {
        "identical requests": len(answers),
        "distinct generation ids answered": len(ids),
        "different requests accepted (202)": sum(answer.status == 202 for answer in spent),
        "refused for the balance (402)": sum(answer.status == 402 for answer in spent),
        "race_ids": ids,
    }


# --------------------------------------------------------------------------------------- the database


async def read_rows(
    config: Config, folder: Path, dsn: str, database: str, query: str
) -> list[tuple[Any, ...]]:
    if config.database == "sqlite":

        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(f"file:{folder}/bench.db?mode=ro", uri=True)) as db:
                return list(db.execute(query))

        return await asyncio.to_thread(read)
    import asyncpg

    connection = await asyncpg.connect(urlsplit(dsn)._replace(path=f"/{database}").geturl(), timeout=10)
    try:
        return [tuple(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()


async def settle_generations(config: Config, folder: Path, dsn: str, database: str, timeout: float) -> int:
    """Waits until no generation is queued or running; answers how many still are."""
    query = "SELECT count(*) FROM generations WHERE status IN ('queued', 'running')"
    deadline = time.monotonic() + timeout
    while True:
        left = int((await read_rows(config, folder, dsn, database, query))[0][0])
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.3)


async def ledger_checks(config: Config, folder: Path, dsn: str, database: str) -> dict[str, Any]:
    users = await read_rows(
        config,
        folder,
        dsn,
        database,
        "SELECT u.id, u.telegram_id, u.balance, COALESCE(SUM(l.amount), 0), COUNT(l.id) "
        "FROM users u LEFT JOIN ledger l ON l.user_id = u.id GROUP BY u.id, u.telegram_id, u.balance",
    )
    lines = await read_rows(
        config,
        folder,
        dsn,
        database,
        "SELECT user_id, id, amount, balance_after, generation_id, operation_key FROM ledger "
        "ORDER BY user_id, id",
    )
    generations = await read_rows(
        config, folder, dsn, database, "SELECT id, request_key, status, price, refunded FROM generations"
    )
    mismatched = [
        f"user {telegram_id}: balance {balance}, ledger sum {total}"
        for _, telegram_id, balance, total, _ in users
        if int(balance) != int(total)
    ]
    negative = [
        f"user {telegram_id}: balance {balance}"
        for _, telegram_id, balance, _, _ in users
        if int(balance) < 0
    ]
    broken_chain: list[str] = []
    running: dict[int, int] = {}
    for user_id, line_id, amount, balance_after, _, key in lines:
        running[int(user_id)] = running.get(int(user_id), 0) + int(amount)
        total = running[int(user_id)]
        if total != int(balance_after):
            broken_chain.append(
                f"ledger line {line_id} ({key}): balance_after {balance_after}, running sum {total}"
            )
    below_zero = [
        f"ledger line {line_id} ({key}): balance_after {after}"
        for _, line_id, _, after, _, key in lines
        if int(after) < 0
    ]
    per_generation: dict[str, int] = {}
    for _, _, amount, _, generation_id, _ in lines:
        if generation_id is not None:
            per_generation[str(generation_id)] = per_generation.get(str(generation_id), 0) + int(amount)
    wrong_generation = [
        f"generation {identifier} ({status}): charged {price}, refunded {refunded}, ledger {kept}"
        for identifier, _, status, price, refunded in generations
        if (kept := per_generation.get(str(identifier), 0)) != -(int(price) - int(refunded))
    ]
    return {
        "users": len(users),
        "ledger lines": len(lines),
        "generations": [(str(row[0]), str(row[1]), str(row[2])) for row in generations],
        "balance != ledger sum": mismatched,
        "negative balances": negative,
        "balance_after chain breaks": broken_chain,
        "ledger lines below zero": below_zero,
        "generation ledger != charged - refunded": wrong_generation,
    }


# --------------------------------------------------------------------------------------- the run


def secrets_to_find() -> dict[str, str]:
    key_part = REPLICATE_WEBHOOK_SECRET.split("_", 1)[1]
    return {
        "bot token": BOT_TOKEN,
        "bot token's secret half": BOT_TOKEN.split(":", 1)[1],
        "API token": API_TOKEN,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "the bot's derived webhook secret": BOT_WEBHOOK_SECRET,
        "Replicate token": REPLICATE_TOKEN,
        "Replicate webhook secret": key_part,
        "ElevenLabs key": ELEVENLABS_KEY,
        "a URL's password (given by a client)": URL_PASSWORD,
        "a URL's query secret (given by a client)": URL_QUERY_SECRET,
    }


def leaked_lines(log: Path) -> list[str]:
    found = []
    secrets = secrets_to_find()
    text = log.read_text(errors="replace") if log.exists() else ""
    for number, line in enumerate(text.splitlines(), 1):
        for name, secret in secrets.items():
            if secret in line:
                shown = line.replace(secret, f"<{name}>")
                found.append(f"line {number} holds the {name}: {shown[:300]}")
    return found


def log_levels(log: Path) -> tuple[dict[str, int], list[str]]:
    """Lines per level, tracebacks, and the ERROR and WARNING messages of the product's text log, by
    how often each came (numbers in them masked, so that one message is counted once)."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            levels["Traceback" if line.startswith("Traceback") else "other"] += 1
            continue
        level, message = match.group(1), match.group(2)
        levels[level] += 1
        if level in ("ERROR", "CRITICAL", "WARNING"):
            messages[f"{level} {re.sub(r'[0-9a-f]{8,}|[0-9]+', '#', message)[:160]}"] += 1
    notes = [f"Product log, {count}× `{message}`" for message, count in messages.most_common(12)]
    return dict(levels), notes


def injected_lines(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [
        f"line {number}: {line[:200]}"
        for number, line in enumerate(text.splitlines(), 1)
        if line.startswith(INJECTED)
    ]


async def listener_reachable(listener: FileHost) -> list[str]:
    """Where the listener answers, tried by this run itself before the product starts (its count is
    reset after): proof that a fetch of those addresses would be counted."""
    hosts = [
        "127.0.0.1",
        "::1",
        str(ipaddress.IPv4Address(0)),
        *(host.strip("[]") for host in own_addresses()),
    ]
    reached = []
    for host in hosts:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, listener.port), 2)
            writer.write(b"GET /files/photo.png HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 2)
            writer.close()
            if b" 200 " in line:
                reached.append(host)
        except (OSError, TimeoutError):
            continue
    await asyncio.sleep(0.2)
    listener.accepted = 0
    listener.host_headers.clear()
    return reached


async def start_listener() -> FileHost:
    """The file host on every local address (IPv4 and IPv6), one port: any connection is a fetch of a
    private address."""
    for _ in range(20):
        listener = FileHost(host="", trickle_interval=0.5)
        listener.port = free_port()
        try:
            await listener.start()
        except OSError:
            continue
        listener.put("photos.zip", photos_zip(10))
        listener.put("photo.png", b"\x89PNG\r\n\x1a\n")
        return listener
    raise BenchError("could not open the listener on a free port")


async def register(fakes: Fakes, product: Product, http: aiohttp.ClientSession, users: Sequence[int]) -> None:
    """/start from each user (a known chat at the fake Telegram, the welcome bonus)."""
    for update in await fakes.updates([(user, "/start") for user in users]):
        await post_update(http, product, update)


def sample_memory(pid: int, samples: list[float], stop: asyncio.Event) -> asyncio.Task[None]:
    async def run() -> None:
        while not stop.is_set():
            samples.append(rss_mib(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    return asyncio.create_task(run())


async def run(arguments: argparse.Namespace) -> tuple[dict[str, Any], Tally]:
    config = Config(database=arguments.database, plan=arguments.plan)
    options = ProductOptions(
        log_level=arguments.log_level, redis_url=arguments.redis_url, postgres=arguments.postgres
    )
    options.extra_env = {
        "LOG_FORMAT": "text",
        "NEW_USER_BONUS": str(NEW_USER_BONUS),
        "REPLICATE_WEBHOOK_SECRET": REPLICATE_WEBHOOK_SECRET,
        "ELEVENLABS_API_KEY": ELEVENLABS_KEY,
        "FETCH_TIMEOUT": "5",
    }
    tally = Tally()
    result: dict[str, Any] = {"configuration": config.label}
    children = Children()
    started = time.monotonic()
    listener = await start_listener()
    result["listener answers at"] = await listener_reachable(listener)
    try:
        with work_folder(config, arguments.keep_logs) as folder:
            if config.plan == "A":
                await flush_redis(options.redis_url)
            postgres = Postgres(options.postgres)
            database = f"aibot_hostile_{os.getpid()}"
            database_url = await fresh_database(config, postgres, database, folder)
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as control:
                    fakes = await Fakes.start(children, folder, 0, control)
                    product = Product(config, options, folder, database_url, fakes)
                    if "FETCH_ALLOW_PRIVATE" in product.settings:
                        raise BenchError("FETCH_ALLOW_PRIVATE must be unset for this run")
                    health = await product.start(children, control)
                    result["plan in force"] = health.get("plan")
                    pid = product.processes[0].pid
                    await register(
                        fakes, product, control, [REUSE_USER, IDEMPOTENT_USER, BALANCE_USER, READ_USER]
                    )
                    await asyncio.sleep(1.0)
                    rss_before = rss_mib(pid)
                    samples: list[float] = []
                    stop = asyncio.Event()
                    sampler = sample_memory(pid, samples, stop)
                    connector = aiohttp.TCPConnector(limit=0, force_close=True)
                    async with aiohttp.ClientSession(connector=connector) as http:
                        client = Client(product.base, product.port, http, tally)
                        attacks_started = time.monotonic()
                        await attack_authorization(client)
                        await attack_idempotency(client)
                        known = sorted(tally.valid_ids)
                        known_id = known[0] if known else None
                        await attack_bodies(client)
                        await attack_framing(client)
                        await attack_paths(client, known_id)
                        await attack_urls(client, listener.port)
                        await attack_telegram_webhooks(client, known_id)
                        await attack_replicate_webhooks(client, listener.port, known_id)
                        result["slow clients"] = await attack_slow_clients(
                            client, arguments.slow_clients, arguments.slow_seconds
                        )
                        await attack_big_bodies(client, arguments.big_bodies)
                        races = await attack_races(client)
                        result["attacks took (s)"] = round(time.monotonic() - attacks_started, 1)
                        left = await settle_generations(config, folder, options.postgres, database, 30.0)
                        result["generations still queued or running after 30 s"] = left
                        await asyncio.sleep(1.0)
                        stop.set()
                        await sampler
                        alive = product.processes[0].alive()
                        livez = await client.call("GET", "/livez", auth=False, timeout=10)
                    result["race"] = races
                    result["alive"] = alive
                    result["livez"] = livez.status
                    result["rss before (MiB)"] = round(rss_before, 1)
                    result["rss after (MiB)"] = round(rss_mib(pid), 1)
                    result["rss highest sample (MiB)"] = round(max(samples, default=0.0), 1)
                    result["rss peak, VmHWM (MiB)"] = round(peak_rss_mib(pid), 1)
                    result["listener connections"] = listener.accepted
                    result["listener Host headers"] = listener.host_headers[:10]
                    ledger = await ledger_checks(config, folder, options.postgres, database)
                    result["ledger"] = ledger
                    exit_codes = await product.stop(children)
                    result["exit codes"] = exit_codes
                    result["leaks"] = leaked_lines(product.processes[0].log)
                    result["injected"] = injected_lines(product.processes[0].log)
                    result["log levels"], log_notes = log_levels(product.processes[0].log)
                    tally.notes += log_notes
                    result["log lines"] = len(
                        product.processes[0].log.read_text(errors="replace").splitlines()
                    )
                    result["log file"] = str(product.processes[0].log) if arguments.keep_logs else "(deleted)"
            finally:
                await children.close()
                if config.database == "postgres":
                    with contextlib.suppress(Exception):
                        await postgres.drop(database)
                if config.plan == "A":
                    with contextlib.suppress(Exception):
                        await flush_redis(options.redis_url)
    finally:
        await listener.stop()
    result["run took (s)"] = round(time.monotonic() - started, 1)
    return result, tally


# --------------------------------------------------------------------------------------- report


def checks(result: dict[str, Any], tally: Tally, budget: float) -> list[tuple[str, str, bool]]:
    ledger = result["ledger"]
    race = result["race"]
    five_xx = sum(group.classes["5xx"] for group in tally.groups.values())
    timeouts = sum(group.classes["timeout"] for group in tally.groups.values())
    unexpected = sum(group.unexpected for group in tally.groups.values())
    generation_ids = {identifier for identifier, _, _ in ledger["generations"]}
    by_invalid = sorted(generation_ids - tally.valid_ids)
    race_key_rows = [row for row in ledger["generations"] if row[1].endswith(":hostile-race-key")]
    growth = result["rss highest sample (MiB)"] - result["rss before (MiB)"]
    rows: list[tuple[str, str, bool]] = [
        ("answers 5xx", str(five_xx), five_xx == 0),
        ("requests unanswered (timed out)", str(timeouts), timeouts == 0),
        ("answers other than expected (see below)", str(unexpected), unexpected == 0),
        (
            "connections to the private listener (fetches of a private address); it answers at "
            + ", ".join(result["listener answers at"]),
            str(result["listener connections"]),
            result["listener connections"] == 0,
        ),
        (
            "log lines holding a secret",
            f"{len(result['leaks'])} of {result['log lines']}",
            not result["leaks"],
        ),
        (
            f"log lines a client forged (a line beginning {INJECTED})",
            str(len(result["injected"])),
            not result["injected"],
        ),
        ("process alive after the run", str(result["alive"]), bool(result["alive"])),
        ("GET /livez after the run", str(result["livez"]), result["livez"] == 200),
        (
            "RSS before / after / highest sample / VmHWM (MiB)",
            " / ".join(
                str(result[name])
                for name in (
                    "rss before (MiB)",
                    "rss after (MiB)",
                    "rss highest sample (MiB)",
                    "rss peak, VmHWM (MiB)",
                )
            ),
            growth <= budget,
        ),
        (f"RSS growth, highest sample - before (budget {budget:.0f} MiB)", f"{growth:.1f}", growth <= budget),
        (
            "users whose balance != sum of their ledger lines",
            f"{len(ledger['balance != ledger sum'])} of {ledger['users']}",
            not ledger["balance != ledger sum"],
        ),
        (
            "ledger lines whose balance_after != running sum",
            f"{len(ledger['balance_after chain breaks'])} of {ledger['ledger lines']}",
            not ledger["balance_after chain breaks"],
        ),
        (
            "negative balances / ledger lines below zero",
            f"{len(ledger['negative balances'])} / {len(ledger['ledger lines below zero'])}",
            not ledger["negative balances"] and not ledger["ledger lines below zero"],
        ),
        (
            "generations whose ledger != charged - refunded",
            str(len(ledger["generation ledger != charged - refunded"])),
            not ledger["generation ledger != charged - refunded"],
        ),
        (
            "generations made by requests that must be refused",
            f"{len(by_invalid)} (and {len(tally.wrongly_accepted)} such requests answered 202)",
            not by_invalid and not tally.wrongly_accepted,
        ),
        (
            "200 identical requests, one key: distinct ids answered / generations recorded",
            f"{race['distinct generation ids answered']} / {len(race_key_rows)}",
            race["distinct generation ids answered"] == 1 and len(race_key_rows) == 1,
        ),
        (
            f"100 different requests, {NEW_USER_BONUS} stars, 4 images each: accepted / refused 402",
            f"{race['different requests accepted (202)']} / {race['refused for the balance (402)']}",
            race["different requests accepted (202)"] * 4 * IMAGE_PRICE <= NEW_USER_BONUS,
        ),
        (
            "generations still queued or running 30 s after the attacks",
            str(result["generations still queued or running after 30 s"]),
            True,
        ),
        ("exit code on SIGTERM", str(result["exit codes"]), result["exit codes"] == [0]),
    ]
    if by_invalid:
        tally.findings.append(
            "generations made by requests that must be refused: " + ", ".join(by_invalid[:20])
        )
    for line in tally.wrongly_accepted:
        tally.findings.append("accepted although it must be refused: " + line)
    for name in (
        "balance != ledger sum",
        "balance_after chain breaks",
        "negative balances",
        "ledger lines below zero",
        "generation ledger != charged - refunded",
    ):
        tally.findings += [f"ledger: {item}" for item in ledger[name][:20]]
    if result["listener connections"]:
        hosts = ", ".join(result["listener Host headers"])
        tally.findings.append(f"the private listener was connected to (Host headers: {hosts})")
    tally.findings += [f"log: {line}" for line in result["leaks"][:20]]
    tally.findings += [f"log, forged line: {line}" for line in result["injected"][:20]]
    return rows


def report(result: dict[str, Any], tally: Tally, budget: float) -> tuple[str, bool]:
    lines = [f"## Hostile run: {result['configuration']} (plan in force {result.get('plan in force')})", ""]
    lines += [
        "| attack | requests | 2xx | 3xx | 4xx | 5xx | no answer | timeout | unexpected | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    totals: Counter[str] = Counter()
    for group in tally.groups.values():
        classes = group.classes
        statuses = ", ".join(f"{status}×{count}" for status, count in sorted(group.statuses.items()))
        figures = [group.sent, *(classes[name] for name in ("2xx", "3xx", "4xx", "5xx"))]
        figures += [classes["no answer"] + classes["garbled"], classes["timeout"], group.unexpected]
        lines.append(f"| {group.name} | " + " | ".join(map(str, figures)) + f" | {statuses} |")
        totals.update(classes)
        totals["sent"] += group.sent
        totals["unexpected"] += group.unexpected
    figures = [totals["sent"], *(totals[name] for name in ("2xx", "3xx", "4xx", "5xx"))]
    figures += [totals["no answer"] + totals["garbled"], totals["timeout"], totals["unexpected"]]
    lines.append("| **all** | " + " | ".join(map(str, figures)) + " | |")
    rows = checks(result, tally, budget)
    lines += ["", "| check | result | pass |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**NO**'} |" for name, value, ok in rows]
    slow = result.get("slow clients", {})
    lines += [
        "",
        f"Slow clients: {slow}. Attacks took {result.get('attacks took (s)')} s, "
        f"the whole run {result.get('run took (s)')} s. Product log: {result.get('log lines')} lines, "
        f"{result.get('log levels')}; {result.get('log file')}.",
    ]
    lines += [f"{note}" for note in tally.notes]
    if tally.findings:
        lines += ["", "### Findings (each exact request)", ""]
        lines += [f"- {finding}" for finding in tally.findings]
    passed = all(ok for _, _, ok in rows)
    lines += ["", f"**{'PASS' if passed else 'FAIL'}**"]
    return "\n".join(lines), passed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--plan", choices=["A", "B"], default="A")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where the run's database is made",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/12", help="flushed before and after (Plan A)"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--slow-clients", type=int, default=100)
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--big-bodies", type=int, default=50)
    parser.add_argument(
        "--memory-budget", type=float, default=200.0, help="MiB the RSS may grow during the attacks"
    )
    parser.add_argument(
        "--keep-logs", type=Path, help="keep the product's log and SQLite file in this folder"
    )
    arguments = parser.parse_args(argv)
    try:
        result, tally = asyncio.run(run(arguments))
    except BenchError as error:
        print(f"the run could not be made: {error}", file=sys.stderr)
        sys.exit(2)
    text, passed = report(result, tally, arguments.memory_budget)
    print(text)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
