"""Fast local first: answer from the cheapest tier at once, check with the strongest, correct.

The cheapest tier answers (streaming as it generates, so the time to the
first token is the cheap tier's) while the strongest tier is asked the same
question in parallel (for a stream, once the cheap tier's first chunk is
out, so the two do not compete for that first token). When both are done, the two answers are compared by
the cosine similarity of their sentence embeddings; under ``similarity``
the strong answer is a correction:

- a streaming client still connected gets, before ``data: [DONE]``, one
  extra event::

      event: modelyard.correction
      data: {"id": ..., "object": "chat.completion.chunk", "choices": [],
             "modelyard_correction": {"content": ..., "tier": ..., "similarity": 0.41}}

  (``choices`` is empty, like OpenAI's usage chunk, so clients that read
  ``chunk.choices`` skip it; the official ``openai`` client yields it with
  the ``modelyard_correction`` field). The stream waits for the strong
  answer at most ``grace_ms`` after the fast one ends;
- everyone can read the latest answer, and whether it was corrected, at
  ``GET /v1/responses/{id}`` — also when the strong answer came after the
  stream closed, or for a non-streaming client, who gets the fast answer
  at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ..errors import ModelyardError
from ..telemetry.metering import MeteringError, TierStep
from ..wire import answer_text, sse
from .context import TierCalls, respond
from .models import Models
from .spec import SpeculativeRouter

log = logging.getLogger(__name__)


class SpeculativePolicy:
    def __init__(self, spec: SpeculativeRouter, models: Models) -> None:
        self.spec = spec
        self.models = models

    async def answer(self, ctx: TierCalls) -> None:
        fast, strong = ctx.tiers[0], ctx.tiers[-1]
        check_strong = ctx.allows(strong) and not ctx.budget_low
        ctx.route = f"speculative:{fast.name}" + (f"+{strong.name}" if check_strong else "")
        if not check_strong:  # nothing to check with: the fast answer stands
            await respond(ctx, fast)
            return
        started = time.perf_counter()
        if ctx.streaming and ctx.kind != "embedding":
            # The strong tier is asked once the fast stream's first chunk is on its way to the client: the
            # check is not urgent, and on a small machine it would otherwise compete with that first token.
            pending: asyncio.Future = asyncio.get_running_loop().create_future()
            taken: list[bool] = []
            asked: list[bool] = []

            def ask_strong() -> None:
                asked.append(True)
                task = asyncio.ensure_future(ctx.complete(strong, attach=False))
                task.add_done_callback(lambda t: _settle(pending, t))

            async def tail(text: str) -> bytes | None:
                taken.append(True)
                return await self._tail(ctx, pending, text, started)

            await ctx.stream(fast, tail=tail, after_first=ask_strong)
            ctx.background(self._unless_taken(ctx, pending, taken, asked))
            return
        pending = asyncio.ensure_future(ctx.complete(strong, attach=False))
        try:
            body, _ = await ctx.complete(fast)
        except BaseException:
            pending.cancel()
            raise
        ctx.answer(fast, body)
        ctx.background(self._check_later(ctx, pending, answer_text(ctx.kind, body), in_call=False))

    async def _unless_taken(self, ctx: TierCalls, pending: asyncio.Future, taken: list, asked: list) -> None:
        """A client that hung up before the fast stream ended never reached the check: still account the
        strong tier's work (without a verdict: there is no whole fast answer to compare)."""
        await ctx.stream_ended.wait()
        if taken or not asked:  # checked in the stream, or the client left before the strong tier was asked
            return
        strong = ctx.tiers[-1]
        try:
            _body, step = await pending
        except MeteringError as err:
            step = err.metered.step("error")
        else:
            step.outcome = "checked"
        ctx.record_extra(step, f"speculative-check:{strong.name}")

    async def _tail(self, ctx: TierCalls, pending: asyncio.Future, fast_text: str, started: float) -> bytes | None:
        """Runs when the fast stream has ended: wait for the strong answer within the grace period."""
        remaining = self.spec.grace_ms / 1000 - (time.perf_counter() - started)
        try:
            await asyncio.wait_for(asyncio.shield(pending), timeout=max(remaining, 0.0))
        except asyncio.TimeoutError:
            ctx.background(self._check_later(ctx, pending, fast_text, in_call=False))
            return None
        except ModelyardError:
            pass  # the check records the failure
        correction = await self._check_later(ctx, pending, fast_text, in_call=True)
        if correction is None:
            return None
        event = {"id": ctx.response_id, "object": "chat.completion.chunk" if ctx.kind == "chat" else "text_completion",
                 "choices": [], "modelyard_correction": correction}
        return sse(event, event="modelyard.correction")

    async def _check_later(self, ctx: TierCalls, pending: asyncio.Future, fast_text: str, *, in_call: bool) -> dict | None:
        """Compare the strong answer with the fast one; store the verdict. Returns the correction, if any."""
        strong = ctx.tiers[-1]
        try:
            body, step = await pending
        except MeteringError as err:
            log.warning("speculative check of %s by %s failed: %s", ctx.endpoint_name, strong.name, err.message)
            self._count(ctx, err.metered.step("error"), in_call)
            await ctx.checked(None, None, None, failed=err.message)
            return None
        strong_text = answer_text(ctx.kind, body)
        vectors = await asyncio.to_thread(self.models.embed, [fast_text, strong_text])
        similarity = float(np.dot(vectors[0], vectors[1]))
        corrected = similarity < self.spec.similarity
        step.outcome = "corrected" if corrected else "checked"
        step.extra["similarity"] = round(similarity, 4)
        self._count(ctx, step, in_call)
        await ctx.checked(strong, strong_text if corrected else None, similarity)
        if not corrected:
            return None
        return {"content": strong_text, "tier": strong.name, "similarity": round(similarity, 4)}

    @staticmethod
    def _count(ctx: TierCalls, step: TierStep, in_call: bool) -> None:
        if in_call:
            ctx.attach(step)
        else:  # the call's usage record is written already: the check gets one of its own
            ctx.record_extra(step, f"speculative-check:{step.deployment.name}")


def _settle(future: asyncio.Future, task: asyncio.Task) -> None:
    """Hand a finished task's outcome to `future` (which the tail and the hang-up guard await)."""
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(task.result())
