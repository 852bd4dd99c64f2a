"""Durations written by people: ``30s``, ``15m``, ``1h``, ``7d``, ``2w``, ``500ms``.

One parser for every place that reads one (a cache's ``ttl``, a metrics or
router-report window, a rollout's ``--interval``). Each caller names the units
it takes and words the error for its own field; the reading is the same.

    >>> parse_duration("1.5m")
    90.0
    >>> parse_duration("7d", units=("m", "h", "d", "w"), whole=True)
    604800.0
"""

from __future__ import annotations

import re

#: seconds per unit
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
#: the longest duration read (a hundred years): anything longer is a typo, and past it ``datetime``
#: arithmetic (``now - window``) overflows
MAX_SECONDS = 100 * 365 * 86400.0
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_duration(value: str | int | float, *, units: tuple[str, ...] = ("s", "m", "h", "d", "w"),
                   whole: bool = False, bare: str | None = "s") -> float:
    """Seconds in `value`: a number and one of `units`; a number alone is in `bare` units (None: a unit is
    required; an int or float `value` is always seconds). `whole`: the number must be a whole one.
    Anything else, anything not longer than zero and anything longer than `MAX_SECONDS` raises `ValueError`
    saying why."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif not isinstance(value, str):  # a list or an object from a JSON body: a ValueError, so a 400 and not a 500
        raise ValueError("not a duration")
    else:
        match = _DURATION.fullmatch(value or "")
        if not match:
            raise ValueError("not a number followed by a unit")
        number, unit = match[1], match[2].lower() or bare
        if unit is None:
            raise ValueError("the unit is missing")
        if unit not in units:
            raise ValueError(f"unknown unit {unit!r}")
        if whole and "." in number:
            raise ValueError("not a whole number")
        seconds = float(number) * UNITS[unit]
    if not seconds > 0:
        raise ValueError("not longer than zero")
    if not seconds <= MAX_SECONDS:
        raise ValueError("longer than 100 years")
    return seconds
