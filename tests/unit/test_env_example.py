""".env.example stays complete and true: it names every setting of settings.py, nothing that is not one
(but the few values compose.yaml reads), explains each, and shows each default as it is."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_FILE = ROOT / "compose.yaml"
# One entry a line: `NAME=value`, or commented out `# NAME=value`.
ENTRY = re.compile(r"^(?:#\s?)?([A-Z][A-Z0-9_]*)=(.*)$")


def _lines() -> list[str]:
    return ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()


def _entries() -> dict[str, tuple[int, str]]:
    """Each name with its line number and its value, read as pydantic-settings reads a .env line."""
    entries: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(_lines()):
        match = ENTRY.match(line)
        if match is None:
            continue
        name = match.group(1)
        assert name not in entries, f".env.example names {name} twice"
        value = dotenv_values(stream=io.StringIO(f"{name}={match.group(2)}"))[name]
        entries[name] = (number, value or "")
    return entries


def _setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def _is_empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value == ""


def test_every_setting_is_in_env_example() -> None:
    missing = _setting_names() - set(_entries())
    assert not missing, f"add these settings to .env.example, each with a comment: {sorted(missing)}"


def test_env_example_names_only_settings_and_what_compose_reads() -> None:
    compose = COMPOSE_FILE.read_text(encoding="utf-8")
    unknown = [
        name
        for name in set(_entries()) - _setting_names()
        # A compose-only value is real when compose.yaml interpolates it: ${NAME} or ${NAME:-...}.
        if not re.search(r"\$\{" + name + r"(?=[}:?-])", compose)
    ]
    assert not unknown, f".env.example names what is neither a setting nor read by compose.yaml: {unknown}"


def test_every_entry_is_explained_by_the_comment_above_it() -> None:
    lines = _lines()
    unexplained = [
        name
        for name, (number, _) in _entries().items()
        if number == 0
        or not lines[number - 1].startswith("# ")
        or ENTRY.match(lines[number - 1])  # the line above is another entry, not its explanation
    ]
    assert not unexplained, f"give these entries a comment line right above them: {unexplained}"


@pytest.mark.parametrize("name", sorted(name.upper() for name in Settings.model_fields))
def test_a_commented_out_value_is_the_default(name: str) -> None:
    """A line left commented shows the default; where the default is empty, any example will do."""
    line_number, value = _entries()[name]
    field = name.lower()
    default = Settings.model_fields[field].get_default(call_default_factory=True)
    if _is_empty(default) or not _lines()[line_number].startswith("#"):
        return
    shown = getattr(load_settings(_env_file=None, **{field: value}), field)
    assert shown == default, f".env.example shows {name}={value!r}, but the default is {default!r}"


def test_a_copy_of_env_example_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _setting_names():  # only the file's values count here
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=ENV_EXAMPLE)
    assert settings.redis_url == Settings.model_fields["redis_url"].default
