"""Hypothesis strategies built from the JSON Schemas of the app's OpenAPI document: values a schema
allows (`fitting`), request bodies it refuses in one drawn way (`breaking`), and bodies that are no
JSON a parser should take whole (`unparsable`).

Fitting values lean to the hostile end of what a schema allows: integers at the edges of 32, 53 and
64 bits, strings with NUL, lone surrogates and direction marks. A schema that allows more than the
database holds then shows as a 5xx.

Only the part of JSON Schema the document uses is understood ($ref, anyOf, enum, object, string,
integer, boolean, null, and their bounds); anything else fails loudly rather than being fuzzed wrongly.
A body that `breaking` draws must be refused by the app: the document promises no less.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import strategies as st

Schema = dict[str, Any]
Json = Any
# How a test biases a named property's fitting values (e.g. known bots now and then); it gets the
# schema's own strategy, to keep drawing from it too.
Override = Callable[[st.SearchStrategy[Json]], st.SearchStrategy[Json]]

JSON_TYPES = ("string", "integer", "number", "boolean", "null", "array", "object")
# Letters only: a value the schema finds too long or too short stays so once the app strips whitespace.
LETTERS = string.ascii_letters
EDGE_INTEGERS = [
    sign * 2**bits + offset for bits in (31, 32, 52, 53, 63, 64) for sign in (1, -1) for offset in (-1, 0, 1)
]
ODD_CHARACTERS = ["\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "\u0085", " "]
# Raw JSON (or almost JSON) that json.loads trips over, or takes at a cost, in place of a value.
UNPARSABLE_VALUES = [
    b"9" * 5000,
    b"-" + b"1" * 4301,
    b"1" * 33,
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
]
KNOWN_KEYWORDS = {
    "$ref", "anyOf", "enum", "type", "properties", "required", "additionalProperties", "default", "title",
    "description", "maxLength", "minLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "items",
}  # fmt: skip


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn about as often as its weight says (st.one_of's own choice
    leans to the branch with the most variety, such as the many ways of breaking a body)."""
    strategies = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(strategies) - 1).flatmap(strategies.__getitem__)


def odd_text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    characters = weighted((4, st.characters()), (1, st.sampled_from(ODD_CHARACTERS)))
    return st.text(characters, min_size=min_size, max_size=max_size)


