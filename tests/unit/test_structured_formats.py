"""`format: date` is enforced as the exact calendar, not llguidance's 01-31 any month."""

from __future__ import annotations

import datetime
import re

from chatd.chat.structured import _DATE_PATTERN, _exact_formats


def _is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_date_pattern_matches_exactly_the_real_dates() -> None:
    rx = re.compile(_DATE_PATTERN)
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
    out = _exact_formats(schema)
    assert out["properties"]["when"] == {"type": "string", "pattern": _DATE_PATTERN}
    assert out["properties"]["format"] == {"type": "string"}
    assert out["properties"]["log"]["items"]["anyOf"][0]["pattern"] == _DATE_PATTERN
    assert out["properties"]["iso"]["format"] == "date"  # the user's own pattern wins
    assert schema["properties"]["when"]["format"] == "date"  # input not mutated
