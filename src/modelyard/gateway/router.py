"""The router stage: an endpoint whose policy is ``router`` answers through its tiers.

The policy stage hands a router endpoint's call here instead of to the
traffic split. The endpoint's strategy (`routing.policy`) decides which tiers
to call and what to answer; this file gives it the means — `TierContext`
calls one tier, as a whole answer or as a live stream, and accounts for
every tier's tokens and cost on the call, so the usage record of a routed
request holds the sum and, in ``tiers``, each tier's share.

Work a strategy leaves running after the answer (the speculative check, a
feedback escalation) is accounted in a usage record of its own when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from ..errors import ModelyardError
from ..routing import budget
from ..routing import policy as router_policy
from ..routing.responses import ResponseLog
from ..telemetry.cost import deployment_cost
from ..wire import SSE_DONE, answer_text, gather, replay_stream, sse
from .pipeline import Call

log = logging.getLogger(__name__)


class TierContext:
    """What a strategy may do with one call: call tiers, answer, and say why.

    ``tiers`` are the endpoint's deployments, cheapest first. Every tier
    called is appended to ``call.tiers`` with an ``outcome``: ``answered``
    (its answer went to the client), ``escalated`` (judged not good enough),
    ``checked`` / ``corrected`` (a speculative check), ``error``.
    """

    def __init__(self, call: Call, tiers: list[Any], router: "Router") -> None:
        self.call = call
        self.kind = call.kind
        self.request = call.request
        self.tiers = tiers
        self.router = router
        self.response_id: str | None = None
        #: set when a live stream to the client has ended, however it ended
        self.stream_ended = asyncio.Event()
        call.tiers = []

    # --- facts a strategy decides on -------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self.call.streaming

    @property
    def budget_low(self) -> bool:
        """The endpoint's or the key's budget is running low: lean to cheaper tiers."""
        state = self.call.budget
        return bool(state is not None and state.low)

    def allows(self, tier: Any) -> bool:
        """Whether the budget lets this call use `tier` (local tiers always; paid ones while money is left)."""
        return budget.allows(self.call, tier)

    def refuse_for_budget(self, tier: Any) -> ModelyardError:
        return budget.refusal(self.call, tier)

    @property
    def route(self) -> str:
        return self.call.route

    @route.setter
    def route(self, value: str) -> None:
        self.call.route = value[:64]

    # --- calling tiers -----------------------------------------------------------------

    def _entry(self, tier: Any, prompt: int, completion: int, cost: float, outcome: str, *,
               attach: bool = True) -> dict[str, Any]:
        entry = {"deployment": tier.name, "model": tier.card.id, "prompt_tokens": prompt,
                 "completion_tokens": completion, "cost_usd": cost, "outcome": outcome}
        if attach:
            self.attach(entry)
        return entry

    def attach(self, entry: dict[str, Any]) -> None:
        """Count a tier's work in this call's usage record."""
        call = self.call
        call.tiers.append(entry)
        call.prompt_tokens += entry["prompt_tokens"]
        call.completion_tokens += entry["completion_tokens"]
        call.cost_usd += entry["cost_usd"]
        self._savings()

    def _savings(self) -> None:
        """``saved_usd``: what the answer would have cost from the top tier, less what it did cost.

        Counted only when the top tier is priced per token (a hosted model);
        the answering tier's token counts stand in for the top tier's.
        """
        top = self.tiers[-1].card
        if not (top.price.input_per_1m or top.price.output_per_1m):
            return
        answered = [e for e in self.call.tiers if e["outcome"] == "answered"]
        if not answered:
            return
        a = answered[-1]
        counterfactual = top.price.token_cost(a["prompt_tokens"], a["completion_tokens"])
        self.call.saved_usd = max(counterfactual - self.call.cost_usd, 0.0)

    async def complete(self, tier: Any, *, attach: bool = True, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Call `tier` for a whole answer; returns the body and the tier's entry.

        The entry is counted in the call's usage record unless `attach` is
        false (work that may outlive the call: see `attach`, `record_extra`).
        """
        request = self.request.model_copy(update={"stream": False, "stream_options": None, **overrides})
        t0 = time.perf_counter()
        try:
            if self.kind == "embedding":
                body = await tier.embed(request)
            else:
                body = gather(self.kind, [c async for c in tier.generate(self.kind, request)])
        except ModelyardError:
            self._entry(tier, 0, 0, 0.0, "error", attach=attach)
            raise
        elapsed = time.perf_counter() - t0
        if attach:
            self.call.upstream_s += elapsed
        usage = body.get("usage") or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        return body, self._entry(tier, p, c, deployment_cost(tier, p, c, elapsed), "answered", attach=attach)

    def answer(self, tier: Any, body: dict[str, Any], *, strip_logprobs: bool = False) -> None:
        """Send a whole answer (as JSON, or replayed as a stream to a streaming client)."""
        if strip_logprobs:
            for choice in body.get("choices") or ():
                choice["logprobs"] = None
        self.call.deployment = tier
        self.response_id = body.get("id")
        self.router.responses.answered(self, tier, answer_text(self.kind, body))
        if not self.streaming:
            self.call.body = body
            return
        self.call.ttft_s = time.perf_counter() - self.call.started
        self.call.stream = replay_stream(self.kind, body, include_usage=self.request.include_usage)

    async def stream(self, tier: Any, *, tail: Any = None, after_first: Any = None) -> None:
        """Stream `tier`'s answer to the client as it is generated.

        `tail`, if given, is an async function called when the tier's stream
        has ended, with its text; it returns extra SSE bytes to send before
        ``[DONE]`` (the speculative correction) or None. `after_first`, if
        given, is called once the first chunk with text has been handed to the client.
        """
        request = self.request.model_copy(update={"stream": True})
        t0 = time.perf_counter()
        chunks = tier.generate(self.kind, request)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise ModelyardError("the tier closed the stream without an answer", status=502, code="empty_stream") from None
        except ModelyardError:
            self._entry(tier, 0, 0, 0.0, "error")
            raise
        self.call.deployment = tier
        self.response_id = first.get("id")
        self.call.stream = self._events(tier, first, chunks, t0, tail, after_first)

    async def _events(self, tier: Any, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]], t0: float,
                      tail: Any, after_first: Any = None) -> AsyncIterator[bytes]:
        call = self.call
        want_usage = self.request.include_usage
        key = "delta" if self.kind == "chat" else "text"
        text: list[str] = []
        usage: dict[str, Any] | None = None
        pieces = 0
        entry: dict[str, Any] | None = None
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices")
                if choices:
                    piece = (choices[0].get("delta") or {}).get("content") if key == "delta" else choices[0].get("text")
                    if piece:
                        text.append(piece)
                        if call.ttft_s is None:
                            call.ttft_s = time.perf_counter() - call.started
                    pieces += 1
                    yield sse(chunk)
                elif want_usage:
                    yield sse(chunk)
                if after_first is not None and text:  # the first token, not the role chunk before it
                    after_first()
                    after_first = None
                chunk = await anext(chunks, None)
            elapsed = time.perf_counter() - t0
            call.upstream_s += elapsed
            usage = usage or {"prompt_tokens": 0, "completion_tokens": max(pieces - 1, 0)}
            p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            entry = self._entry(tier, p, c, deployment_cost(tier, p, c, elapsed), "answered")
            full = "".join(text)
            self.router.responses.answered(self, tier, full)
            if tail is not None:
                extra = await tail(full)
                if extra:
                    yield extra
            yield SSE_DONE
        except ModelyardError as err:
            call.status, call.error_code = err.status, err.code
            yield sse(err.body()) + SSE_DONE
        finally:
            self.stream_ended.set()
            if entry is None:  # cut off: count what was sent
                elapsed = time.perf_counter() - t0
                self._entry(tier, int((usage or {}).get("prompt_tokens") or 0), max(pieces - 1, 0),
                            deployment_cost(tier, 0, max(pieces - 1, 0), elapsed), "answered")
            await chunks.aclose()  # type: ignore[attr-defined]

    # --- work after the answer -----------------------------------------------------------

    def background(self, coro: Any) -> None:
        self.router.background(coro)

    def record_extra(self, tier: Any, entry: dict[str, Any], route: str) -> None:
        """A usage record for tier work that ended after the call's own record was written."""
        self.router.record_extra(self.call, tier, entry, route)


