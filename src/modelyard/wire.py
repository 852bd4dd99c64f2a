"""The OpenAI wire format: request models and the chunk shapes every part speaks.

The server validates a request body into one of these models; the gateway
passes it on; a worker hands it to its Backend. Field checks here are the
ones OpenAI makes itself (types and ranges), so a bad request is a 400 naming
the field before anything else runs. What one backend cannot do (``n`` > 1 on
llama.cpp, say) is the backend's to refuse.
"""

from __future__ import annotations

import os
import time
from typing import Any, AsyncIterator, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4
#: Bounds on what a client may attach to a request (OpenAI's own for metadata: 16 pairs, 64/512 characters).
MAX_USER_CHARS = 256
MAX_NAME_CHARS = 256
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class _Request(BaseModel):
    # Unknown fields are refused, as OpenAI does, so a typo is not silently ignored.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(_Request):
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if len(v) > MAX_METADATA_PAIRS:
                raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs are allowed")
            for key, value in v.items():
                if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
                    raise ValueError(f"metadata keys are at most {MAX_METADATA_KEY_CHARS} characters and values "
                                     f"at most {MAX_METADATA_VALUE_CHARS} ({key[:40]!r} is longer)")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if len(v) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
            if any(s == "" for s in v):
                raise ValueError("stop sequences must not be empty")
        return v

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ContentPart(BaseModel):
    # The fields of OpenAI's content parts; anything else is refused, as OpenAI does.
    model_config = ConfigDict(extra="forbid")
    type: str
    text: str | None = None
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    refusal: str | None = None


class ChatMessage(BaseModel):
    # The fields of OpenAI's chat messages; anything else is refused (and never stored or forwarded).
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    function_call: dict[str, Any] | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None

    def text(self) -> str:
        """The message's text; image and audio parts are refused by text-only backends."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)


class EmbeddingRequest(_Request):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        if isinstance(v, str) and not v:
            raise ValueError("input must not be an empty string")
        return v


AnyRequest = Union[ChatCompletionRequest, CompletionRequest, EmbeddingRequest]

# The request kinds, by route.
KINDS: dict[str, type[_Request]] = {
    "chat": ChatCompletionRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}
ROUTES = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def gather(kind: str, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold a stream of chunks into the one non-streaming response body.

    A backend that already has the whole response (a non-streaming upstream)
    yields it as a single item whose ``object`` is the final type; that item
    is returned as is.
    """
    if len(chunks) == 1 and chunks[0].get("object") in ("chat.completion", "text_completion", "list"):
        return chunks[0]
    if not chunks:
        raise ValueError("backend produced no chunks")
    first = chunks[0]
    choices: dict[int, dict[str, Any]] = {}
    usage_body = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage_body = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            acc = choices.setdefault(index, {"index": index, "text": [], "finish_reason": None, "logprobs": None, "role": None})
            if kind == "chat":
                delta = choice.get("delta") or {}
                if delta.get("role"):
                    acc["role"] = delta["role"]
                if delta.get("content"):
                    acc["text"].append(delta["content"])
                lp = choice.get("logprobs")
                if lp and lp.get("content"):
                    acc["logprobs"] = acc["logprobs"] or {"content": []}
                    acc["logprobs"]["content"].extend(lp["content"])
            else:
                if choice.get("text"):
                    acc["text"].append(choice["text"])
                lp = choice.get("logprobs")
                if lp:
                    acc["logprobs"] = _merge_completion_logprobs(acc["logprobs"], lp)
            if choice.get("finish_reason"):
                acc["finish_reason"] = choice["finish_reason"]
    out_choices = []
    for index in sorted(choices):
        acc = choices[index]
        text = "".join(acc["text"])
        if kind == "chat":
            out_choices.append({
                "index": index,
                "message": {"role": acc["role"] or "assistant", "content": text},
                "logprobs": acc["logprobs"],
                "finish_reason": acc["finish_reason"],
            })
        else:
            out_choices.append({"index": index, "text": text, "logprobs": acc["logprobs"], "finish_reason": acc["finish_reason"]})
    body = {
        "id": first.get("id"),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": first.get("created", now()),
        "model": first.get("model"),
        "choices": out_choices,
        "usage": usage_body,
    }
    if first.get("system_fingerprint"):
        body["system_fingerprint"] = first["system_fingerprint"]
    return body


