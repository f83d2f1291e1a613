"""A fake ElevenLabs HTTP API on loopback, spoken to by the real ``elevenlabs`` SDK.

Usage::

    fake = FakeElevenLabs()
    await fake.start()
    client = AsyncElevenLabs(api_key=fake.api_key, base_url=fake.url)
    audio = b"".join([c async for c in client.text_to_speech.convert(
        "21m00Tcm4TlvDq8ikWAM", text="hi", model_id="eleven_multilingual_v2",
        output_format="opus_48000_32")])
    await fake.stop()

``fake.url`` is the bare origin (``http://127.0.0.1:PORT``), exactly like
``https://api.elevenlabs.io``: the SDK itself prefixes every path with ``v1/`` or ``v2/``.

Wire format follows elevenlabs-python 2.x (``core/http_client.py`` and the raw clients):

* auth header ``xi-api-key``; missing or wrong -> 401 ``invalid_api_key``;
* ``POST /v1/text-to-speech/{voice_id}`` (and ``/stream``), JSON body, query ``output_format``
  (default ``mp3_44100_128``), answered with a chunked audio body;
* ``POST /v1/voices/add`` multipart: fields ``name``, ``remove_background_noise`` ("true"/"false"),
  ``description``, ``labels`` (a JSON string, ``"null"`` when omitted) and one ``files`` part per file;
* ``DELETE /v1/voices/{id}``, ``GET /v1/voices/{id}``, ``GET /v1/voices``, ``GET /v2/voices``.

Errors use ElevenLabs' bodies: ``{"detail": {"status": ..., "message": ...}}``, and FastAPI's
``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` for 422.  The SDK raises
``elevenlabs.core.api_error.ApiError`` for every non-2xx status except 422, which raises
``elevenlabs.errors.UnprocessableEntityError`` (a subclass).  Note that the SDK itself retries
non-streaming requests (clone, delete, get, list) on 429/408/409/5xx up to 2 times, sleeping
``Retry-After`` seconds or 1s/2s backoff; ``text_to_speech.convert`` is streamed and never retried.

Every authenticated request that reaches an endpoint is recorded (``tts_requests``,
``clone_requests``), failed ones included; each record carries the HTTP ``status`` answered.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from aiohttp.web_request import FileField

Endpoint = Literal["tts", "clone", "delete"]

RACHEL_VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
ADAM_VOICE_ID = "pNInz6obpgDQGcFmaJgB"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"

# TextToSpeechConvertRequestOutputFormat in the SDK
OUTPUT_FORMATS: tuple[str, ...] = (
    "alaw_8000",
    "mp3_22050_32",
    "mp3_24000_48",
    "mp3_44100_128",
    "mp3_44100_192",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "opus_48000_128",
    "opus_48000_192",
    "opus_48000_32",
    "opus_48000_64",
    "opus_48000_96",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_32000",
    "pcm_44100",
    "pcm_48000",
    "pcm_8000",
    "ulaw_8000",
    "wav_16000",
    "wav_22050",
    "wav_24000",
    "wav_32000",
    "wav_44100",
    "wav_48000",
    "wav_8000",
)

_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "ulaw": "audio/basic",
    "alaw": "audio/alaw",
}


@dataclass
class ApiError:
    """An error the fake answers instead of doing the work (see ``FakeElevenLabs.fail_next``)."""

    status: int
    detail_status: str
    message: str
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        if self.status == 422:
            return {"detail": [{"loc": ["body"], "msg": self.message, "type": self.detail_status}]}
        return {"detail": {"status": self.detail_status, "message": self.message}}

    # ---- the errors ElevenLabs really answers -------------------------------------------------
    @classmethod
    def invalid_api_key(cls) -> ApiError:
        return cls(401, "invalid_api_key", "Invalid API key")

    @classmethod
    def quota_exceeded(cls, remaining: int = 0, required: int = 100, quota: int = 10000) -> ApiError:
        return cls(
            401,
            "quota_exceeded",
            f"This request exceeds your quota of {quota}. You have {remaining} credits remaining, "
            f"while {required} credits are required for this request.",
        )

    @classmethod
    def too_many_concurrent_requests(cls, retry_after: int | None = None) -> ApiError:
        return cls(
            429,
            "too_many_concurrent_requests",
            "Too many concurrent requests. Your current subscription is associated with a maximum of "
            "5 concurrent requests.",
            retry_after,
        )

    @classmethod
    def system_busy(cls, retry_after: int | None = None) -> ApiError:
        return cls(
            429,
            "system_busy",
            "Our services are experiencing high levels of traffic and your request could not be "
            "processed at this time.",
            retry_after,
        )

    @classmethod
    def voice_limit_reached(cls, used: int = 30, limit: int = 30) -> ApiError:
        return cls(
            400,
            "voice_limit_reached",
            f"You have reached your maximum amount of custom voices ({used} / {limit}). "
            "You can upgrade your subscription to increase your custom voice limit.",
        )

    @classmethod
    def voice_not_found(cls, voice_id: str) -> ApiError:
        return cls(404, "voice_not_found", f"A voice with the voice_id {voice_id} was not found.")

    @classmethod
    def internal_error(cls) -> ApiError:
        return cls(500, "internal_server_error", "An internal server error occurred.")


class _Validation(Exception):
    """FastAPI-style 422."""

    def __init__(self, *errors: dict[str, Any]) -> None:
        super().__init__("validation error")
        self.errors = list(errors)


def _missing(*loc: str | int) -> dict[str, Any]:
    return {"type": "missing", "loc": list(loc), "msg": "Field required", "input": None}


# ---- audio ---------------------------------------------------------------------------------------


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) & 0xFF) ^ b]
    return crc


def _ogg_page(packets: list[bytes], *, granule: int, serial: int, seq: int, flags: int) -> bytes:
    lacing = bytearray()
    for p in packets:
        n = len(p)
        lacing += b"\xff" * (n // 255) + bytes([n % 255])
    assert len(lacing) <= 255
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, seq, 0, len(lacing))
    page = header + bytes(lacing) + b"".join(packets)
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def _ogg_opus(sample_rate: int, seconds: int = 2) -> bytes:
    """A valid mono Ogg/Opus stream of silence (RFC 7845): OpusHead, OpusTags, 20 ms frames."""
    serial = 0x454C4142  # "ELAB"
    pre_skip = 312
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, pre_skip, sample_rate, 0, 0)
    vendor = b"fake-elevenlabs"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    silence = b"\xf8\xff\xfe"  # TOC: CELT fullband 20 ms mono, one frame; silent payload
    pages = [
        _ogg_page([head], granule=0, serial=serial, seq=0, flags=0x02),
        _ogg_page([tags], granule=0, serial=serial, seq=1, flags=0x00),
    ]
    frames_per_page = 50  # one second
    for i in range(seconds):
        last = i == seconds - 1
        pages.append(
            _ogg_page(
                [silence] * frames_per_page,
                granule=960 * frames_per_page * (i + 1),
                serial=serial,
                seq=2 + i,
                flags=0x04 if last else 0x00,
            )
        )
    return b"".join(pages)


_MP3_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1 layer III
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2 layer III
}
_MP3_RATES = {44100: (1, 0), 48000: (1, 1), 32000: (1, 2), 22050: (2, 0), 24000: (2, 1), 16000: (2, 2)}


def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def _mp3(sample_rate: int, kbps: int, seconds: float = 1.0) -> bytes:
    """An ID3v2.4 tag then CBR mono MPEG layer III frames of silence (zeroed side info/main data)."""
    text = b"\x03Lavf60.16.100"  # UTF-8 encoded TSSE, as ffmpeg writes it
    frame = b"TSSE" + _syncsafe(len(text)) + b"\x00\x00" + text
    id3 = b"ID3\x04\x00\x00" + _syncsafe(len(frame)) + frame
    version, rate_index = _MP3_RATES[sample_rate]
    bitrate_index = _MP3_BITRATES[version].index(kbps)
    byte1 = 0xFB if version == 1 else 0xF3  # sync, version, layer III, no CRC
    header = bytes([0xFF, byte1, (bitrate_index << 4) | (rate_index << 2), 0xC4])  # mono, original
    samples_per_frame = 1152 if version == 1 else 576
    coefficient = 144 if version == 1 else 72
    frame_len = coefficient * kbps * 1000 // sample_rate  # no padding used
    n_frames = math.ceil(seconds * sample_rate / samples_per_frame)
    return id3 + (header + b"\x00" * (frame_len - 4)) * n_frames


def _wav(sample_rate: int, pcm: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(pcm))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )


def _looks_like_audio(data: bytes) -> bool:
    if len(data) < 4:
        return False
    return (
        data.startswith((b"ID3", b"OggS", b"fLaC", b"\x1aE\xdf\xa3", b"FORM"))
        or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # MPEG audio / ADTS frame sync
        or (data.startswith(b"RIFF") and data[8:12] == b"WAVE")
        or data[4:8] == b"ftyp"  # mp4 / m4a
    )


def _voice_id(seed: str) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    chars = []
    for _ in range(20):
        n, r = divmod(n, len(alphabet))
        chars.append(alphabet[r])
    return "".join(chars)


def _premade(voice_id: str, name: str, labels: dict[str, str], description: str) -> dict[str, Any]:
    return {
        "voice_id": voice_id,
        "name": name,
        "samples": None,
        "category": "premade",
        "fine_tuning": {"is_allowed_to_fine_tune": True, "state": {}, "verification_failures": []},
        "labels": labels,
        "description": description,
        "preview_url": f"https://storage.googleapis.com/eleven-public-prod/premade/voices/{voice_id}/preview.mp3",
        "available_for_tiers": [],
        "settings": None,
        "sharing": None,
        "high_quality_base_model_ids": ["eleven_v2_flash", "eleven_flash_v2", "eleven_turbo_v2_5"],
        "verified_languages": [
            {"language": "en", "model_id": "eleven_multilingual_v2", "accent": labels.get("accent")}
        ],
        "collection_ids": [],
        "safety_control": None,
        "voice_verification": {"requires_verification": False, "is_verified": False},
        "permission_on_resource": None,
        "is_owner": False,
        "is_legacy": False,
        "is_mixed": False,
        "created_at_unix": None,
    }


# ---- the fake -------------------------------------------------------------------------------------


class FakeElevenLabs:
    """Fake ElevenLabs API server.  All state is plain attributes; tests may read and change it."""

    def __init__(self, api_key: str = "el_test_key") -> None:
        self.api_key = api_key
        self.url = ""
        self.max_voices: int = 30
        self.max_text_length: int = 5000
        self.voices: dict[str, dict[str, Any]] = {
            RACHEL_VOICE_ID: _premade(
                RACHEL_VOICE_ID,
                "Rachel",
                {"accent": "american", "descriptive": "calm", "age": "young", "gender": "female",
                 "language": "en", "use_case": "narration"},
                "Matter-of-fact, personable woman. Great for narration.",
            ),
            ADAM_VOICE_ID: _premade(
                ADAM_VOICE_ID,
                "Adam",
                {"accent": "american", "descriptive": "deep", "age": "middle_aged", "gender": "male",
                 "language": "en", "use_case": "social_media"},
                "A bright tenor with a confident tone.",
            ),
        }  # fmt: skip
        self.tts_requests: list[dict[str, Any]] = []
        self.clone_requests: list[dict[str, Any]] = []
        self.deleted_voices: list[str] = []
        self.request_log: list[tuple[str, str]] = []  # (method, path with query), every request
        self._failures: dict[str, deque[ApiError]] = {"tts": deque(), "clone": deque(), "delete": deque()}
        self._clone_counter = 0
        self._runner: web.AppRunner | None = None

    # ---- lifecycle ----
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=100 * 1024 * 1024)
        app.router.add_post("/v1/text-to-speech/{voice_id}", self._tts)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts)
        app.router.add_post("/v1/voices/add", self._clone)
        app.router.add_get("/v1/voices", self._list_v1)
        app.router.add_get("/v2/voices", self._list_v2)
        app.router.add_get("/v1/voices/{voice_id}", self._get_voice)
        app.router.add_delete("/v1/voices/{voice_id}", self._delete_voice)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeElevenLabs:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- controls ----
    def fail_next(self, endpoint: Endpoint, error: ApiError, times: int = 1) -> None:
        """Answer the next ``times`` authenticated requests to ``endpoint`` with ``error``.

        Each HTTP attempt consumes one, including the SDK's own automatic retries (clone/delete
        retry on 429 and 5xx unless ``request_options={"max_retries": 0}``).
        """
        if endpoint not in self._failures:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self._failures[endpoint].extend([error] * times)

    def audio_bytes(self, output_format: str) -> bytes:
        """The exact bytes a successful TTS request with this output format streams back."""
        codec, _, rest = output_format.partition("_")
        parts = rest.split("_")
        if output_format not in OUTPUT_FORMATS and codec not in (*_CONTENT_TYPES, "ogg"):
            raise ValueError(f"unknown output format {output_format!r}")
        if codec == "opus" or output_format == "ogg":
            return _ogg_opus(int(parts[0]) if parts[0].isdigit() else 48000)
        if codec == "mp3":
            return _mp3(int(parts[0]), int(parts[1]))
        rate = int(parts[0])
        if codec == "ulaw":
            return b"\xff" * (rate // 2)
        if codec == "alaw":
            return b"\xd5" * (rate // 2)
        pcm = b"\x00\x00" * (rate // 2)
        return _wav(rate, pcm) if codec == "wav" else pcm

    @property
    def cloned_voice_ids(self) -> list[str]:
        return [v for v, d in self.voices.items() if d.get("category") != "premade"]

    # ---- plumbing ----
    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            text=json.dumps(body), status=status, content_type="application/json", headers=headers
        )

    def _error(self, error: ApiError) -> web.Response:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
        return self._json(error.body(), error.status, headers)

    def _injected(self, endpoint: Endpoint) -> ApiError | None:
        queue = self._failures[endpoint]
        return queue.popleft() if queue else None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.request_log.append((request.method, request.path_qs))
        route_error = request.match_info.http_exception
        if route_error is not None:  # FastAPI's bodies for unknown paths / methods
            return self._json({"detail": route_error.reason}, route_error.status)
        if request.headers.get("xi-api-key") != self.api_key:
            return self._error(ApiError.invalid_api_key())
        try:
            response: web.StreamResponse = await handler(request)
        except _Validation as e:
            return self._json({"detail": e.errors}, 422)
        return response

    # ---- text to speech ----
    async def _tts(self, request: web.Request) -> web.StreamResponse:
        voice_id = request.match_info["voice_id"]
        output_format = request.query.get("output_format", DEFAULT_OUTPUT_FORMAT)
        record: dict[str, Any] = {
            "voice_id": voice_id,
            "text": None,
            "model_id": None,
            "output_format": output_format,
            "stream_endpoint": request.path.endswith("/stream"),
            "query": dict(request.query),
            "body": None,
            "status": None,
        }
        self.tts_requests.append(record)

        def answer(resp: web.Response) -> web.Response:
            record["status"] = resp.status
            return resp

        injected = self._injected("tts")
        if injected is not None:
            return answer(self._error(injected))
        try:
            body = await request.json()
        except ValueError:
            return answer(
                self._json(
                    {"detail": [{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error"}]},
                    422,
                )
            )
        if not isinstance(body, dict):
            return answer(
                self._json(
                    {"detail": [{"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be "
                                 "a valid dictionary or object to extract fields from"}]},
                    422,
                )
            )  # fmt: skip
        record["body"] = body
        record["text"] = body.get("text")
        record["model_id"] = body.get("model_id")
        for key in ("voice_settings", "language_code", "seed", "previous_text", "next_text"):
            record[key] = body.get(key)
        errors = []
        if not isinstance(body.get("text"), str):
            errors.append(_missing("body", "text"))
        if output_format not in OUTPUT_FORMATS:
            allowed = ", ".join(f"'{f}'" for f in OUTPUT_FORMATS)
            errors.append(
                {
                    "type": "enum",
                    "loc": ["query", "output_format"],
                    "msg": f"Input should be {allowed}",
                    "input": output_format,
                }
            )
        if errors:
            return answer(self._json({"detail": errors}, 422))
        if voice_id not in self.voices:
            return answer(self._error(ApiError.voice_not_found(voice_id)))
        text: str = body["text"]
        if len(text) > self.max_text_length:
            return answer(
                self._error(
                    ApiError(
                        400,
                        "max_character_limit_exceeded",
                        f"This request's text has {len(text)} characters and exceeds the character "
                        f"limit of {self.max_text_length} characters.",
                    )
                )
            )
        audio = self.audio_bytes(output_format)
        record["status"] = 200
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": _CONTENT_TYPES[output_format.split("_")[0]],
                "request-id": hashlib.sha1(
                    f"{len(self.tts_requests)}".encode(), usedforsecurity=False
                ).hexdigest()[:20],
                "character-cost": str(len(text)),
                "history-item-id": _voice_id(f"history:{len(self.tts_requests)}"),
            },
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(audio), 4096):
            await response.write(audio[i : i + 4096])
        await response.write_eof()
        return response

    # ---- voices ----
    async def _clone(self, request: web.Request) -> web.Response:
        form = await request.post()
        files: list[tuple[str, str, bytes]] = []
        bad_files: list[int] = []
        for i, part in enumerate(form.getall("files", [])):
            if isinstance(part, FileField):
                files.append((part.filename, part.content_type, part.file.read()))
            else:
                bad_files.append(i)
        name = form.get("name")
        rbn = form.get("remove_background_noise")
        raw_labels = form.get("labels")
        labels: Any = None
        if isinstance(raw_labels, str):
            try:
                labels = json.loads(raw_labels)
            except ValueError:
                labels = raw_labels
        description = form.get("description")
        record: dict[str, Any] = {
            "name": name if isinstance(name, str) else None,
            "files": files,
            "remove_background_noise": None if rbn is None else str(rbn).lower() == "true",
            "description": description if isinstance(description, str) else None,
            "labels": labels,
            "fields": {k: v for k, v in form.items() if not isinstance(v, FileField)},
            "voice_id": None,
            "status": None,
        }
        self.clone_requests.append(record)

        def answer(resp: web.Response) -> web.Response:
            record["status"] = resp.status
            return resp

        injected = self._injected("clone")
        if injected is not None:
            return answer(self._error(injected))
        errors: list[dict[str, Any]] = []
        if not isinstance(name, str):
            errors.append(_missing("body", "name"))
        if not files and not bad_files:
            errors.append(_missing("body", "files"))
        for i in bad_files:
            errors.append(
                {
                    "loc": ["body", "files", i],
                    "msg": "Expected UploadFile, received: <class 'str'>",
                    "type": "value_error",
                }
            )
        if errors:
            return answer(self._json({"detail": errors}, 422))
        for _filename, _ctype, content in files:
            if not _looks_like_audio(content):
                return answer(
                    self._error(
                        ApiError(
                            400,
                            "invalid_content",
                            "File upload is corrupted. Please ensure it is playable audio.",
                        )
                    )
                )
        used = len(self.cloned_voice_ids)
        if used >= self.max_voices:
            return answer(self._error(ApiError.voice_limit_reached(used, self.max_voices)))

        self._clone_counter += 1
        voice_id = _voice_id(f"clone:{self._clone_counter}:{record['name']}")
        self.voices[voice_id] = {
            "voice_id": voice_id,
            "name": name,
            "samples": [
                {
                    "sample_id": _voice_id(f"sample:{voice_id}:{i}"),
                    "file_name": filename,
                    "mime_type": ctype,
                    "size_bytes": len(content),
                    "hash": hashlib.md5(content, usedforsecurity=False).hexdigest(),
                    "remove_background_noise": bool(record["remove_background_noise"]),
                }
                for i, (filename, ctype, content) in enumerate(files)
            ],
            "category": "cloned",
            "fine_tuning": {"is_allowed_to_fine_tune": True, "state": {}, "verification_failures": []},
            "labels": labels if isinstance(labels, dict) else {},
            "description": record["description"],
            "preview_url": None,
            "available_for_tiers": [],
            "settings": None,
            "sharing": None,
            "high_quality_base_model_ids": [],
            "verified_languages": [],
            "collection_ids": [],
            "safety_control": None,
            "voice_verification": {"requires_verification": False, "is_verified": False},
            "permission_on_resource": "admin",
            "is_owner": True,
            "is_legacy": False,
            "is_mixed": False,
            "created_at_unix": int(time.time()),
        }
        record["voice_id"] = voice_id
        return answer(self._json({"voice_id": voice_id, "requires_verification": False}))

    async def _delete_voice(self, request: web.Request) -> web.Response:
        voice_id = request.match_info["voice_id"]
        injected = self._injected("delete")
        if injected is not None:
            return self._error(injected)
        if voice_id not in self.voices:
            return self._error(ApiError.voice_not_found(voice_id))
        del self.voices[voice_id]
        self.deleted_voices.append(voice_id)
        return self._json({"status": "ok"})

    async def _get_voice(self, request: web.Request) -> web.Response:
        voice_id = request.match_info["voice_id"]
        if voice_id not in self.voices:
            return self._error(ApiError.voice_not_found(voice_id))
        return self._json(self.voices[voice_id])

    async def _list_v1(self, request: web.Request) -> web.Response:
        return self._json({"voices": list(self.voices.values())})

    async def _list_v2(self, request: web.Request) -> web.Response:
        q = request.query
        voices = list(self.voices.values())
        if search := q.get("search"):
            s = search.lower()
            voices = [
                v
                for v in voices
                if s in str(v.get("name", "")).lower() or s in str(v.get("description") or "").lower()
            ]
        if category := q.get("category"):
            voices = [v for v in voices if v.get("category") == category]
        voice_type = q.get("voice_type")
        if voice_type == "default":
            voices = [v for v in voices if v.get("category") == "premade"]
        elif voice_type in ("personal", "non-default", "workspace"):
            voices = [v for v in voices if v.get("category") != "premade"]
        if voice_ids := q.getall("voice_ids", []):
            voices = [v for v in voices if v["voice_id"] in voice_ids]
        if q.get("sort") == "name":
            voices.sort(key=lambda v: str(v.get("name", "")), reverse=q.get("sort_direction") == "desc")
        try:
            page_size = min(max(int(q.get("page_size", "10")), 1), 100)
            offset = int(q.get("next_page_token") or 0)
        except ValueError:
            raise _Validation(
                {
                    "type": "int_parsing",
                    "loc": ["query", "page_size"],
                    "msg": "Input should be a valid integer",
                }
            ) from None
        page = voices[offset : offset + page_size]
        has_more = offset + page_size < len(voices)
        return self._json(
            {
                "voices": page,
                "has_more": has_more,
                "total_count": len(voices),
                "next_page_token": str(offset + page_size) if has_more else None,
            }
        )
