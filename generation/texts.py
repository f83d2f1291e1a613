"""User-visible texts in English and Russian (generation/texts.toml)."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

TEXTS_PATH = Path(__file__).with_name("texts.toml")
LANGUAGES = ("en", "ru")


@lru_cache(maxsize=1)
def _texts() -> dict[str, dict[str, str]]:
    return tomllib.loads(TEXTS_PATH.read_text(encoding="utf-8"))


def text(key: str, language: str, /, **fields: Any) -> str:
    entry = _texts()[key]
    template = entry.get(language) or entry["en"]
    return template.format(**fields)


def language_from_code(language_code: str | None) -> str:
    """Telegram's language_code at first contact: ru* is Russian, anything else English."""
    return "ru" if (language_code or "").lower().startswith("ru") else "en"


def all_keys() -> dict[str, dict[str, str]]:
    return _texts()
