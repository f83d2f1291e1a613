"""One request schema per kind (the seed's fields plus the kind's own) and their validation.

Validation happens here, before anything is recorded or charged: a request that fails it costs nothing
and reaches no provider (SPEC §4.6). Problems come back as codes with fields, so the bot can say them
in the user's language and the HTTP API can list them in a 422.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from generation.catalog import MAX_PROMPT, Catalog, CatalogModel, Kind
from generation.texts import text

# Telegram user and chat ids have at most 52 significant bits (a chat's may be negative: groups): the
# bound keeps any other number out of the database's 64-bit columns.
MAX_TELEGRAM_ID = 2**52 - 1
MAX_IMAGES = 4


class GenerationRequest(BaseModel):
    """The seed's fields, common to every kind.

    Numbers and flags are strict: `true` or "5" is no Telegram id, and a client that sends one is
    told so rather than charging user 1 or 5."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    telegram_id: int = Field(gt=0, le=MAX_TELEGRAM_ID, strict=True)
    username: str | None = Field(default=None, max_length=64)
    is_ru: bool = Field(default=False, strict=True)
    bot_name: str | None = Field(default=None, max_length=64)
    chat_id: int | None = Field(default=None, ge=-MAX_TELEGRAM_ID, le=MAX_TELEGRAM_ID, strict=True)
    model: str | None = Field(default=None, max_length=128)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # PostgreSQL's text holds no NUL character: refused here, not by a failing INSERT.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain the NUL character")
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def request_fingerprint(self) -> str:
        """A digest of the request as validated, kept in the stored request (its dump): a repeat under
        the same Idempotency-Key must be this same request (SPEC §4.6). Taken before the kind's
        preparer completes the stored request, so it is the client's request, not the user's state."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        canonical = json.dumps([type(self).__name__, fields], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def language(self) -> str:
        return "ru" if self.is_ru else "en"

    @property
    def target_chat(self) -> int:
        return self.chat_id if self.chat_id is not None else self.telegram_id

    def units(self) -> int:
        """How many things the user pays for: images for image kinds, else one."""
        return 1


class PromptRequest(GenerationRequest):
    prompt: str = Field(max_length=MAX_PROMPT * 4)  # the real limit is the model's, checked below


class TextToImageRequest(PromptRequest):
    # The range is checked in validate_request, with the model's own limit and a message of its own;
    # the schema states it for clients.
    num_images: int = Field(default=1, strict=True, json_schema_extra={"minimum": 1, "maximum": MAX_IMAGES})

    def units(self) -> int:
        return self.num_images


class NeuroPhotoRequest(TextToImageRequest):
    pass


class TextToVideoRequest(PromptRequest):
    """The length of the video is the model's (its catalogue entry): pick a model to pick it."""


URL = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")]
FILE_ID = Annotated[str, Field(min_length=1, max_length=256)]


def _exactly_one(request: BaseModel, name: str) -> None:
    """A file comes as `<name>_url` (HTTP clients) or `<name>_file_id` (sent in Telegram), not both."""
    given = [field for field in (f"{name}_url", f"{name}_file_id") if getattr(request, field)]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {name}_url or {name}_file_id")


class ImageToVideoRequest(PromptRequest):
    image_url: URL | None = None
    image_file_id: FILE_ID | None = None

    @model_validator(mode="after")
    def _one_image(self) -> ImageToVideoRequest:
        _exactly_one(self, "image")
        return self


class TextToSpeechRequest(GenerationRequest):
    text: str = Field(max_length=50_000)
    voice_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9]+$")


class VoiceAvatarRequest(GenerationRequest):
    audio_url: URL | None = None
    audio_file_id: FILE_ID | None = None
    audio_mime_type: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _one_audio(self) -> VoiceAvatarRequest:
        _exactly_one(self, "audio")
        return self


class ModelTrainingRequest(GenerationRequest):
    zip_url: URL | None = None
    zip_file_id: FILE_ID | None = None
    trigger_word: str = Field(min_length=2, max_length=32, pattern=r"^[A-Za-z0-9_]+$")

    @model_validator(mode="after")
    def _one_zip(self) -> ModelTrainingRequest:
        _exactly_one(self, "zip")
        return self


REQUEST_TYPES: dict[Kind, type[GenerationRequest]] = {
    Kind.text_to_image: TextToImageRequest,
    Kind.neuro_photo: NeuroPhotoRequest,
    Kind.text_to_video: TextToVideoRequest,
    Kind.image_to_video: ImageToVideoRequest,
    Kind.text_to_speech: TextToSpeechRequest,
    Kind.voice_avatar: VoiceAvatarRequest,
    Kind.model_training: ModelTrainingRequest,
}


@dataclass(frozen=True)
class Problem:
    field: str
    code: str  # a texts.toml key: problem_<code>
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def message(self, language: str) -> str:
        return text(f"problem_{self.code}", language, **self.params)

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "code": self.code, "message": self.message("en")}


class InvalidRequest(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{problem.field}: {problem.message('en')}" for problem in problems))
        self.problems = problems


@dataclass(frozen=True)
class ValidRequest:
    kind: Kind
    request: GenerationRequest
    model: CatalogModel

    @property
    def price(self) -> int:
        return self.model.price * self.request.units()


def validate_request(
    kind: Kind, data: dict[str, Any], catalog: Catalog, known_bots: set[str]
) -> ValidRequest:
    """Check a request against its schema, the catalogue and the configured bots; raise InvalidRequest
    with every problem found."""
    try:
        request = REQUEST_TYPES[kind].model_validate(data)
    except ValidationError as error:
        raise InvalidRequest([_problem_from_pydantic(item) for item in error.errors()]) from None

    problems: list[Problem] = []
    if request.bot_name is not None and request.bot_name not in known_bots:
        problems.append(Problem("bot_name", "unknown_bot", {"bot": request.bot_name}))

    model = catalog.get(request.model) if request.model else catalog.default_for(kind)
    if model is None or model.kind is not kind:
        available = ", ".join(m.id for m in catalog.for_kind(kind)) or "-"
        problems.append(Problem("model", "unknown_model", {"model": request.model, "available": available}))
        raise InvalidRequest(problems)

    # A prompt, or a text to speak: present, and within the model's own limit.
    for field, limit in (("prompt", model.max_prompt), ("text", model.max_text)):
        value = getattr(request, field, None)
        if value is None:
            continue
        if not value:
            problems.append(Problem(field, f"{field}_empty"))
        elif len(value) > limit:
            problems.append(Problem(field, f"{field}_too_long", {"limit": limit, "length": len(value)}))
    if isinstance(request, TextToImageRequest):
        if not 1 <= request.num_images <= MAX_IMAGES:
            problems.append(Problem("num_images", "num_images", {"max": MAX_IMAGES}))
        elif request.num_images > model.max_images:
            problems.append(
                Problem("num_images", "model_images", {"model": model.title, "max": model.max_images})
            )
    if problems:
        raise InvalidRequest(problems)
    return ValidRequest(kind=kind, request=request.model_copy(update={"model": model.id}), model=model)


def _problem_from_pydantic(item: Any) -> Problem:
    location = ".".join(str(part) for part in item["loc"]) or "body"
    if item["type"] == "missing":
        return Problem(location, "missing")
    if item["type"] == "value_error":
        return Problem(location, "invalid", {"detail": str(item["msg"]).removeprefix("Value error, ")})
    if location == "prompt" and item["type"] == "string_too_long":
        return Problem("prompt", "prompt_too_long", {"limit": MAX_PROMPT, "length": len(item["input"])})
    return Problem(location, "invalid", {"detail": item["msg"]})
