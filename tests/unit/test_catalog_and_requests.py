import re

import pytest

from generation.catalog import Catalog, Kind, load_catalog
from generation.requests import REQUEST_TYPES, InvalidRequest, validate_request
from generation.texts import LANGUAGES, all_keys, language_from_code, text

BOTS = {"main"}


def seed(**fields: object) -> dict[str, object]:
    return {"telegram_id": 42, "bot_name": "main", **fields}


def problem_codes(error: InvalidRequest) -> list[str]:
    return [problem.code for problem in error.problems]


def test_catalogue_has_a_default_image_model_and_prices() -> None:
    catalog = load_catalog()
    default = catalog.default_for(Kind.text_to_image)
    assert default is not None and default.price > 0
    assert all(model.price >= 0 for model in catalog.models.values())


def test_every_kind_has_a_request_schema() -> None:
    assert set(REQUEST_TYPES) == set(Kind)


def test_every_kind_is_declared_once_with_a_pipeline() -> None:
    from generation.kinds import images, lora, speech, video
    from generation.registry import SPECS

    declared = [spec.kind for module in (images, video, speech, lora) for spec in module.SPECS]
    assert sorted(declared) == sorted(Kind)  # each kind once, none missing
    assert all(callable(spec.pipeline) for spec in SPECS.values())
    # Every kind that starts a paid provider job can stop it when the user cancels.
    assert {kind for kind, spec in SPECS.items() if spec.cancel is None} == {Kind.text_to_speech}


def test_input_mapping_keeps_types_and_constants() -> None:
    model = load_catalog().get("flux-schnell")
    assert model is not None
    built = model.build_input({"prompt": "a fox", "num_images": 3})
    assert built["prompt"] == "a fox"
    assert built["num_outputs"] == 3
    assert built["aspect_ratio"] == "1:1"


def test_a_valid_request_names_its_model_and_price() -> None:
    valid = validate_request(Kind.text_to_image, seed(prompt="a fox", num_images=4), load_catalog(), BOTS)
    assert valid.request.model == "flux-schnell"
    assert valid.price == 4 * valid.model.price


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"prompt": ""}, "prompt_empty"),
        ({"prompt": "   "}, "prompt_empty"),
        ({"prompt": "x" * 2001}, "prompt_too_long"),
        ({"prompt": "x" * 9000}, "prompt_too_long"),
        ({"prompt": "fox", "num_images": 0}, "num_images"),
        ({"prompt": "fox", "num_images": 5}, "num_images"),
        ({"prompt": "fox", "model": "nope"}, "unknown_model"),
        ({"prompt": "fox", "model": "flux-1-1-pro", "num_images": 2}, "model_images"),
        ({"prompt": "fox", "bot_name": "ghost"}, "unknown_bot"),
        ({}, "missing"),
        ({"prompt": "fox", "surprise": 1}, "invalid"),
    ],
)
def test_bad_input_is_refused_with_a_reason(fields: dict[str, object], code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(Kind.text_to_image, seed(**fields), load_catalog(), BOTS)
    assert code in problem_codes(caught.value)
    for problem in caught.value.problems:
        assert problem.message("en") and problem.message("ru")


def test_prompt_limit_is_the_models_own() -> None:
    catalog = Catalog.from_toml(
        """
        [models.tiny]
        kind = "text_to_image"
        provider = "replicate"
        ref = "o/tiny"
        price = 1
        max_prompt = 10
        """
    )
    with pytest.raises(InvalidRequest) as caught:
        validate_request(Kind.text_to_image, seed(prompt="eleven char"), catalog, BOTS)
    assert caught.value.problems[0].params == {"limit": 10, "length": 11}


def test_catalogue_errors_are_reported() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        Catalog.from_toml('[models.x]\nkind = "text_to_image"\n')
    with pytest.raises(ValueError, match="bad price"):
        Catalog.from_toml('[models.x]\nkind = "text_to_image"\nprovider = "r"\nref = "o/x"\nprice = -1\n')
    model = '[models.x]\nkind = "text_to_image"\nprovider = "r"\nref = "o/x"\nprice = 1\n'
    for wait in ("-1", "61"):  # Replicate holds a create's answer for 1 to 60 seconds
        with pytest.raises(ValueError, match="wait outside 0-60"):
            Catalog.from_toml(model + f"wait = {wait}\n")
    assert Catalog.from_toml(model + "wait = 60\n").models["x"].wait == 60
    assert Catalog.from_toml(model).models["x"].wait == 0


def test_only_models_that_finish_in_seconds_wait_for_their_prediction() -> None:
    """A create that waits holds its answer while the prediction runs: worth it for images (seconds),
    not for a video or a training (minutes), whose id must be known early (to cancel it, for one)."""
    catalog = load_catalog()
    waiting = {model.kind for model in catalog.models.values() if model.wait}
    assert waiting == {Kind.text_to_image, Kind.neuro_photo}


def test_every_text_exists_in_both_languages_with_the_same_fields() -> None:
    for key, entry in all_keys().items():
        assert set(entry) == set(LANGUAGES), key
        fields = {language: set(re.findall(r"{(\w+)}", entry[language])) for language in LANGUAGES}
        assert fields["en"] == fields["ru"], key


def test_language_from_telegram_code() -> None:
    assert language_from_code("ru") == "ru"
    assert language_from_code("ru-RU") == "ru"
    assert language_from_code("en-GB") == "en"
    assert language_from_code(None) == "en"
    assert "Баланс" in text("balance", "ru", balance=5) or "баланс" in text("balance", "ru", balance=5)
