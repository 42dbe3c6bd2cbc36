"""chatd's schema rules: closed objects and real calendar dates, applied by structure."""

from __future__ import annotations

import datetime
import re

from chatd.chat.schema import DATE_PATTERN, enforced_schema


def _is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_date_pattern_matches_exactly_the_real_dates() -> None:
    rx = re.compile(DATE_PATTERN)
    years = [*range(0, 12), 1900, 1996, 2000, 2023, 2024, 2100, 2400, 9999]
    for y in years:
        for m in range(0, 14):
            for d in range(0, 33):
                text = f"{y:04d}-{m:02d}-{d:02d}"
                assert bool(rx.fullmatch(text)) == _is_date(text), text


def test_nested_date_formats_become_patterns() -> None:
    schema = {"type": "object", "properties": {
        "when": {"type": "string", "format": "date"},
        "format": {"type": "string"},  # a property named "format" is left alone
        "log": {"type": "array", "items": {"anyOf": [{"type": "string", "format": "date"},
                                                     {"type": "null"}]}},
        "iso": {"type": "string", "format": "date", "pattern": "^2024-"}}}
    out = enforced_schema(schema)
    assert out["properties"]["when"] == {"type": "string", "pattern": DATE_PATTERN}
    assert out["properties"]["format"] == {"type": "string"}
    assert out["properties"]["log"]["items"]["anyOf"][0]["pattern"] == DATE_PATTERN
    assert out["properties"]["iso"]["format"] == "date"  # the user's own pattern wins
    assert schema["properties"]["when"]["format"] == "date"  # input not mutated


def test_objects_that_list_properties_are_closed() -> None:
    schema = {"type": "object", "properties": {"result": {"type": "integer"}}}
    assert enforced_schema(schema)["additionalProperties"] is False
    assert "additionalProperties" not in schema


def test_closing_reaches_defs_items_and_alternatives() -> None:
    point = {"type": "object", "properties": {"x": {"type": "number"}}}
    schema = {"$defs": {"P": point}, "definitions": {"Q": point},
              "type": "object", "properties": {
                  "list": {"type": "array", "items": point},
                  "either": {"anyOf": [point, {"type": "null"}]},
                  "ref": {"$ref": "#/$defs/P"}}}
    out = enforced_schema(schema)
    assert out["$defs"]["P"]["additionalProperties"] is False
    assert out["definitions"]["Q"]["additionalProperties"] is False
    assert out["properties"]["list"]["items"]["additionalProperties"] is False
    assert out["properties"]["either"]["anyOf"][0]["additionalProperties"] is False
    assert out["properties"]["ref"] == {"$ref": "#/$defs/P"}


def test_what_the_schema_says_about_extra_keys_is_kept() -> None:
    for extra in ({"additionalProperties": True}, {"additionalProperties": {"type": "string"}},
                  {"patternProperties": {"^x-": {}}}, {"unevaluatedProperties": False}):
        schema = {"type": "object", "properties": {"a": {}}, **extra}
        assert enforced_schema(schema) == schema


def test_objects_composed_with_others_stay_open() -> None:
    """Their other keys may come from the schemas beside them."""
    part_a = {"type": "object", "properties": {"a": {"type": "string"}}}
    part_b = {"type": "object", "properties": {"b": {"type": "string"}}}
    merged = enforced_schema({"allOf": [part_a, part_b]})
    assert merged["allOf"] == [part_a, part_b]
    extended = {"$ref": "#/$defs/Base", "properties": {"c": {}}}
    assert enforced_schema(extended) == extended


def test_free_form_objects_stay_free() -> None:
    assert enforced_schema({"type": "object"}) == {"type": "object"}


def test_keyword_names_as_data_are_not_keywords() -> None:
    schema = {"type": "object", "properties": {"properties": {"type": "string"}},
              "const": {"properties": {"a": 1}}, "enum": [{"format": "date"}]}
    out = enforced_schema(schema)
    assert out["properties"] == {"properties": {"type": "string"}}
    assert out["const"] == {"properties": {"a": 1}}
    assert out["enum"] == [{"format": "date"}]
