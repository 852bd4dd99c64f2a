"""An endpoint's ``cache`` settings, as a user writes them in its spec::

    name: assistant
    cache:
      mode: semantic          # off | exact | semantic
      similarity: 0.92        # cosine; a semantic hit needs at least this
      ttl: 1d                 # 30s, 15m, 1h, 1d, 7d …
      max_entries: 100000     # least recently used entries go first
      scope: endpoint         # endpoint | key
      backend: local          # local | redis://host:port/db
      verify: guards          # off | guards | judge
      judge: small            # (verify: judge) the deployment asked; default: the endpoint's cheapest

``scope: endpoint`` shares answers between the endpoint's keys; ``scope:
key`` keeps each key's answers to itself. ``backend: local`` keeps the cache
in this gateway (persisted under ``MODELYARD_HOME/cache``); a Redis URL
shares it between gateways.

``verify`` decides whether a semantic neighbour may be served
(`modelyard.cache.verify`): ``guards`` (the default) rejects one that differs
in a number, a negation, the kind of question, a name or its key terms, and
tries the next-nearest; ``judge`` also asks a deployment of the endpoint
(``judge``, default its cheapest) whether the two questions are the same;
``off`` serves the nearest neighbour above ``similarity`` as it is.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import durations

#: The default similarity threshold, set on principle rather than fitted to any evaluation file.
#: A cache must put precision first: a false hit serves someone a wrong answer, a miss only costs
#: one generation. So the bar sits where all-MiniLM-L6-v2 scores mean "the same question reworded"
#: (typically 0.9 and up) rather than "the same topic" (commonly 0.6-0.85: "capital of France" vs
#: "capital of Germany" scores 0.66). 0.92 is also the value of the issue's example configuration,
#: so the documented example and the default agree. `modelyard cache eval` shows the trade-off on
#: any pairs file; an endpoint's ``similarity`` overrides it.
DEFAULT_SIMILARITY = 0.92


def parse_duration(text: str | int | float, *, what: str = "ttl") -> float:
    """Seconds in a duration such as ``30s``, ``15m``, ``1h``, ``1d`` or ``7d`` (a bare number is seconds).

    >>> parse_duration("1h")
    3600.0
    """
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{what} must be a duration such as 30s, 15m, 1h, 1d or 7d (units s, m, h, d, w), "
                         f"not {text!r}: {exc}") from None


class CacheSpec(BaseModel):
    """How one endpoint caches its answers (off unless its spec says otherwise)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "exact", "semantic"] = "off"
    #: cosine similarity a semantic hit needs, in (0, 1]
    similarity: float = DEFAULT_SIMILARITY
    #: how long an answer may be served, from when it was stored
    ttl: str = "1d"
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)
    scope: Literal["endpoint", "key"] = "endpoint"
    #: ``local`` or a Redis URL (``redis://``, ``rediss://``, ``unix://``)
    backend: str = "local"
    #: how a semantic neighbour is checked before it is served (see `modelyard.cache.verify`)
    verify: Literal["off", "guards", "judge"] = "guards"
    #: ``verify: judge``: the deployment asked whether two questions are the same (default: the cheapest)
    judge: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("mode", "scope", "verify", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("similarity")
    @classmethod
    def _similarity_in_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"similarity is a cosine similarity threshold in (0, 1], not {value}")
        return value

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl_is_a_duration(cls, value: object) -> str:
        parse_duration(value)  # type: ignore[arg-type]
        return str(value).strip() if not isinstance(value, (int, float)) else f"{value}s"

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = value.strip()
        if value == "local" or re.match(r"^(redis|rediss|unix)://\S+$", value):
            return value
        raise ValueError(f"backend must be 'local' or a Redis URL such as redis://127.0.0.1:6379/0, not {value!r}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def ttl_s(self) -> float:
        return parse_duration(self.ttl)

    @property
    def is_redis(self) -> bool:
        return self.backend != "local"
