"""The dispatch stage: send the call to its deployment and account for it.

Non-streaming calls get the whole body; streaming calls get an iterator of
server-sent events. Either way the deployment is called through
`telemetry.metering`, which counts the tokens, the time to the first token and
the cost, and always asks the upstream for a usage chunk; the client sees
that chunk only if it asked for it (``stream_options.include_usage``), as
with OpenAI.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from ..errors import ModelyardError
from ..telemetry.budget import admit as admit_budget
from ..telemetry.metering import MeteredStream, MeteringError, complete
from ..wire import SSE_DONE, sse
from .pipeline import Call, Next


async def dispatch(call: Call, call_next: Next) -> None:
    deployment = call.deployment
    await admit_budget(call, deployment)  # 429 when the budget is spent and the deployment is paid
    if call.kind == "embedding" or not call.streaming:
        try:
            call.body, metered = await complete(deployment, call.kind, call.request)
        except MeteringError as err:
            call.add(err.metered)
            raise
        call.add(metered)
        return
    stream = MeteredStream(deployment, call.kind, call.request, since=call.started)
    try:
        first = await stream.start()  # a failure before the first chunk is still a plain error response
    except MeteringError as err:
        call.add(err.metered)
        raise
    call.upstream_s = stream.elapsed_s()  # the upstream's share of the first chunk, for the overhead header
    call.stream = _events(call, stream, first)
    await call_next(call)


#: SSE events the gateway holds for a client that reads slower than its upstream answers
QUEUED_EVENTS = 256


async def _events(call: Call, stream: MeteredStream, first: dict[str, Any]):
    """The client's SSE bytes. Events that arrive together leave together.

    A pump task reads the upstream and queues each event's bytes; this
    generator takes everything queued at once and sends it as one write. A
    fast upstream's 20 events read in one go cost one write instead of 20
    (on a small VM each write that wakes the other CPU costs ~17 µs); a slow
    one, like a model generating token by token, is forwarded event by event.

    The queue is bounded (`QUEUED_EVENTS`): a client that stops reading stops
    the pump, and so the reading of the upstream, instead of the gateway
    buffering a whole answer for it.
    """
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUED_EVENTS)
    pump = asyncio.create_task(_pump(call, stream, first, queue))
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
            metered = await stream.aclose()
        call.upstream_s = 0.0  # until now the share of the first chunk (for the overhead header); now the whole
        call.add(metered)


async def _pump(call: Call, stream: MeteredStream, first: dict[str, Any], queue: asyncio.Queue[bytes | None]) -> None:
    want_usage = call.request.include_usage
    put = queue.put

    def forwarded(chunk: dict[str, Any]) -> bool:
        return bool(chunk.get("choices")) or want_usage or not stream.usage

    try:
        if forwarded(first):
            await put(sse(first))
        async for chunk in stream:
            if forwarded(chunk):
                await put(sse(chunk))
        await put(SSE_DONE)
    except ModelyardError as err:
        call.status, call.error_code = err.status, err.code
        await put(sse(err.body()) + SSE_DONE)
    finally:
        task = asyncio.current_task()
        if task is None or not task.cancelling():  # cancelled: nobody reads any more
            await put(None)
