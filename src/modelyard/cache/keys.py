"""What a request's cache keys are, and whether it may be cached at all.

Two keys per request:

- the **partition**: everything that must be identical for one answer to
  serve another — the endpoint, the models behind it, the scope (the API
  key, with ``scope: key``), the request kind, every parameter that changes
  the answer, and the conversation *before* the last user message (the
  system prompt and earlier turns);
- the **exact key**: the partition plus the last user message. It is also
  the entry's id, so an exact look-up is one dictionary (or Redis) read.

A semantic look-up embeds the last user message (the ``query``) and
searches only its partition, so a paraphrased question never picks up an
answer given under another system prompt, history or temperature.

Parameters that do not change the answer (``stream``, ``stream_options``,
``user``, ``metadata``, ``store``, ``service_tier``) are left out, so a
streamed and a non-streamed request share their entries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from ..wire import ChatCompletionRequest, CompletionRequest

#: request fields that never change the answer
_NOT_IN_KEY = {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier",
               "messages", "prompt", "max_tokens", "max_completion_tokens"}


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """The keys of one cacheable request."""

    partition: str
    exact: str
    #: the text a semantic look-up embeds: the last user message (or the prompt)
    query: str
    lookup: bool = True
    store: bool = True


def cache_control(headers: Mapping[str, str] | None) -> tuple[bool, bool, bool]:
    """(opted in, skip look-up, skip storing) from the client's headers.

    ``x-modelyard-cache: allow`` opts a request in even when it is not
    repeatable; ``Cache-Control: no-cache`` skips the look-up (the answer is
    still stored) and ``no-store`` skips storing it.
    """
    if headers is None:
        return False, False, False
    allow = (headers.get("x-modelyard-cache") or "").strip().lower() == "allow"
    directives = {d.strip().lower() for d in (headers.get("cache-control") or "").split(",")}
    return allow, "no-cache" in directives, "no-store" in directives


def not_repeatable(request: Any) -> str | None:
    """Why a request's answer is not meant to be repeatable, or None when it is.

    Repeatable means ``temperature`` 0 (or a ``seed``), no tools and one choice.
    """
    n = getattr(request, "n", None)
    if n not in (None, 1):
        return "n > 1"
    if getattr(request, "tools", None) or getattr(request, "tool_choice", None) not in (None, "none"):
        return "tools"
    if getattr(request, "best_of", None) not in (None, 1):
        return "best_of > 1"
    if request.temperature == 0 or request.seed is not None:
        return None
    return "temperature is not 0 and no seed is set"


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _message(m: Any) -> Any:
    data = m.model_dump(exclude_none=True)
    content = data.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        data["content"] = "".join(p.get("text") or "" for p in content)  # parts of plain text read as one string
    return data


def request_keys(kind: str, request: ChatCompletionRequest | CompletionRequest, *, endpoint: str, models: tuple[str, ...],
                 scope: str) -> CacheKeys | None:
    """The keys of a chat or completion request, or None when it has nothing to key on.

    `models` are the catalog ids of the models behind the endpoint (a new
    model starts a fresh cache); `scope` is ``"*"`` or names the API key
    (it is only ever stored hashed, inside the partition digest).
    """
    params = request.model_dump(exclude=_NOT_IN_KEY, exclude_none=True)
    params["max_tokens"] = request.token_limit
    if kind == "chat":
        messages = request.messages  # type: ignore[union-attr]
        last = messages[-1]
        if last.role != "user":
            return None
        query_msg = _message(last)
        if not isinstance(query_msg.get("content"), str):
            return None  # images or audio: no text to key on
        query = query_msg.pop("content")
        prefix = [_message(m) for m in messages[:-1]] + [query_msg]
    else:
        prompt = request.prompt  # type: ignore[union-attr]
        if not isinstance(prompt, str):
            return None  # token ids or several prompts
        query, prefix = prompt, []
    partition = _digest(endpoint.encode(), _dumps(list(models)), scope.encode(), kind.encode(), _dumps(params),
                        _dumps(prefix))
    return CacheKeys(partition=partition, exact=_digest(partition.encode(), query.encode()), query=query)
