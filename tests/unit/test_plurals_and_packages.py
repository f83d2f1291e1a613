"""Plural forms (Russian has three) and the top-up packages of the catalogue."""

import pytest

from generation.catalog import Catalog, load_catalog
from generation.texts import PLURAL_FORMS, count_of, plural_nouns


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0 изображений"),
        (1, "1 изображение"),
        (2, "2 изображения"),
        (4, "4 изображения"),
        (5, "5 изображений"),
        (11, "11 изображений"),
        (12, "12 изображений"),
        (14, "14 изображений"),
        (21, "21 изображение"),
        (22, "22 изображения"),
        (25, "25 изображений"),
        (101, "101 изображение"),
        (111, "111 изображений"),
    ],
)
def test_russian_has_three_forms(count: int, expected: str) -> None:
    assert count_of(count, "image", "ru") == expected


def test_english_has_two_forms() -> None:
    assert count_of(1, "star", "en") == "1 star"
    assert count_of(0, "star", "en") == "0 stars"
    assert count_of(21, "star", "en") == "21 stars"


def test_every_noun_has_every_form_in_both_languages() -> None:
    for noun, forms in plural_nouns().items():
        assert set(forms) == set(PLURAL_FORMS), noun
        for language, count in PLURAL_FORMS.items():
            assert len(forms[language]) == count, (noun, language)
            assert all(form.strip() for form in forms[language]), (noun, language)


def test_catalogue_sells_packages_in_order() -> None:
    packages = list(load_catalog().packages.values())
    assert [package.stars for package in packages] == [100, 500, 1000, 5000]
    assert all(1 <= package.price <= 10000 for package in packages)


def test_a_bad_package_is_reported() -> None:
    with pytest.raises(ValueError, match="package 'x'"):
        Catalog.from_toml("[packages.x]\nstars = 10\n")
    with pytest.raises(ValueError, match="price of 1-10000"):
        Catalog.from_toml("[packages.x]\nstars = 10\nprice = 20000\n")
