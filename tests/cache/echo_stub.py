"""An OpenAI-compatible upstream for the cache tests whose answer names the question.

``POST /v1/chat/completions`` and ``/v1/completions`` answer ``"answer to:
<last user message or prompt>"`` (usage: 10 prompt + 20 completion tokens),
streamed in word chunks when asked. The ``user`` field scripts it, since the
gateway does not forward client headers: ``"fail"`` answers 500, ``"cut"``
ends with ``finish_reason: "length"``, ``"slow"`` waits 200 ms first.
``GET /_calls`` says how many generations it has served.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Callable

import orjson

USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


class EchoStub:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            body = orjson.dumps({"calls": self.calls}) if scope["path"] == "/_calls" else b'{"status":"ok"}'
            return await _send(send, 200, body)
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        req = orjson.loads(raw)
        chat = scope["path"].endswith("/chat/completions")
        if req.get("user") == "fail":
            return await _send(send, 500, orjson.dumps({"error": {"message": "scripted failure", "type": "server_error",
                                                                  "param": None, "code": "stub_error"}}))
        if req.get("user") == "slow":
            await asyncio.sleep(0.2)
        self.calls += 1
        question = req["messages"][-1]["content"] if chat else req["prompt"]
        text = f"answer to: {question}"
        finish = "length" if req.get("user") == "cut" else "stop"
        base: dict[str, Any] = {"id": "stub-1", "created": 1_700_000_000, "model": "echo"}
        if not req.get("stream"):
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion" if chat else "text_completion"
            return await _send(send, 200, orjson.dumps({**base, "object": obj, "choices": [choice], "usage": USAGE}))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        base["object"] = "chat.completion.chunk" if chat else "text_completion"
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            choice = ({"index": 0, "delta": {"content": piece, **({"role": "assistant"} if i == 0 else {})},
                       "finish_reason": None} if chat else {"index": 0, "text": piece, "finish_reason": None})
            await send({"type": "http.response.body", "body": _sse({**base, "choices": [choice]}), "more_body": True})
        last = {"index": 0, "delta": {}, "finish_reason": finish} if chat else {"index": 0, "text": "", "finish_reason": finish}
        tail = _sse({**base, "choices": [last]})
        if (req.get("stream_options") or {}).get("include_usage"):
            tail += _sse({**base, "choices": [], "usage": USAGE})
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _send(send: Callable, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def start_echo_stub() -> tuple[str, Callable[[], None]]:
    """Serve an `EchoStub` on a free port in a daemon thread: (root URL, stop)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(EchoStub(), log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.005)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return f"http://127.0.0.1:{port}", stop
