"""The one duration parser: every caller reads ``30s``, ``1.5m``, ``7d`` the same way, in the units it takes."""

from __future__ import annotations

import pytest

from modelyard.durations import parse_duration


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1.5m", 90), (" 2H ", 7200), ("7d", 604800), ("2w", 1209600),
                                           ("500ms", 0.5), ("90", 90), (45, 45.0)])
def test_a_number_and_a_unit_is_seconds(text, seconds):
    assert parse_duration(text, units=("ms", "s", "m", "h", "d", "w")) == seconds


@pytest.mark.parametrize("text, kwargs, reason", [
    ("", {}, "not a number"), ("soon", {}, "not a number"), ("-1h", {}, "not a number"), ("0s", {}, "not longer"),
    ("3y", {}, "unknown unit 'y'"), ("1w", {"units": ("s", "m")}, "unknown unit 'w'"),
    ("1.5h", {"whole": True}, "whole"), ("90", {"bare": None}, "unit is missing"), (True, {}, "not a duration"),
    # what a JSON body can hold besides a string or a number (found by tests/server/test_fuzz.py: was a TypeError)
    (["1h"], {}, "not a duration"), ({"h": 1}, {}, "not a duration"), (None, {}, "not a duration"),
])
def test_anything_else_says_why(text, kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        parse_duration(text, **kwargs)
