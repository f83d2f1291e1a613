"""User-visible texts in English and Russian: every generation/texts/*.toml file, one per feature."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

TEXTS_DIR = Path(__file__).with_name("texts")
LANGUAGES = ("en", "ru")


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


def language_from_code(language_code: str | None) -> str:
    """Telegram's language_code at first contact: ru* is Russian, anything else English."""
    return "ru" if (language_code or "").lower().startswith("ru") else "en"


def all_keys() -> dict[str, dict[str, str]]:
    return _texts()
