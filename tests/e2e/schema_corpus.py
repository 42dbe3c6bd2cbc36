"""JSON Schemas the structured-output tests generate against: the shapes apps send.

Each entry is (name, schema, prompt). Flat objects, nesting, arrays with bounds,
enums, const, anyOf, $defs/$ref (also recursive), optional fields, numbers with
bounds, string formats and patterns: the features OpenAI's structured outputs
document.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _obj(props: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False, **extra}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}

CORPUS: list[tuple[str, Schema, str]] = [
    ("person", _obj({"name": _STR, "age": _INT}), "Describe a person."),
    ("bool_flag", _obj({"ok": _BOOL}), "Is the sky blue?"),
    ("number_bounds", _obj({"celsius": {"type": "number", "minimum": -50, "maximum": 60}}),
     "What is the temperature in Paris today?"),
    ("int_bounds", _obj({"rating": {"type": "integer", "minimum": 1, "maximum": 5}}),
     "Rate the film Casablanca."),
    ("exclusive_bounds", _obj({"p": {"type": "number", "exclusiveMinimum": 0,
                                      "exclusiveMaximum": 1}}),
     "Give a probability that it rains tomorrow."),
    ("enum_string", _obj({"sentiment": {"enum": ["positive", "negative", "neutral"]}}),
     "Classify: I love this phone."),
    ("enum_mixed", _obj({"level": {"enum": [1, 2, 3, "max"]}}), "Pick a level."),
    ("const", _obj({"kind": {"const": "invoice"}, "total": _NUM}), "Make an invoice."),
    ("string_array", _obj({"tags": {"type": "array", "items": _STR}}),
     "Give tags for a blog post about cooking."),
    ("bounded_array", _obj({"colors": {"type": "array", "items": _STR,
                                       "minItems": 2, "maxItems": 4}}),
     "Name some colors."),
    ("int_array", _obj({"primes": {"type": "array", "items": _INT, "maxItems": 6}}),
     "List small prime numbers."),
    ("nested", _obj({"user": _obj({"name": _STR, "email": _STR}),
                     "active": _BOOL}), "Create a user record."),
    ("deep_nested", _obj({"a": _obj({"b": _obj({"c": _obj({"value": _INT})})})}),
     "Fill the nested value."),
    ("array_of_objects", _obj({"items": {"type": "array", "maxItems": 3, "items": _obj(
        {"sku": _STR, "qty": {"type": "integer", "minimum": 1}})}}),
     "Make a shopping cart."),
    ("optional_fields", _obj({"title": _STR, "subtitle": _STR, "year": _INT},
                             required=["title"]), "Describe a book."),
    ("all_optional", _obj({"x": _INT, "y": _INT}, required=[]), "Give a point."),
    ("nullable", _obj({"middle_name": {"type": ["string", "null"]}, "first": _STR}),
     "Give a name."),
    ("anyof", _obj({"id": {"anyOf": [_INT, _STR]}}), "Give an identifier."),
    ("anyof_objects", _obj({"shape": {"anyOf": [
        _obj({"type": {"const": "circle"}, "radius": _NUM}),
        _obj({"type": {"const": "square"}, "side": _NUM})]}}), "Describe a shape."),
    ("defs_ref", {"$defs": {"address": _obj({"street": _STR, "city": _STR})},
                  **_obj({"home": {"$ref": "#/$defs/address"},
                          "work": {"$ref": "#/$defs/address"}})},
     "Give home and work addresses."),
    ("recursive_tree", {"$defs": {"node": _obj({
        "label": {"type": "string", "maxLength": 12},
        "children": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}})},
        "$ref": "#/$defs/node"}, "Draw a small tree."),
    ("string_length", _obj({"code": {"type": "string", "minLength": 3, "maxLength": 6}}),
     "Invent a short code."),
    ("pattern", _obj({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}),
     "Give a US zip code."),
    ("date_format", _obj({"when": {"type": "string", "format": "date"}}),
     "When did the moon landing happen?"),
    ("email_format", _obj({"contact": {"type": "string", "format": "email"}}),
     "Give a contact email."),
    ("uuid_format", _obj({"id": {"type": "string", "format": "uuid"}}), "Make an id."),
    ("top_level_array", {"type": "array", "items": _obj({"word": _STR}), "maxItems": 3},
     "Give some words."),
    ("matrix", _obj({"rows": {"type": "array", "maxItems": 3, "items": {
        "type": "array", "maxItems": 3, "items": _INT}}}), "Make a small matrix."),
    ("many_fields", _obj({"name": _STR, "price": _NUM, "in_stock": _BOOL,
                          "category": {"enum": ["food", "tools", "toys"]},
                          "tags": {"type": "array", "items": _STR, "maxItems": 3}}),
     "Describe a product."),
    ("event", _obj({"title": _STR, "date": {"type": "string", "format": "date"},
                    "attendees": {"type": "array", "maxItems": 3, "items": _obj(
                        {"name": _STR, "role": {"enum": ["host", "guest"]}})}}),
     "Plan a party."),
    ("math_answer", _obj({"steps": {"type": "array", "maxItems": 4, "items": _STR},
                          "answer": _NUM}), "What is 12 times 7?"),
    ("map_like", {"type": "object", "additionalProperties": _INT, "maxProperties": 4},
     "Count letters in the word banana."),
    ("free_object", {"type": "object"}, "Say anything as JSON."),
    ("description_fields", _obj({
        "city": {"type": "string", "description": "A capital city"},
        "population": {"type": "integer", "minimum": 0, "description": "People"}}),
     "Tell me about the capital of France."),
]
