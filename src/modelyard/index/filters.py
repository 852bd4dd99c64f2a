"""Metadata filters of a query: exact matches, nothing more.

A filter is a JSON object; each key must match, all of them together::

    {"format": "markdown"}                      # key == value
    {"section": ["Keys", "Rotating keys"]}      # value in list
    {"path": "guide/keys.md", "page": 3}

A key is looked up in the chunk's metadata (``section``, ``page``) first,
then in its document's (``path``, ``title``, ``format``, and whatever was
added with the document). A metadata value that is itself a list (tags)
matches when any of its items does. A missing key never matches. Types
count: ``3`` matches ``3`` and ``3.0``, not ``"3"`` nor ``true``.
"""

from __future__ import annotations

from typing import Any

Scalar = str | int | float | bool | None
#: what `compile_filter` returns: each key with the values it may have
Conditions = list[tuple[str, tuple[Scalar, ...]]]

MAX_KEYS = 32
MAX_VALUES = 1000
MISSING = object()


def compile_filter(spec: Any) -> Conditions:
    """The conditions of the filter `spec` (None or ``{}``: none), or a ValueError that says what is wrong."""
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise ValueError(f"a filter is a JSON object of metadata keys and values, not {type(spec).__name__}")
    if len(spec) > MAX_KEYS:
        raise ValueError(f"a filter has at most {MAX_KEYS} keys, not {len(spec)}")
    conditions: Conditions = []
    for key, wanted in spec.items():
        if not isinstance(key, str) or not key:
            raise ValueError("a filter key must be a non-empty string")
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values:
            raise ValueError(f"the filter's '{key}' lists no value")
        if len(values) > MAX_VALUES:
            raise ValueError(f"the filter's '{key}' lists more than {MAX_VALUES} values")
        for value in values:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"the filter's '{key}' must be a string, number, boolean or null, or a list of "
                                 f"them, not {type(value).__name__}")
        conditions.append((key, tuple(values)))
    return conditions


def matches(value: Any, wanted: tuple[Scalar, ...]) -> bool:
    """Whether a metadata `value` (a scalar, a list of them, or `MISSING`) is one of `wanted`."""
    if value is MISSING:
        return False
    for item in value if isinstance(value, list) else (value,):
        for want in wanted:
            if item == want and isinstance(item, bool) == isinstance(want, bool) \
                    and isinstance(item, str) == isinstance(want, str):
                return True
    return False
