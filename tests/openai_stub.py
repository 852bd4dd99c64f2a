"""The one fake OpenAI-compatible upstream of the tests, fast enough for the gateway-overhead benchmark.

A plain ASGI callable (no framework) served by uvicorn with uvloop and
httptools, so the stub itself costs as little as possible and a benchmark
measures the gateway, not the stub. Its default answers are precomputed bytes.

Run it on its own::

    python tests/openai_stub.py --port 8123 [--host 127.0.0.1]

or, in a test, in a background thread on a free port::

    stub = StubServer().start()   # stub.root = "http://127.0.0.1:PORT"; append /v1 for the OpenAI routes
    ...
    stub.stop()

The ``stub`` fixture (tests/conftest.py) is such a stub for a test module;
``stub_fixture(scope, echo=True, ...)`` makes a differently configured one.

Routes (under ``/v1``, Azure's ``/openai/deployments/{name}/...``, or a tier's ``/{tier}/v1``):

- ``POST .../chat/completions``, ``POST .../completions``: without ``stream``
  a fixed body (content ``"tok " * 20``, usage 10 prompt + 20 completion
  tokens); with ``stream`` exactly 20 content chunks of one token ``"tok "``,
  a chunk with ``finish_reason: "stop"``, a usage chunk with empty
  ``choices`` when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``.
- ``POST .../embeddings``: a fixed 8-dimensional embedding per input.
- ``GET /v1/models``, ``/healthz``, ``/readyz``.
- ``GET /_last``: the last POST's ``path``, ``query``, ``headers`` and ``body``,
  ``seen``, how many POSTs the stub has had, and ``client_port`` (to tell
  a reused connection from a new one).

Other answers, by how the stub is made or asked:

- ``StubServer(echo=True)`` answers ``"answer to: <last user message or
  prompt>"`` instead (same usage), so a replayed answer is recognisable.
- Tiers: a request under ``/{tier}/v1`` (a card whose ``base_url`` is
  ``stub.base_url("large")``) is answered by ``stub.tiers["large"]``, a
  `Script` (the default one when unset); ``stub.calls[tier]`` counts them.
- ``StubServer(record=True)`` keeps every POST body in ``stub.bodies``.

Scripted behaviour, by request header, or by the body's ``user`` field for
callers that cannot set headers (a gateway does not forward them):
``"stub:status=503,fail_times=2,key=k1"`` reads as the headers
``x-stub-status: 503``, ``x-stub-fail-times: 2``, ``x-stub-key: k1``.

- ``x-stub-status: 429|500|503|400|...`` fails the request with that status and
  an OpenAI error body (``x-stub-error-param`` sets its ``param``,
  ``x-stub-retry-after`` adds a ``Retry-After`` header).
- ``x-stub-fail-times: N`` with ``x-stub-key: K`` fails only the first N
  requests carrying that key, so a client's retries can succeed.
- ``x-stub-delay-ms: N`` waits N ms before answering.
- ``x-stub-stream-error: 1`` sends an error event after the first chunk.
- ``x-stub-stream-abort: 1`` drops the connection after the first chunk.
- ``x-stub-reject-stream-options: 1`` answers 400 to a body with
  ``stream_options``, as older Azure api-versions do.
- ``x-stub-finish: length`` ends an echo or tier answer with that ``finish_reason``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

PROMPT_TOKENS = 10
COMPLETION_TOKENS = 20
TOKEN = "tok "
CREATED = 1_700_000_000
EMBEDDING = [0.125, -0.25, 0.5, 0.0625, -0.5, 0.25, 0.375, -0.125]

_USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass
class Script:
    """What a tier answers: the reply for the first phrase of ``answers`` found in the question, else ``answer``;
    per-token ``logprob`` when asked for logprobs; ``delay_s`` before answering (``chunk_delay_s`` between
    streamed words); a ``status`` other than 200 fails the request with an OpenAI error."""

    answer: str = "Paris is the capital of France."
    answers: dict[str, str] = field(default_factory=dict)
    logprob: float = -0.1
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    status: int = 200

    def reply(self, question: str) -> str:
        for phrase, text in self.answers.items():
            if phrase.lower() in question.lower():
                return text
        return self.answer


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_body() -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": CREATED,
        "model": "stub-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TOKEN * COMPLETION_TOKENS}, "logprobs": None, "finish_reason": "stop"}],
        "usage": _USAGE,
    })


def _completion_body() -> bytes:
    return orjson.dumps({
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": CREATED,
        "model": "stub-model",
        "choices": [{"index": 0, "text": TOKEN * COMPLETION_TOKENS, "logprobs": None, "finish_reason": "stop"}],
        "usage": _USAGE,
    })


def _chat_stream() -> tuple[list[bytes], bytes, bytes]:
    base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": CREATED, "model": "stub-model"}
    chunks = []
    for i in range(COMPLETION_TOKENS):
        delta = {"role": "assistant", "content": TOKEN} if i == 0 else {"content": TOKEN}
        chunks.append(_sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}))
    final = _sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    usage = _sse({**base, "choices": [], "usage": _USAGE})
    return chunks, final, usage


def _completion_stream() -> tuple[list[bytes], bytes, bytes]:
    base = {"id": "cmpl-stub", "object": "text_completion", "created": CREATED, "model": "stub-model"}
    chunks = [_sse({**base, "choices": [{"index": 0, "text": TOKEN, "logprobs": None, "finish_reason": None}]}) for _ in range(COMPLETION_TOKENS)]
    final = _sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]})
    usage = _sse({**base, "choices": [], "usage": _USAGE})
    return chunks, final, usage


_BODIES = {"chat": _chat_body(), "completion": _completion_body()}
_STREAMS = {"chat": _chat_stream(), "completion": _completion_stream()}
_DONE = b"data: [DONE]\n\n"
_STREAM_ERROR = _sse({"error": {"message": "stub failed mid-stream", "type": "server_error", "param": None, "code": "stub_stream_error"}})
_MODELS = orjson.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model", "created": CREATED, "owned_by": "stub"}]})
_OK = b'{"status":"ok"}'
_NOT_FOUND = orjson.dumps({"error": {"message": "no such route", "type": "invalid_request_error", "param": None, "code": "not_found"}})


def _kind(path: str) -> str | None:
    """The request kind for a POST path: OpenAI style or Azure deployment style."""
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/completions"):
        return "completion"
    if path.endswith("/embeddings"):
        return "embedding"
    return None


def _tier(path: str) -> str | None:
    """``"large"`` for ``/large/v1/chat/completions``; None for ``/v1/...`` and Azure paths."""
    head, sep, _ = path[1:].partition("/v1/")
    return head if sep and head and "/" not in head else None


def _question(body: dict[str, Any]) -> str:
    """The last user message of a chat request, or a completion's prompt."""
    if "messages" not in body:
        return str(body.get("prompt", ""))
    return next((str(m.get("content") or "") for m in reversed(body["messages"]) if m.get("role") == "user"), "")