def _merge_completion_logprobs(acc: dict[str, Any] | None, lp: dict[str, Any]) -> dict[str, Any]:
    acc = acc or {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for key in acc:
        acc[key].extend(lp.get(key) or [])
    return acc


SSE_DONE = b"data: [DONE]\n\n"


def sse(chunk: dict[str, Any], *, event: str | None = None) -> bytes:
    """One server-sent event carrying a chunk, as OpenAI frames them (`event` names a modelyard event type,
    such as ``modelyard.correction``; OpenAI's own events have none)."""
    data = b"data: " + orjson.dumps(chunk) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


class SSEDecoder:
    """Split a server-sent-event byte stream into the ``data`` payloads of its events.

    Works on bytes as they arrive (events may straddle reads), ignores comments
    (``: keep-alive``) and ``event:``/``id:``/``retry:`` fields, and joins
    multi-line ``data`` fields with a newline, as the SSE spec says.

    >>> SSEDecoder().feed(b'data: {"a": 1}\\n\\n: ping\\n\\ndata: [DONE]\\n\\n')
    [b'{"a": 1}', b'[DONE]']
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: bytes | None = None

    def feed(self, piece: bytes) -> list[bytes]:
        """Add bytes; return the payloads of the events they completed."""
        buffer = self._buffer + piece if self._buffer else piece
        events: list[bytes] = []
        start = 0
        find = buffer.find
        while True:
            end = find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data is not None:
                    events.append(self._data)
                    self._data = None
            elif line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                self._data = value if self._data is None else self._data + b"\n" + value
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[bytes]:
        """The payload of an event the stream ended without terminating (lenient, unlike the spec)."""
        events = self.feed(b"\n\n") if self._buffer else self.feed(b"\n")
        self._buffer = b""
        return events


def replay(kind: str, body: dict[str, Any], *, include_usage: bool = False) -> list[dict[str, Any]]:
    """The chunks of a stream that carries a finished response body, the inverse of `gather`.

    Used to answer a streaming client with an answer that is already whole
    (a cascade tier's, a cached one): a role chunk, one content chunk per
    choice, the finish chunk, and the usage chunk when the client asked.
    """
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    base = {"id": body.get("id") or new_id("chatcmpl"), "object": obj, "created": body.get("created", now()),
            "model": body.get("model")}
    chunks: list[dict[str, Any]] = []
    for choice in body.get("choices") or ():
        index = choice.get("index", 0)
        if kind == "chat":
            message = choice.get("message") or {}
            chunks.append({**base, "choices": [{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": index, "delta": {"content": message.get("content") or ""},
                                                "logprobs": choice.get("logprobs"), "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                "finish_reason": choice.get("finish_reason") or "stop"}]})
        else:
            chunks.append({**base, "choices": [{"index": index, "text": choice.get("text") or "",
                                                "logprobs": choice.get("logprobs"), "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": index, "text": "", "logprobs": None,
                                                "finish_reason": choice.get("finish_reason") or "stop"}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body.get("usage") or usage(0, 0)})
    return chunks


async def replay_stream(kind: str, body: dict[str, Any], *, include_usage: bool = False) -> AsyncIterator[bytes]:
    """A whole answer as a client's SSE stream: its `replay` chunks and ``[DONE]``, in one write."""
    yield b"".join(sse(c) for c in replay(kind, body, include_usage=include_usage)) + SSE_DONE


def answer_text(kind: str, body: dict[str, Any]) -> str:
    """The first choice's text of a whole response body."""
    choices = body.get("choices") or [{}]
    if kind == "chat":
        return (choices[0].get("message") or {}).get("content") or ""
    return choices[0].get("text") or ""


def prompt_text(request: Any) -> str:
    """The text a router or cache judges a request by: the last user message (chat) or the prompt."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        for message in reversed(messages):
            if message.role == "user":
                return message.text()
        return messages[-1].text()
    prompt = getattr(request, "prompt", "")
    if isinstance(prompt, list):
        return prompt[0] if prompt and isinstance(prompt[0], str) else ""
    return prompt
