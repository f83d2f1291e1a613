"""The model catalogue (generation/catalog.toml): models, prices and the provider input mapping."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("catalog.toml")
MAX_PROMPT = 2000
# The longest a create may ask Replicate to hold its answer (`Prefer: wait`), in seconds.
MAX_WAIT = 60
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")
# Demo mode makes audio with the standard library, which writes WAV only (providers/demo/media.py).
DEMO_AUDIO_FORMAT = "wav_22050"
# The setting whose key takes a provider out of demo mode, named to the user in a demo result.
PROVIDER_KEYS = {"replicate": "REPLICATE_API_TOKEN", "elevenlabs": "ELEVENLABS_API_KEY"}


class Kind(StrEnum):
    text_to_image = "text_to_image"
    neuro_photo = "neuro_photo"
    text_to_video = "text_to_video"
    image_to_video = "image_to_video"
    text_to_speech = "text_to_speech"
    voice_avatar = "voice_avatar"
    model_training = "model_training"

    @property
    def slug(self) -> str:
        """The kebab-case name used in HTTP paths."""
        return self.value.replace("_", "-")

    @classmethod
    def from_slug(cls, slug: str) -> Kind | None:
        try:
            return cls(slug.replace("-", "_"))
        except ValueError:
            return None


@dataclass(frozen=True)
class CatalogModel:
    id: str
    kind: Kind
    provider: str
    title: str
    ref: str
    price: int
    input: dict[str, Any]
    max_prompt: int = MAX_PROMPT
    max_images: int = 1
    max_text: int = 5000
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # Run by the demo provider (its provider has no key): free, and its results say they are demos.
    demo: bool = False
    # Seconds Replicate may hold a create's answer for the prediction to finish (`Prefer: wait`): for
    # a model that takes seconds, its result comes with the create, with no poll and no poll's delay.
    wait: int = 0

    def build_input(self, request: dict[str, Any]) -> dict[str, Any]:
        """The provider's input for a request: placeholders take the request's values, typed as they are."""
        built: dict[str, Any] = {}
        for name, template in self.input.items():
            match = _PLACEHOLDER.match(template) if isinstance(template, str) else None
            if match is None:
                built[name] = template
            elif request.get(match.group(1)) is not None:
                built[name] = request[match.group(1)]
        return built


@dataclass(frozen=True)
class TopUpPackage:
    """Stars a user can buy: `stars` reach the balance, `price` is paid in Telegram Stars (XTR)."""

    id: str
    stars: int
    price: int


class Catalog:
    def __init__(self, models: list[CatalogModel], packages: list[TopUpPackage] | None = None) -> None:
        self.models = {model.id: model for model in models}
        self.packages = {package.id: package for package in packages or []}
        self.demo_providers: frozenset[str] = frozenset()
        for kind in Kind:
            defaults = [model.id for model in models if model.kind is kind and model.default]
            if len(defaults) > 1:
                raise ValueError(f"catalogue: kind {kind} has several defaults: {defaults}")

    def in_demo(self, providers: Iterable[str]) -> Catalog:
        """This catalogue with the models of `providers` (those without a key) run in demo mode: the
        one rule that makes a demo result cost nothing, as every price is read from here. Audio is
        asked for as WAV, the format the demo makes."""
        demo = frozenset(providers)
        models = []
        for model in self.models.values():
            if model.provider in demo:
                extra = dict(model.extra)
                if "output_format" in extra:
                    extra["output_format"] = DEMO_AUDIO_FORMAT
                model = replace(model, price=0, demo=True, extra=extra)
            models.append(model)
        catalog = Catalog(models, list(self.packages.values()))
        catalog.demo_providers = demo
        return catalog

    def get(self, model_id: str) -> CatalogModel | None:
        return self.models.get(model_id)

    def provider_of(self, model_id: str) -> str:
        """The provider a generation of this model calls ("unknown" for a model since removed)."""
        model = self.models.get(model_id)
        return model.provider if model is not None else "unknown"

    def package(self, package_id: str) -> TopUpPackage | None:
        return self.packages.get(package_id)

    def for_kind(self, kind: Kind) -> list[CatalogModel]:
        return [model for model in self.models.values() if model.kind is kind]

    def default_for(self, kind: Kind) -> CatalogModel | None:
        candidates = self.for_kind(kind)
        return next((model for model in candidates if model.default), candidates[0] if candidates else None)

    @classmethod
    def from_toml(cls, text: str) -> Catalog:
        data = tomllib.loads(text)
        models = []
        known = {
            "kind",
            "provider",
            "title",
            "ref",
            "price",
            "input",
            "max_prompt",
            "max_images",
            "max_text",
            "default",
            "wait",
        }
        for model_id, entry in data.get("models", {}).items():
            try:
                kind = Kind(entry["kind"])
                price = int(entry["price"])
                max_prompt = int(entry.get("max_prompt", MAX_PROMPT))
                wait = int(entry.get("wait", 0))
            except (KeyError, ValueError) as error:
                raise ValueError(f"catalogue: model {model_id!r} is incomplete or wrong: {error}") from None
            if price < 0 or not 1 <= max_prompt <= MAX_PROMPT:
                raise ValueError(f"catalogue: model {model_id!r} has a bad price or max_prompt")
            if not 0 <= wait <= MAX_WAIT:
                raise ValueError(f"catalogue: model {model_id!r} has a wait outside 0-{MAX_WAIT} seconds")
            models.append(
                CatalogModel(
                    id=model_id,
                    kind=kind,
                    provider=entry["provider"],
                    title=entry.get("title", model_id),
                    ref=entry["ref"],
                    price=price,
                    input=dict(entry.get("input", {})),
                    max_prompt=max_prompt,
                    max_images=int(entry.get("max_images", 1)),
                    max_text=int(entry.get("max_text", 5000)),
                    default=bool(entry.get("default", False)),
                    wait=wait,
                    extra={key: value for key, value in entry.items() if key not in known},
                )
            )
        return cls(models, _packages(data.get("packages", {})))


def _packages(entries: dict[str, Any]) -> list[TopUpPackage]:
    packages = []
    for package_id, entry in entries.items():
        try:
            package = TopUpPackage(id=package_id, stars=int(entry["stars"]), price=int(entry["price"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"catalogue: package {package_id!r} is incomplete or wrong: {error}") from None
        # Telegram takes 1 to 10,000 Stars for one invoice.
        if package.stars <= 0 or not 1 <= package.price <= 10000 or len(package_id) > 64:
            raise ValueError(f"catalogue: package {package_id!r} needs stars > 0 and a price of 1-10000")
        packages.append(package)
    return packages


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    return Catalog.from_toml(CATALOG_PATH.read_text(encoding="utf-8"))