class StubAbort(Exception):
    """Raised mid-response to make uvicorn drop the connection."""


class StubServer:
    """The ASGI app, with its options, tier scripts and the state scripted failures and ``/_last`` need."""

    def __init__(self, *, echo: bool = False, record: bool = False) -> None:
        self.echo = echo
        self.record = record
        self.tiers: dict[str, Script] = {}
        self.calls: dict[str, int] = {}
        self.bodies: list[Any] = []
        self.last: dict[str, Any] | None = None
        self.seen = 0
        self.root = ""
        self._failures: dict[str, int] = {}
        self._running: tuple[Any, threading.Thread, socket.socket] | None = None

    def base_url(self, tier: str) -> str:
        """The OpenAI base URL of a tier (answered by ``self.tiers[tier]``)."""
        return f"{self.root}/{tier}/v1"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path in ("/healthz", "/readyz"):
                return await _respond(send, 200, _OK)
            if path == "/v1/models":
                return await _respond(send, 200, _MODELS)
            if path == "/_last":
                return await _respond(send, 200, orjson.dumps(self.last))
            return await _respond(send, 404, _NOT_FOUND)

        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        kind = _kind(path) if scope["method"] == "POST" else None
        if kind is None:
            return await _respond(send, 404, _NOT_FOUND)

        # Only the scripted headers are looked up; the common case has none.
        headers = scope["headers"]
        script = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k.startswith(b"x-stub-")}
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        self.seen += 1
        self.last = {
            "seen": self.seen,
            "client_port": scope["client"][1] if scope.get("client") else None,
            "path": path,
            "query": scope["query_string"].decode("latin-1"),
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
            "body": body,
        }
        if body is None:
            return await _respond(send, 400, _error("request body is not valid JSON", "invalid_request_error", None, "invalid_json"))
        if self.record:
            self.bodies.append(body)
        tier = None if path.startswith("/v1/") else _tier(path)
        if tier is not None:
            self.calls[tier] = self.calls.get(tier, 0) + 1

        user = body.get("user")
        if isinstance(user, str) and user.startswith("stub:"):
            for item in user[5:].split(","):
                name, _, value = item.partition("=")
                script[f"x-stub-{name.replace('_', '-')}"] = value
        if script:
            if "x-stub-delay-ms" in script:
                await asyncio.sleep(int(script["x-stub-delay-ms"]) / 1000)
            if "x-stub-status" in script and self._should_fail(script):
                return await self._fail(send, script)
            if script.get("x-stub-reject-stream-options") and "stream_options" in body:
                message = "Unrecognized request argument supplied: stream_options"
                return await _respond(send, 400, _error(message, "invalid_request_error", None, None))

        if kind == "embedding":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
            return await _respond(send, 200, _embedding_body(count))
        if tier is not None:
            return await self._tier_answer(send, kind, tier, body, script)
        if self.echo:
            return await _text_answer(send, kind, body, script, f"answer to: {_question(body)}", model="echo", usage=_USAGE)
        if not body.get("stream"):
            return await _respond(send, 200, _BODIES[kind])
        chunks, final, usage = _STREAMS[kind]
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        await _stream(send, chunks, final + usage if include_usage else final, script)

    async def _tier_answer(self, send: Callable, kind: str, tier: str, body: dict[str, Any], script: dict[str, str]) -> None:
        tier_script = self.tiers.get(tier, Script())
        if tier_script.delay_s:
            await asyncio.sleep(tier_script.delay_s)
        if tier_script.status != 200:
            message = f"tier {tier} failed on purpose"
            return await _respond(send, tier_script.status, _error(message, "server_error", None, "stub_failure"))
        question = _question(body)
        text = tier_script.reply(question)
        prompt_tokens, completion_tokens = max(1, len(question) // 4), len(text.split(" "))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        await _text_answer(send, kind, body, script, text, model=tier, usage=usage, logprob=tier_script.logprob,
                           chunk_delay_s=tier_script.chunk_delay_s)

    def _should_fail(self, script: dict[str, str]) -> bool:
        times = script.get("x-stub-fail-times")
        if times is None:
            return True
        key = script.get("x-stub-key", "")
        seen = self._failures.get(key, 0)
        self._failures[key] = seen + 1
        return seen < int(times)

    async def _fail(self, send: Callable, script: dict[str, str]) -> None:
        status = int(script["x-stub-status"])
        kind = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
        code = {429: "rate_limit_exceeded"}.get(status, "stub_error")
        body = _error(f"stub says {status}", kind, script.get("x-stub-error-param"), code)
        extra = []
        if "x-stub-retry-after" in script:
            extra.append((b"retry-after", script["x-stub-retry-after"].encode()))
        await _respond(send, status, body, extra)

    def start(self, host: str = "127.0.0.1") -> StubServer:
        """Serve this stub on a free port in a daemon thread; ``self.root`` is then its URL. Returns self."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(_config(self))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"openai-stub-{port}", daemon=True)
        thread.start()
        for _ in range(2000):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.005)
        if not server.started:
            raise RuntimeError("the OpenAI stub did not start")
        self.root = f"http://{host}:{port}"
        self._running = (server, thread, sock)
        return self

    def stop(self) -> None:
        """Shut the server `start` started down and join its thread."""
        if self._running is not None:
            server, thread, sock = self._running
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
            self._running = None


def _error(message: str, type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def _embedding_body(count: int) -> bytes:
    return orjson.dumps({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": EMBEDDING} for i in range(count)],
        "model": "stub-embedding",
        "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
    })


async def _text_answer(send: Callable, kind: str, body: dict[str, Any], script: dict[str, str], text: str, *,
                       model: str, usage: dict[str, int], logprob: float | None = None, chunk_delay_s: float = 0.0) -> None:
    """Answer ``text`` (an echo or a tier's reply) as JSON, or streamed a word a chunk after a role-only chunk."""
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1][:-1]
    finish = script.get("x-stub-finish", "stop")
    chat = kind == "chat"
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{model}-{time.time_ns()}", "created": CREATED, "model": model}
    if not body.get("stream"):
        if chat:
            logprobs = ({"content": [{"token": w, "logprob": logprob, "bytes": None, "top_logprobs": []} for w in words]}
                        if logprob is not None and body.get("logprobs") else None)
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion" if chat else "text_completion"
        return await _respond(send, 200, orjson.dumps({**base, "object": obj, "choices": [choice], "usage": usage}))

    base["object"] = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = ({"index": 0, "delta": delta, "finish_reason": finish_reason} if chat
                  else {"index": 0, "text": delta.get("content", ""), "finish_reason": finish_reason})
        return _sse({**base, "choices": [choice]})

    chunks = ([chunk({"role": "assistant", "content": ""})] if chat else []) + [chunk({"content": w}) for w in words]
    tail = chunk({}, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        tail += _sse({**base, "choices": [], "usage": usage})
    await _stream(send, chunks, tail, script, chunk_delay_s)


async def _stream(send: Callable, chunks: list[bytes], tail: bytes, script: dict[str, str], chunk_delay_s: float = 0.0) -> None:
    """Send an SSE response: ``chunks`` (``chunk_delay_s`` apart), then ``tail`` and ``[DONE]``; scripted failures
    happen after the first chunk."""
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for i, chunk in enumerate(chunks):
        if chunk_delay_s and i:
            await asyncio.sleep(chunk_delay_s)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if i == 0 and script:
            if script.get("x-stub-stream-error"):
                await send({"type": "http.response.body", "body": _STREAM_ERROR, "more_body": False})
                return
            if script.get("x-stub-stream-abort"):
                raise StubAbort("scripted drop after the first chunk")
    await send({"type": "http.response.body", "body": tail + _DONE, "more_body": False})


async def _respond(send: Callable, status: int, body: bytes, extra: list | None = None) -> None:
    headers = _JSON_HEADERS + extra if extra else _JSON_HEADERS
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _config(app: StubServer, **kwargs: Any) -> Any:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # the stub still runs, a little slower
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    return uvicorn.Config(app, loop=loop, http=http, log_level="warning", access_log=False, lifespan="off", **kwargs)


def start_stub_in_thread(host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serve a fresh default stub on a free port in a daemon thread: ``(base_url, stop)``, ``base_url`` being the
    server root (``http://127.0.0.1:PORT``, append ``/v1`` for the OpenAI routes)."""
    stub = StubServer().start(host)
    return stub.root, stub.stop


def stub_fixture(scope: str = "module", **options: Any) -> Any:
    """A pytest fixture named ``stub``: a started ``StubServer(**options)`` for the tests of ``scope``."""
    import pytest

    @pytest.fixture(scope=scope, name="stub")
    def stub() -> Iterator[StubServer]:
        server = StubServer(**options).start()
        yield server
        server.stop()

    return stub


def main() -> None:
    parser = argparse.ArgumentParser(description="A fast OpenAI-compatible stub server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    import uvicorn

    uvicorn.Server(_config(StubServer(), host=args.host, port=args.port)).run()


if __name__ == "__main__":
    main()