def any_json(max_leaves: int = 8) -> st.SearchStrategy[Json]:
    """Any JSON value, small."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text(max_size=8), inner, max_size=3),
        max_leaves=max_leaves,
    )


class SchemaStrategies:
    """Strategies for the schemas under `components`, with `overrides` for named properties."""

    def __init__(self, components: Mapping[str, Schema], overrides: Mapping[str, Override] | None = None):
        self.components = components
        self.overrides = overrides or {}

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].removeprefix("#/components/schemas/")]
        unknown = set(schema) - KNOWN_KEYWORDS
        assert not unknown, f"the fuzzer does not understand {unknown} in {schema}"
        return schema

    def alternatives(self, schema: Schema) -> list[Schema]:
        schema = self.resolve(schema)
        return [self.resolve(option) for option in schema["anyOf"]] if "anyOf" in schema else [schema]

    # --- what a schema allows ------------------------------------------------------------------------

    def fitting(self, schema: Schema, name: str | None = None) -> st.SearchStrategy[Json]:
        own = st.one_of([self._fitting_one(option) for option in self.alternatives(schema)])
        override = self.overrides.get(name) if name is not None else None
        return override(own) if override is not None else own

    def _fitting_one(self, schema: Schema) -> st.SearchStrategy[Json]:
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema["type"]
        if kind == "object":
            properties = schema.get("properties", {})
            required = set(schema.get("required", []))
            return st.fixed_dictionaries(
                {key: self.fitting(value, key) for key, value in properties.items() if key in required},
                optional={
                    key: self.fitting(value, key) for key, value in properties.items() if key not in required
                },
            )
        if kind == "string":
            low, high = schema.get("minLength", 0), schema.get("maxLength")
            if "pattern" in schema:
                matching = st.from_regex(schema["pattern"])
                return matching.filter(lambda text: low <= len(text) <= (high or len(text)))
            strings = odd_text(min_size=low, max_size=max(low, min(high or 40, 40)))
            if high is None:
                return strings
            # The longest string allowed, too: a column shorter than the schema says fails on it.
            longest = st.builds(lambda letter: letter * high, st.sampled_from(LETTERS))
            return weighted((4, strings), (1, longest))
        if kind == "integer":
            low, high = _integer_bounds(schema)
            edges = [
                value
                for value in EDGE_INTEGERS
                if (low is None or value >= low) and (high is None or value <= high)
            ]
            edges += [bound for bound in (low, high) if bound is not None]
            return weighted((2, st.integers(low, high)), (1, st.sampled_from(edges)))
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        raise AssertionError(f"no strategy for {schema}")

    # --- what a schema refuses -----------------------------------------------------------------------

    def breaking(self, schema: Schema) -> st.SearchStrategy[Json]:
        """A body the object schema refuses: not an object, a required property missing, an unknown
        one added, or one property given a value its schema refuses; the rest fitting."""
        schema = self.resolve(schema)
        properties: dict[str, Schema] = schema["properties"]
        required: list[str] = schema.get("required", [])
        fitting_body = self._fitting_one(schema)
        unknown_key = odd_text(min_size=1, max_size=12).filter(lambda key: key not in properties)
        ways = [
            any_json().filter(lambda value: not isinstance(value, dict)),
            st.tuples(fitting_body, unknown_key, any_json()).map(_with_value),
        ]
        if required:
            ways.append(
                st.tuples(fitting_body, st.sampled_from(required)).map(
                    lambda drawn: {key: value for key, value in drawn[0].items() if key != drawn[1]}
                )
            )
        for key, property_schema in properties.items():
            ways.append(st.tuples(fitting_body, st.just(key), self.refused(property_schema)).map(_with_value))
        return st.one_of(ways)

    def refused(self, schema: Schema) -> st.SearchStrategy[Json]:
        """A value the (property) schema refuses: of a type none of its alternatives takes, or of the
        right type but out of its bounds."""
        options = self.alternatives(schema)
        if any("enum" in option for option in options):
            allowed = [value for option in options for value in option.get("enum", [])]
            return st.text(max_size=10).filter(lambda value: value not in allowed)
        taken = {option["type"] for option in options}
        ways = [
            _of_type(kind)
            for kind in JSON_TYPES
            if kind not in taken and not (kind == "number" and "integer" in taken)
        ]
        if "integer" in taken:
            ways.append(
                st.floats(allow_nan=False, allow_infinity=False).filter(lambda value: not value.is_integer())
            )
        for option in options:
            ways.extend(_out_of_bounds(option))
        return st.one_of(ways)

    def unparsable(self, schema: Schema) -> st.SearchStrategy[bytes]:
        """A fitting body with one value swapped for raw text JSON has no number or depth for."""
        properties = list(self.resolve(schema)["properties"])
        return st.tuples(
            self._fitting_one(self.resolve(schema)),
            st.sampled_from(properties),
            st.sampled_from(UNPARSABLE_VALUES),
        ).map(_with_raw_value)

    def edge_values(self, schema: Schema) -> list[Json]:
        """A property's values at the edges of what its types can be, whether or not its schema
        allows them: numbers around 32, 53 and 64 bits, the longest strings, strings with NUL, lone
        surrogates, direction and byte-order marks, blank ones. The app may refuse any of them but
        must not fail on one."""
        values: list[Json] = []
        for option in self.alternatives(schema):
            kind = option.get("type")
            if kind == "integer":
                values += [
                    *EDGE_INTEGERS,
                    0,
                    *(bound for bound in _integer_bounds(option) if bound is not None),
                ]
            elif kind == "string":
                longest = option.get("maxLength", 200)
                values += ["", " ", "a\x00b", "\x00", "\ud800", "\u202e\ufeffabc", "ф" * longest]
                values += ["k" * longest, "k" * (longest + 1)]
            elif kind == "boolean":
                values += [True, False]
            elif kind == "null":
                values.append(None)
        return values


_SLOT = "\x00slot\x00"


def _with_raw_value(drawn: tuple[dict[str, Json], str, bytes]) -> bytes:
    body, key, raw = drawn
    encoded = json.dumps({**body, key: _SLOT}).encode()
    return encoded.replace(json.dumps(_SLOT).encode(), raw, 1)


def _with_value(drawn: tuple[dict[str, Json], str, Json]) -> dict[str, Json]:
    body, key, value = drawn
    return {**body, key: value}


def _integer_bounds(schema: Schema) -> tuple[int | None, int | None]:
    low = schema.get("minimum")
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + 1
    high = schema.get("maximum")
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - 1
    return low, high


def _of_type(kind: str) -> st.SearchStrategy[Json]:
    # Strings that no lax parser reads as a number or a flag ("5", "true", "yes" would be).
    return {
        "string": st.text(alphabet=LETTERS, min_size=6, max_size=12),
        "integer": st.integers() | st.sampled_from(EDGE_INTEGERS),
        "number": st.floats(allow_nan=False, allow_infinity=False),
        "boolean": st.booleans(),
        "null": st.none(),
        "array": st.lists(any_json(3), max_size=3),
        "object": st.dictionaries(st.text(max_size=5), any_json(3), max_size=3),
    }[kind]


def _out_of_bounds(schema: Schema) -> list[st.SearchStrategy[Json]]:
    ways: list[st.SearchStrategy[Json]] = []
    if schema["type"] == "integer":
        low, high = _integer_bounds(schema)
        if low is not None:
            ways.append(st.integers(max_value=low - 1))
            ways.append(st.sampled_from([value for value in EDGE_INTEGERS if value < low]))
        if high is not None:
            ways.append(st.integers(min_value=high + 1))
            ways.append(st.sampled_from([value for value in EDGE_INTEGERS if value > high]))
    if schema["type"] == "string":
        if "maxLength" in schema:
            longest = schema["maxLength"]
            ways.append(
                st.builds(
                    lambda letter, extra: letter * (longest + 1 + extra),
                    st.sampled_from(LETTERS),
                    st.integers(0, 50),
                )
            )
        if schema.get("minLength", 0) > 0:
            ways.append(st.text(alphabet=LETTERS, max_size=schema["minLength"] - 1))
        if "pattern" in schema:
            pattern = re.compile(schema["pattern"])
            ways.append(
                st.text(min_size=1, max_size=20).filter(lambda text: not pattern.search(text.strip()))
            )
    return ways
