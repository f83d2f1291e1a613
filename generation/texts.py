"""User-visible texts in English and Russian: every generation/texts/*.toml file, one per feature."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

TEXTS_DIR = Path(__file__).with_name("texts")
PLURALS_PATH = Path(__file__).with_name("plurals.toml")
LANGUAGES = ("en", "ru")
# How many plural forms each language has (the order of forms in plurals.toml).
PLURAL_FORMS = {"en": 2, "ru": 3}


@lru_cache(maxsize=1)
def _texts() -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for path in sorted(TEXTS_DIR.glob("*.toml")):
        for key, entry in tomllib.loads(path.read_text(encoding="utf-8")).items():
            if key in merged:
                raise ValueError(f"text {key!r} is defined twice (again in {path.name})")
            merged[key] = entry
    return merged


def text(key: str, language: str, /, **fields: Any) -> str:
    entry = _texts()[key]
    template = entry.get(language) or entry["en"]
    return template.format(**fields)


@lru_cache(maxsize=1)
def plural_nouns() -> dict[str, dict[str, list[str]]]:
    loaded: dict[str, dict[str, list[str]]] = tomllib.loads(PLURALS_PATH.read_text(encoding="utf-8"))
    return loaded


def plural_form(count: int, language: str) -> int:
    """Which of a language's plural forms a number takes (CLDR's rules for integers)."""
    count = abs(count)
    if language == "ru":
        if count % 10 == 1 and count % 100 != 11:
            return 0  # one: 1, 21, 101
        if 2 <= count % 10 <= 4 and not 12 <= count % 100 <= 14:
            return 1  # few: 2-4, 22-24
        return 2  # many: 0, 5-20, 11-14, 25-30
    return 0 if count == 1 else 1


def count_of(count: int, noun: str, language: str) -> str:
    """A number with its noun in the right form: "1 image", "3 images", "5 изображений"."""
    forms = plural_nouns()[noun]
    chosen = forms.get(language) or forms["en"]
    form = plural_form(count, language if language in forms else "en")
    return f"{count} {chosen[form]}"


def language_from_code(language_code: str | None) -> str:
    """Telegram's language_code at first contact: ru* is Russian, anything else English."""
    return "ru" if (language_code or "").lower().startswith("ru") else "en"


def all_keys() -> dict[str, dict[str, str]]:
    return _texts()
