"""The request path, read top-down: record ▶ auth ▶ policy ▶ mirror ▶ dispatch.

Every OpenAI request becomes a `Call` that travels through a short chain of
stages sharing one signature, ``async def stage(call, call_next)``. A stage
may act before the rest of the chain (auth refuses a bad key), after it
(record writes the usage line) or instead of it (a cache answers). Each stage
is its own file, so it can be read, tested and reordered alone.

``record`` is the outermost stage so that it sees every outcome: answers,
refusals and failures, and — for streams — the end of the stream, which
comes after the chain has returned. Later stages (budget, cache) slot in
between auth and policy.

A stage leaves the answer on the call: ``call.body`` (a whole response) or
``call.stream`` (server-sent event bytes). The server only turns that into
HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from ..errors import ModelyardError
from ..telemetry.metering import Metered, TierStep
from ..wire import AnyRequest, new_id

Next = Callable[["Call"], Awaitable[None]]
Stage = Callable[["Call", Next], Awaitable[None]]


@dataclass(slots=True)
class Call:
    """One request on its way through the gateway, and what happened to it."""

    kind: str  # chat | completion | embedding | flow (a flow run through /api/flows/NAME/run)
    request: AnyRequest
    api_key: str | None
    #: a deployment named by the client (header ``modelyard-deployment``), bypassing the split
    target: str | None = None
    #: the client's HTTP request headers (read-only; ``cache-control``, ``x-modelyard-max-cost`` …)
    request_headers: Any = None
    request_id: str = field(default_factory=lambda: new_id("req"))
    started: float = field(default_factory=time.perf_counter)
    key: Any = None  # KeyInfo once authenticated
    endpoint: Any = None  # serving.endpoints.Endpoint
    deployment: Any = None  # serving.deployment.Deployment
    route: str = ""
    cache: str = "off"
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    status: int = 200
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    ttft_s: float | None = None
    upstream_s: float = 0.0
    finished: float | None = None
    #: the batch job this call belongs to (None for live traffic)
    batch_id: str | None = None
    #: a cached answer: what the original generation cost
    saved_tokens: int = 0
    saved_usd: float = 0.0
    #: a routed call: each tier called, in order (see `UsageRecord.tiers`)
    tiers: list[TierStep] | None = None
    #: the tightest spending limit left for this call (`telemetry.budget.BudgetState`; None: no budget)
    budget: Any = None
    #: its estimated cost, reserved on budget counters shared with other gateways (`telemetry.budget.Reservation`)
    reservation: Any = None
    #: response headers a stage adds (``x-modelyard-cache``, ``x-modelyard-route`` …)
    headers: dict[str, str] = field(default_factory=dict)
    #: a call answered by a flow: the flow's name, and once the run ended its trace (`flows.trace.Trace`)
    flow: str | None = None
    trace: Any = None
    #: a flow's step: the request id of the flow call it belongs to
    parent_id: str | None = None

    @property
    def streaming(self) -> bool:
        return bool(getattr(self.request, "stream", False))

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.name if self.endpoint is not None else self.request.model

    @property
    def deployment_name(self) -> str:
        return self.deployment.name if self.deployment is not None else ""

    def add(self, metered: Metered) -> None:
        """Count one deployment call's tokens, busy time and cost on this call (a routed call adds each tier
        whose work is its own). The first time to first token seen is the call's."""
        self.prompt_tokens += metered.prompt_tokens
        self.completion_tokens += metered.completion_tokens
        self.cost_usd += metered.cost_usd
        self.upstream_s += metered.busy_s
        if self.ttft_s is None and metered.ttft_s is not None:
            self.ttft_s = metered.ttft_s

    def elapsed_s(self) -> float:
        return (self.finished or time.perf_counter()) - self.started


def resolve_endpoint(call: Call, endpoints: Any) -> Any:
    """The call's endpoint (its ``model``), looked up once for all stages; None when no endpoint has
    that name (the policy stage answers 404 for it)."""
    if call.endpoint is None:
        try:
            call.endpoint = endpoints.get(call.request.model)
        except ModelyardError:
            return None
    return call.endpoint


class Pipeline:
    """Runs a call through its stages, outermost first."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        self._entry = self._chain(0)

    def _chain(self, i: int) -> Next:
        if i == len(self.stages):
            async def end(call: Call) -> None:
                return None
            return end
        stage, rest = self.stages[i], self._chain(i + 1)

        async def run(call: Call) -> None:
            await stage(call, rest)
        return run

    async def __call__(self, call: Call) -> Call:
        await self._entry(call)
        return call