class Router:
    """Runs a router endpoint's strategy for each call; owns the work left running after answers."""

    def __init__(self, responses: ResponseLog, writer: Any, metrics: Any, *, models: Any = None,
                 budget: Any = None) -> None:
        self.responses = responses
        self.budget = budget  # routing.budget.BudgetTracker
        self.writer = writer
        self.metrics = metrics
        self.models = models or router_policy.Models()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._strategies: dict[str, tuple[Any, Any]] = {}

    async def __call__(self, call: Call) -> None:
        endpoint = call.endpoint
        spec = endpoint.spec
        tiers = []
        for name in spec.tiers:
            dep = endpoint.deployments.get(name)
            if dep is None:
                raise ModelyardError(f"endpoint '{endpoint.name}' routes to tier '{name}', which is not deployed yet",
                                     status=503, param="tiers", code="tier_not_deployed")
            tiers.append(dep)
        cached = self._strategies.get(endpoint.name)
        if cached is None or cached[0] is not spec:  # the spec object is replaced on every change
            cached = self._strategies[endpoint.name] = (spec, router_policy.build(spec.router, self.models, endpoint.name))
        strategy = cached[1]
        ctx = TierContext(call, tiers, self)
        await strategy.answer(ctx)

    def background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router background work failed", exc_info=task.exception())

    def submit_usage(self, record: dict[str, Any]) -> None:
        """A usage record for work outside the pipeline's record stage; counted against budgets too."""
        self.writer.submit(record)
        if self.budget is not None:
            self.budget.count(record)

    def record_extra(self, call: Call, tier: Any, entry: dict[str, Any], route: str) -> None:
        self.submit_usage({
            "request_id": call.request_id,
            "endpoint": call.endpoint_name,
            "deployment": tier.name,
            "model": tier.card.id,
            "key_id": call.key.id if call.key is not None else None,
            "kind": call.kind,
            "prompt_tokens": entry["prompt_tokens"],
            "completion_tokens": entry["completion_tokens"],
            "cost_usd": entry["cost_usd"],
            "status": 200,
            "route": route[:64],
            "tiers": [entry],
        })

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
