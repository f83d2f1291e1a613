"""Numbers typed after a command (/image 2 …, /grant <id> <stars>, /user <id>) or carried in a button's
data, read strictly: nothing a user types may crash a handler or reach the database out of range.

Only the ASCII digits 0-9 make a number. str.isdigit() also takes '²' (which int() then refuses) and
str.isdecimal() takes '١٢' (which int() reads): both were ways to crash a handler or to slip a number
past what the reply shows. The digits are bounded before int() sees them (Python refuses to convert more
than 4300 digits), and so is the value (the database's BIGINT ends at 2**63 - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

# Telegram ids and anything stored in a BIGINT column.
BIGINT_MAX = 2**63 - 1
# Written around or between the digits of what was meant as a number: signs (ASCII, the Unicode minus,
# a phone keyboard's dash) and decimal or thousands separators.
NUMBER_MARKS = "+-\u2212\u2013.,"


def whole_number(word: str, *, minimum: int, maximum: int) -> int | None:
    """The number `word` writes in ASCII digits, if it is one from `minimum` to `maximum`; else None."""
    if not word or not (word.isascii() and word.isdigit()):
        return None
    significant = word.lstrip("0") or "0"
    if len(significant) > len(str(maximum)):
        return None
    value = int(significant)
    return value if minimum <= value <= maximum else None


def looks_like_number(word: str) -> bool:
    """Whether `word` was meant as a number, however written: '-5', '--5', '²', '١٢', '1.5', '3,000'."""
    return any(char.isnumeric() for char in word) and all(
        char.isnumeric() or char in NUMBER_MARKS for char in word
    )


@dataclass(frozen=True)
class CountedPrompt:
    count: int
    prompt: str


@dataclass(frozen=True)
class UnreadableCount:
    """A leading word meant as the count that is not one we take (not 0-9 digits, or out of range)."""

    word: str


def counted_prompt(arguments: str | None, *, maximum: int) -> CountedPrompt | UnreadableCount:
    """'/image 4 a fox' asks for 4 images. A leading number is the count only if more text follows
    ('/image 1984' draws 1984); one meant as a count but not from 1 to `maximum` in the digits 0-9 is
    refused rather than read as part of the prompt, which would charge for what was not asked."""
    text = (arguments or "").strip()
    words = text.split(maxsplit=1)
    if len(words) < 2 or not looks_like_number(words[0]):
        return CountedPrompt(1, text)
    count = whole_number(words[0], minimum=1, maximum=maximum)
    return UnreadableCount(words[0]) if count is None else CountedPrompt(count, words[1])
