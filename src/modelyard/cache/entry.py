"""A cached answer and its stored form.

An entry keeps the whole non-streaming response body (a streamed answer is
gathered into one first), what generating it cost, and — in semantic mode —
the query's embedding. `decode_body` checks a stored body before it is
served: a body that does not parse or lacks the fields a replay needs is
*corrupt*; the store drops it, counts it and answers as if it had missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

#: the stored format; an entry written in another is dropped as corrupt
FORMAT = 1


class CorruptEntry(ValueError):
    """A stored entry that cannot be served."""


@dataclass(slots=True)
class Entry:
    """One cached answer."""

    id: str  # the request's exact key
    partition: str
    kind: str  # chat | completion
    query: str
    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    created_at: float
    expires_at: float
    vector: Any = None  # float32 unit vector, semantic mode only

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def encode_body(body: dict[str, Any]) -> bytes:
    return orjson.dumps({"format": FORMAT, "body": body})


def decode_body(raw: bytes | str | None, kind: str) -> dict[str, Any]:
    """The response body of a stored entry, or `CorruptEntry` saying why it cannot be served."""
    if raw is None:
        raise CorruptEntry("no body")
    try:
        wrapped = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptEntry(f"body is not JSON: {exc}") from None
    if not isinstance(wrapped, dict) or wrapped.get("format") != FORMAT:
        raise CorruptEntry(f"unknown format {wrapped.get('format') if isinstance(wrapped, dict) else type(wrapped).__name__!r}")
    body = wrapped.get("body")
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise CorruptEntry("body has no single choice")
    choice = choices[0]
    if kind == "chat":
        message = choice.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise CorruptEntry("chat body has no message text")
    elif not isinstance(choice.get("text"), str):
        raise CorruptEntry("completion body has no text")
    return body


def storable(body: dict[str, Any] | None) -> bool:
    """Whether an answer may be cached: one whole choice, not cut short by the token limit."""
    if not isinstance(body, dict) or "error" in body:
        return False
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return False
    reason = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    return reason is not None and reason not in ("length", "content_filter")
