"""A client's JSON Schema -> the schema the decoder enforces, with chatd's two rules.

1. **Objects that list `properties` are closed** unless the schema says otherwise
   (`additionalProperties`, `patternProperties` or `unevaluatedProperties`). A user
   who lists the keys expects those keys; OpenAI's strict mode requires the same
   and vLLM's default decoder (XGrammar) assumes it. Left open, a small model adds
   keys the schema merely tolerates (`{" result": 2.5}` for a `result` integer).
   An object combined with other schemas (`allOf`, `anyOf`, `oneOf`, `$ref`,
   `if`, `dependentSchemas`, or a member of an `allOf`) stays as written: its
   other keys may come from the schemas beside it. `{"type": "object"}` with no
   `properties` stays any object.
2. **`format: date` means a real calendar date**: llguidance's own `date` accepts
   any day 01-31 in any month (2023-02-30), which a validator rejects.

The walk follows JSON Schema's structure (keywords whose values are schemas, maps
of schemas, lists of schemas) so that a property *named* `properties` or `format`,
or a `const`/`enum`/`default` value, is never taken for a keyword.
"""

from __future__ import annotations

from typing import Any

# Keywords whose value is one schema, a map of name -> schema, or a list of schemas.
_ONE = ("additionalProperties", "additionalItems", "contains", "propertyNames", "not",
        "if", "then", "else", "unevaluatedItems", "unevaluatedProperties", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
# An object with one of these gets keys from elsewhere, or says which extra keys it allows.
_OPEN_BY = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf",
            "anyOf", "oneOf", "$ref", "$dynamicRef", "if", "dependentSchemas")

# llguidance's `date` accepts any day 01-31 in any month (2023-02-29, 2023-04-31),
# which a validator rejects. This pattern admits exactly the real calendar dates of
# years 0001-9999 (leap years included), as `datetime.date.fromisoformat` does.
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
DATE_PATTERN = (
    rf"^(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)$"
)


def enforced_schema(schema: Any) -> Any:
    """`schema` with chatd's rules applied; the input is not changed."""
    return _walk(schema, in_all_of=False)


def _walk(node: Any, *, in_all_of: bool) -> Any:
    if not isinstance(node, dict):
        return node  # `true`/`false` schemas, or a malformed one llguidance will name
    out = dict(node)
    for key in _ONE:
        if key in out and not isinstance(out[key], list):
            out[key] = _walk(out[key], in_all_of=False)
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: _walk(sub, in_all_of=False) for name, sub in out[key].items()}
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [_walk(sub, in_all_of=key == "allOf") for sub in out[key]]
    if isinstance(out.get("properties"), dict) and not in_all_of and not any(
            key in out for key in _OPEN_BY):
        out["additionalProperties"] = False
    if out.get("format") == "date" and "pattern" not in out:
        del out["format"]
        out["pattern"] = DATE_PATTERN
    return out
