"""The dispatch stage: send the call to its deployment and account for it.

Non-streaming calls get the whole body; streaming calls get an iterator of
server-sent events that counts tokens and the time to the first token as
they pass. The upstream is always asked for a usage chunk so every token is
accounted; the client sees that chunk only if it asked for it
(``stream_options.include_usage``), as with OpenAI.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import anyio

from ..errors import ModelyardError
from ..routing.budget import check as check_budget
from ..telemetry.cost import deployment_cost
from ..wire import SSE_DONE, gather, sse
from .pipeline import Call, Next


async def dispatch(call: Call, call_next: Next) -> None:
    deployment = call.deployment
    check_budget(call, deployment)  # 429 when the budget is spent and the deployment is paid
    t0 = time.perf_counter()
    if call.kind == "embedding":
        body = await deployment.embed(call.request)
        call.upstream_s = time.perf_counter() - t0
        _account(call, body.get("usage"))
        call.body = body
        return
    chunks = deployment.generate(call.kind, call.request)
    if not call.streaming:
        body = gather(call.kind, [c async for c in chunks])
        call.upstream_s = time.perf_counter() - t0
        _account(call, body.get("usage"))
        call.body = body
        return
    try:
        first = await anext(chunks)  # a failure before the first chunk is still a plain error response
    except StopAsyncIteration:
        raise ModelyardError("the deployment closed the stream without an answer", status=502, code="empty_stream") from None
    call.upstream_s = time.perf_counter() - t0  # until the stream ends: the upstream's share of the first chunk
    call.stream = _events(call, first, chunks, t0)
    await call_next(call)


async def _events(call: Call, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]], t0: float) -> AsyncIterator[bytes]:
    """The client's SSE bytes. Events that arrive together leave together.

    A pump task reads the upstream and queues each event's bytes; this
    generator takes everything queued at once and sends it as one write. A
    fast upstream's 20 events read in one go cost one write instead of 20
    (on a small VM each write that wakes the other CPU costs ~17 µs); a slow
    one, like a model generating token by token, is forwarded event by event.
    """
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    state = {"pieces": 0, "usage": None}
    pump = asyncio.create_task(_pump(call, first, chunks, queue, state))
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            parts = [item]
            ended = False
            while not queue.empty():
                nxt = queue.get_nowait()
                if nxt is None:
                    ended = True
                    break
                parts.append(nxt)
            yield b"".join(parts) if len(parts) > 1 else item
            if ended:
                break
        await pump
    finally:
        if not pump.done():
            pump.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(pump, return_exceptions=True)
            await chunks.aclose()  # type: ignore[attr-defined]
        call.upstream_s = time.perf_counter() - t0
        # Without a usage chunk (a cut-off stream), each content chunk counts as one token.
        _account(call, state["usage"] or {"prompt_tokens": 0, "completion_tokens": max(state["pieces"] - 1, 0)})


async def _pump(call: Call, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]],
                queue: asyncio.Queue[bytes | None], state: dict[str, Any]) -> None:
    want_usage = call.request.include_usage
    text_key = "delta" if call.kind == "chat" else "text"
    put = queue.put_nowait
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            if chunk.get("usage"):
                state["usage"] = chunk["usage"]
            choices = chunk.get("choices")
            if choices:
                if call.ttft_s is None and _has_text(choices, text_key):
                    call.ttft_s = time.perf_counter() - call.started
                state["pieces"] += 1
                put(sse(chunk))
            elif want_usage or not state["usage"]:
                put(sse(chunk))
            chunk = await anext(chunks, None)
        put(SSE_DONE)
    except ModelyardError as err:
        call.status, call.error_code = err.status, err.code
        put(sse(err.body()) + SSE_DONE)
    finally:
        put(None)


def _has_text(choices: list[dict[str, Any]], key: str) -> bool:
    c = choices[0]
    if key == "delta":
        return bool((c.get("delta") or {}).get("content"))
    return bool(c.get("text"))


def _account(call: Call, usage: dict[str, Any] | None) -> None:
    if usage:
        call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        call.completion_tokens = int(usage.get("completion_tokens") or 0)
    call.cost_usd = deployment_cost(call.deployment, call.prompt_tokens, call.completion_tokens, call.upstream_s)
