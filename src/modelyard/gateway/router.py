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
from typing import Any, AsyncIterator, Callable, Coroutine

from ..errors import ModelyardError
from ..telemetry import budget
from ..routing import policy as router_policy
from ..routing.context import Tail
from ..routing.models import Models
from ..routing.responses import ResponseLog
from ..telemetry import metering
from ..serving.deployment import Deployment
from ..telemetry.metering import Ledger, MeteredStream, MeteringError, TierStep, step_record
from ..telemetry.router_report import fallback_reason
from ..wire import SSE_DONE, AnyRequest, answer_text, replay_stream, sse
from .pipeline import Call

log = logging.getLogger(__name__)


class TierContext:
    """What a strategy may do with one call (`routing.context.TierCalls`): call tiers, answer, say why.

    ``tiers`` are the endpoint's deployments, cheapest first. Every tier
    called is appended to ``call.tiers`` as a `TierStep` with an ``outcome``:
    ``answered`` (its answer went to the client), ``escalated`` (judged not
    good enough), ``checked`` / ``corrected`` (a speculative check), ``error``.
    """

    def __init__(self, call: Call, tiers: list[Deployment], router: "Router") -> None:
        self.call = call
        self.kind: str = call.kind
        self.request: AnyRequest = call.request
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

    @property
    def endpoint_name(self) -> str:
        return self.call.endpoint_name

    @property
    def request_headers(self) -> Any:
        return self.call.request_headers

    def allows(self, tier: Deployment) -> bool:
        """Whether the budget lets this call use `tier` (local tiers always; paid ones while money is left)."""
        return budget.allows(self.call, tier)

    def refuse_for_budget(self, tier: Deployment) -> ModelyardError:
        return budget.refusal(self.call, tier)

    @property
    def route(self) -> str:
        return self.call.route

    @route.setter
    def route(self, value: str) -> None:
        self.call.route = value[:64]

    # --- calling tiers -----------------------------------------------------------------

    def attach(self, step: TierStep) -> None:
        """Count a tier's work in this call's usage record."""
        self.call.tiers.append(step)
        self.call.add(step.metered)
        self._savings()

    def _savings(self) -> None:
        """``saved_usd``: what the answer would have cost from the top tier, less what it did cost.

        Counted only when the top tier is priced per token (a hosted model);
        the answering tier's token counts stand in for the top tier's.
        """
        top = self.tiers[-1].card
        if not (top.price.input_per_1m or top.price.output_per_1m):
            return
        answered = [s for s in self.call.tiers if s.outcome == "answered"]
        if not answered:
            return
        a = answered[-1].metered
        counterfactual = top.price.token_cost(a.prompt_tokens, a.completion_tokens)
        self.call.saved_usd = max(counterfactual - self.call.cost_usd, 0.0)

    async def complete(self, tier: Deployment, *, attach: bool = True, **overrides: Any) -> tuple[dict[str, Any], TierStep]:
        """Call `tier` for a whole answer; returns the body and the tier's step.

        The step is counted in the call's usage record unless `attach` is
        false (work that may outlive the call: see `attach`, `record_extra`).
        A failed call is counted too (outcome ``error``), then raised.
        """
        request = self.request.model_copy(update={"stream": False, "stream_options": None, **overrides})
        if attach:  # counted in this call's record: with shared budgets, reserved across gateways first
            await budget.admit(self.call, tier)
        try:
            body, metered = await metering.complete(tier, self.kind, request)
        except MeteringError as err:
            if attach:
                self.attach(err.metered.step("error"))
            raise
        step = metered.step("answered")
        if attach:
            self.attach(step)
        return body, step

    def answer(self, tier: Deployment, body: dict[str, Any], *, strip_logprobs: bool = False) -> None:
        """Send a whole answer (as JSON, or replayed as a stream to a streaming client)."""
        if strip_logprobs:
            for choice in body.get("choices") or ():
                choice["logprobs"] = None
        self.call.deployment = tier
        body["id"] = self.response_id = self._own_id()
        self._log_answer(tier, answer_text(self.kind, body))
        if not self.streaming:
            self.call.body = body
            return
        self.call.ttft_s = time.perf_counter() - self.call.started
        self.call.stream = replay_stream(self.kind, body, include_usage=self.request.include_usage)

    def _log_answer(self, tier: Deployment, text: str) -> None:
        call = self.call
        self.router.responses.answered(
            self.response_id, endpoint=call.endpoint_name, key_id=call.key.id if call.key is not None else None,
            request=call.request, kind=call.kind, tier=tier.name, tier_index=self.tiers.index(tier), text=text,
            checking=call.route.startswith("speculative:") and "+" in call.route)

    async def stream(self, tier: Deployment, *, tail: Tail | None = None,
                     after_first: Callable[[], None] | None = None) -> None:
        """Stream `tier`'s answer to the client as it is generated.

        `tail`, if given, is an async function called when the tier's stream
        has ended, with its text; it returns extra SSE bytes to send before
        ``[DONE]`` (the speculative correction) or None. `after_first`, if
        given, is called once the first chunk with text has been handed to the client.
        """
        request = self.request.model_copy(update={"stream": True})
        await budget.admit(self.call, tier)  # with shared budgets, reserved across gateways first
        stream = MeteredStream(tier, self.kind, request, since=self.call.started)
        try:
            first = await stream.start()
        except MeteringError as err:
            self.attach(err.metered.step("error"))
            raise
        self.call.deployment = tier
        self.response_id = self._own_id()
        self.call.stream = self._events(tier, stream, first, tail, after_first)

    def _own_id(self) -> str:
        """The answer's id as the client sees it (and rates it by): made from the call's request id, so unique,
        whatever ids the tiers send (a tier that repeats ids must not overwrite another answer's log)."""
        return ("cmpl-" if self.kind == "completion" else "chatcmpl-") + self.call.request_id.removeprefix("req-")

    async def _events(self, tier: Deployment, stream: MeteredStream, first: dict[str, Any], tail: Tail | None,
                      after_first: Callable[[], None] | None) -> AsyncIterator[bytes]:
        call = self.call
        want_usage = self.request.include_usage
        ended = False
        try:
            own_id = self.response_id
            async for chunk in _with_first(first, stream):
                if chunk.get("choices") or want_usage:
                    chunk["id"] = own_id
                    yield sse(chunk)
                if after_first is not None and stream.text:  # the first token, not the role chunk before it
                    after_first()
                    after_first = None
            ended = True
            full = stream.text
            self.attach((await stream.aclose()).step("answered"))
            self._log_answer(tier, full)
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
            if not ended:  # failed or cut off: count what was sent, priced like any other call
                self.attach((await stream.aclose()).step("answered"))

    # --- work after the answer -----------------------------------------------------------

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        self.router.background(coro)

    def record_extra(self, step: TierStep, route: str) -> None:
        """A usage record for tier work that ended after the call's own record was written."""
        call = self.call
        self.router.ledger.submit(step_record(step, endpoint=call.endpoint_name, kind=call.kind,
                                              key_id=call.key.id if call.key is not None else None, route=route,
                                              request_id=call.request_id))

    async def checked(self, tier: Deployment | None, corrected_text: str | None, similarity: float | None, *,
                      failed: str | None = None) -> None:
        """Log the speculative check's verdict on this call's answer."""
        await self.router.responses.checked(self.response_id, tier, corrected_text, similarity, failed=failed)


async def _with_first(first: dict[str, Any], stream: MeteredStream) -> AsyncIterator[dict[str, Any]]:
    yield first
    async for chunk in stream:
        yield chunk


class Router:
    """Runs a router endpoint's strategy for each call; owns the work left running after answers."""

    def __init__(self, responses: ResponseLog, writer: Any, metrics: Any, *, models: Any = None,
                 budget: Any = None) -> None:
        self.responses = responses
        # usage records of work that ends after its call: written, and counted against the budgets
        self.ledger = Ledger(writer, budget)
        self.metrics = metrics
        self.models = models or Models()
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
        try:
            await strategy.answer(ctx)
        finally:
            reason = fallback_reason(call.route)
            if reason is not None and self.metrics is not None:
                self.metrics.router_fallback(endpoint.name, reason)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router background work failed", exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.responses.interrupted()
