"""A scriptable `StepCalls` for engine tests: deterministic answers, delays, failures, and a log of calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.flows.steps import CURRENT_NODE, StepResult


@dataclass
class Call:
    kind: str
    endpoint: str
    payload: Any
    params: dict[str, Any]
    node: str | None
    outcome: str = "running"  # running | ok | error | cancelled


@dataclass
class FakeSteps:
    """Answers every step; what, how fast and how often it fails is set per endpoint (or index).

    A chat answer is ``answers[endpoint]`` (a string, or a function of the messages), else
    ``"<endpoint>: <last message>"``; a completion's likewise of the prompt. ``failures[endpoint]`` is a
    list of exceptions raised by the next calls, in order. ``stream_pieces`` splits a streamed answer.
    """

    delays: dict[str, float] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    hits: list[dict[str, Any]] = field(default_factory=lambda: [
        {"text": "Employees get 25 days of paid leave.", "score": 0.92, "metadata": {"page": 4},
         "source": "handbook.pdf"},
        {"text": "Leave requests go to your manager.", "score": 0.81, "metadata": {"page": 5}},
    ])
    stream_pieces: int = 4
    stream_gap_s: float = 0.0
    #: raised by a stream after half its deltas
    stream_error: BaseException | None = None
    streams: list[FakeStream] = field(default_factory=list)
    tokens: tuple[int, int] = (10, 5)
    cost_usd: float = 0.001
    calls: list[Call] = field(default_factory=list)

    async def _step(self, kind: str, endpoint: str, payload: Any, params: dict[str, Any],
                    answer: Callable[[], Any]) -> StepResult:
        call = Call(kind, endpoint, payload, dict(params), CURRENT_NODE.get())
        self.calls.append(call)
        try:
            if self.delays.get(endpoint):
                await asyncio.sleep(self.delays[endpoint])
            pending = self.failures.get(endpoint)
            if pending:
                call.outcome = "error"
                raise pending.pop(0)
            value = answer()
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        call.outcome = "ok"
        prompt, completion = self.tokens if kind in ("chat", "chat_stream", "completion") else (self.tokens[0], 0)
        if kind == "retrieve":
            prompt = 0
        return StepResult(value=value, endpoint=endpoint, deployment=f"{endpoint}-d1", cache="miss",
                          prompt_tokens=prompt, completion_tokens=completion,
                          cost_usd=self.cost_usd if kind != "retrieve" else 0.0, latency_ms=1.0,
                          request_id=f"req-{len(self.calls)}")

    def _text(self, endpoint: str, given: Any, fallback: str) -> str:
        answer = self.answers.get(endpoint)
        if answer is None:
            return f"{endpoint}: {fallback}"
        return answer(given) if callable(answer) else answer

    async def chat(self, endpoint: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> StepResult:
        return await self._step("chat", endpoint, messages, params,
                                lambda: self._text(endpoint, messages, messages[-1]["content"]))

    async def complete(self, endpoint: str, prompt: str, params: dict[str, Any]) -> StepResult:
        return await self._step("completion", endpoint, prompt, params,
                                lambda: self._text(endpoint, prompt, prompt.strip().splitlines()[-1]))

    async def embed(self, endpoint: str, texts: list[str]) -> StepResult:
        return await self._step("embed", endpoint, texts, {},
                                lambda: [[float(len(t)), 0.5, -0.5] for t in texts])

    async def retrieve(self, index: str, query: Any, top_k: int, filter: dict[str, Any] | None) -> StepResult:
        return await self._step("retrieve", index, query, {"top_k": top_k, "filter": filter},
                                lambda: self.hits[:top_k])

    async def chat_stream(self, endpoint: str, messages: list[dict[str, Any]],
                          params: dict[str, Any]) -> FakeStream:
        result = await self._step("chat_stream", endpoint, messages, params,
                                  lambda: self._text(endpoint, messages, messages[-1]["content"]))
        stream = FakeStream(result, self.stream_pieces, self.stream_gap_s, self.stream_error)
        self.streams.append(stream)
        return stream


class FakeStream:
    """A whole answer given out in ``pieces`` deltas, ``gap_s`` apart."""

    def __init__(self, result: StepResult, pieces: int, gap_s: float, error: BaseException | None = None) -> None:
        self._result = result
        text = result.value
        size = max(1, -(-len(text) // pieces))
        self.deltas = [text[i: i + size] for i in range(0, len(text), size)]
        self.gap_s = gap_s
        self.error = error
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[str]:
        for i, delta in enumerate(self.deltas):
            if self.error is not None and i == len(self.deltas) // 2:
                raise self.error
            await asyncio.sleep(self.gap_s)
            yield delta

    async def result(self) -> StepResult:
        return self._result

    async def aclose(self) -> None:
        self.closed = True
