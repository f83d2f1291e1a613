"""Numbers typed after a command: only ASCII digits, bounded; nothing typed makes the parser raise."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.telegram.arguments import (
    BIGINT_MAX,
    CountedPrompt,
    UnreadableCount,
    counted_prompt,
    looks_like_number,
    whole_number,
)

# Digits and signs of every kind, and what a number is written with: where a careless parse breaks.
NUMBERISH = st.text(
    alphabet=st.sampled_from("0123456789²³¹٠١٢٣٤٥٦٧٨٩０１２３４５６７８９½⅓-+−–.,e"), max_size=30
)
ANY_WORD = st.one_of(NUMBERISH, st.text(max_size=30))


@given(word=ANY_WORD, maximum=st.integers(min_value=0, max_value=BIGINT_MAX))
def test_whole_number_takes_ascii_digits_in_range_only(word: str, maximum: int) -> None:
    value = whole_number(word, minimum=0, maximum=maximum)
    if value is not None:
        assert word.isascii() and word.isdigit()
        assert 0 <= value <= maximum and value == int(word)


@given(value=st.integers(min_value=1, max_value=BIGINT_MAX))
def test_whole_number_reads_every_number_in_range(value: int) -> None:
    assert whole_number(str(value), minimum=1, maximum=BIGINT_MAX) == value
    assert whole_number("00" + str(value), minimum=1, maximum=BIGINT_MAX) == value


def test_whole_number_refuses_what_isdigit_or_int_would_take() -> None:
    for word in ("²", "١٢", "１２", "-5", "--5", "+5", " 5", "5 ", "1.5", "3,000", ""):
        assert whole_number(word, minimum=0, maximum=BIGINT_MAX) is None, word
    assert whole_number("9" * 5000, minimum=0, maximum=BIGINT_MAX) is None  # int() would raise
    assert whole_number("0" * 5000 + "7", minimum=0, maximum=10) == 7
    assert whole_number(str(BIGINT_MAX + 1), minimum=0, maximum=BIGINT_MAX) is None
    assert whole_number("0", minimum=1, maximum=10) is None


@given(arguments=st.one_of(st.none(), st.text(max_size=60), st.tuples(NUMBERISH, st.text()).map(" ".join)))
def test_counted_prompt_never_raises_and_counts_only_in_range(arguments: str | None) -> None:
    asked = counted_prompt(arguments, maximum=4)
    if isinstance(asked, CountedPrompt):
        assert 1 <= asked.count <= 4
    else:
        assert looks_like_number(asked.word)


def test_counted_prompt_refuses_a_count_it_cannot_take() -> None:
    assert counted_prompt("3 foxes", maximum=4) == CountedPrompt(3, "foxes")
    assert counted_prompt("1984", maximum=4) == CountedPrompt(1, "1984")  # a prompt, not a count
    assert counted_prompt("a 3 fox", maximum=4) == CountedPrompt(1, "a 3 fox")
    assert counted_prompt(None, maximum=4) == CountedPrompt(1, "")
    for word in ("--5", "-5", "²", "٣", "7", "0", "1.5", "9" * 5000):
        assert counted_prompt(f"{word} cat", maximum=4) == UnreadableCount(word), word
