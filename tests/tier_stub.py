"""A scriptable OpenAI-compatible server that stands in for hosted router tiers in tests.

Each tier is a path prefix: a card whose ``base_url`` is ``{root}/large/v1``
is tier ``large``. A test scripts a tier by setting ``stub.tiers["large"]``::

    stub.tiers["large"] = Script(answer="Paris.", logprob=-0.05, delay_s=0.0)
    stub.tiers["small"] = Script(answers={"capital": "I don't know."}, logprob=-2.5)

``answers`` maps a phrase of the last user message to the reply (first match
wins), else ``answer``; ``status`` other than 200 answers with an OpenAI
error; ``delay_s`` waits before answering (before the first chunk when
streaming, and ``chunk_delay_s`` between chunks). ``stub.calls[tier]``
counts requests. The gateway reaches it through the same hosted-API client
as any real provider.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.cards import hosted_card


@dataclass
class Script:
    answer: str = "Paris is the capital of France."
    answers: dict[str, str] = field(default_factory=dict)
    logprob: float = -0.1
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    status: int = 200

    def reply(self, prompt: str) -> str:
        for phrase, text in self.answers.items():
            if phrase.lower() in prompt.lower():
                return text
        return self.answer


class TierStub:
    def __init__(self) -> None:
        self.tiers: dict[str, Script] = {}
        self.calls: dict[str, int] = {}
        self.root = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def base_url(self, tier: str) -> str:
        return f"{self.root}/{tier}/v1"

    async def _chat(self, request: Request) -> Any:
        tier = request.path_params["tier"]
        self.calls[tier] = self.calls.get(tier, 0) + 1
        script = self.tiers.get(tier, Script())
        body = await request.json()
        prompt = next((m.get("content") or "" for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if script.status != 200:
            return JSONResponse({"error": {"message": f"tier {tier} failed on purpose", "type": "server_error",
                                           "param": None, "code": "stub_failure"}}, status_code=script.status)
        text = script.reply(prompt)
        words = [w + " " for w in text.split(" ")]
        words[-1] = words[-1][:-1]
        ident = f"chatcmpl-{tier}-{time.time_ns()}"
        usage = {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": len(words),
                 "total_tokens": max(1, len(prompt) // 4) + len(words)}
        logprobs = ({"content": [{"token": w, "logprob": script.logprob, "bytes": None, "top_logprobs": []} for w in words]}
                    if body.get("logprobs") else None)
        if not body.get("stream"):
            return JSONResponse({"id": ident, "object": "chat.completion", "created": int(time.time()), "model": tier,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "logprobs": logprobs, "finish_reason": "stop"}], "usage": usage})

        async def events():
            base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": tier}
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                               "finish_reason": None}]}) + "\n\n"
            for w in words:
                if script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
                yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": w},
                                                                   "finish_reason": None}]}) + "\n\n"
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def start(self) -> "TierStub":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        app = Starlette(routes=[Route("/{tier}/v1/chat/completions", self._chat, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started and time.time() < deadline:
            time.sleep(0.02)
        self.root = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def tier_cards(stub: TierStub, tiers: dict[str, tuple[float, float]]) -> str:
    """A catalog file with one hosted card per tier (``{tier: (input_per_1m, output_per_1m)}``)."""
    return "".join(hosted_card(f"tier-{tier}", stub.base_url(tier), price=price) for tier, price in tiers.items())
