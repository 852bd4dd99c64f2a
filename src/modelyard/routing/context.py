"""What a router strategy may ask of the gateway: the seam between ``routing/`` and ``gateway/``.

A strategy (`routing.policy.RouterPolicy`) answers one call through the
endpoint's tiers, cheapest first. Everything it does goes through a
`TierCalls`, which the gateway's router stage implements
(`gateway.router.TierContext`): call a tier for a whole answer or a live
stream, answer, say why (``route``), check the budget, log a speculative
verdict, and leave work running after the answer. Calls go through
`telemetry.metering`, so each tier's tokens and cost come back as a
`TierStep` whose ``outcome`` and ``extra`` the strategy may set.

The protocol lives here, below the gateway, so strategies depend on it and
never on the gateway's classes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Protocol

if TYPE_CHECKING:
    from ..errors import ModelyardError
    from ..telemetry.metering import Deployment, TierStep
    from ..wire import AnyRequest

#: called with the streamed answer's text when the stream has ended; returns SSE bytes to send before [DONE]
Tail = Callable[[str], Awaitable["bytes | None"]]


class TierCalls(Protocol):
    """One call being routed, and the means to answer it."""

    kind: str
    request: AnyRequest
    #: the endpoint's deployments, cheapest first
    tiers: list[Deployment]
    #: the answer's id once one is sent (``GET /v1/responses/{id}``)
    response_id: str | None
    #: set when a live stream to the client has ended, however it ended
    stream_ended: asyncio.Event
    route: str

    @property
    def streaming(self) -> bool: ...

    @property
    def budget_low(self) -> bool: ...

    @property
    def endpoint_name(self) -> str: ...

    @property
    def request_headers(self) -> Any: ...

    def allows(self, tier: Deployment) -> bool: ...

    def refuse_for_budget(self, tier: Deployment) -> ModelyardError: ...

    async def complete(self, tier: Deployment, *, attach: bool = True,
                       **overrides: Any) -> tuple[dict[str, Any], TierStep]: ...

    async def stream(self, tier: Deployment, *, tail: Tail | None = None,
                     after_first: Callable[[], None] | None = None) -> None: ...

    def answer(self, tier: Deployment, body: dict[str, Any], *, strip_logprobs: bool = False) -> None: ...

    def attach(self, step: TierStep) -> None: ...

    def record_extra(self, step: TierStep, route: str) -> None: ...

    async def checked(self, tier: Deployment | None, corrected_text: str | None, similarity: float | None, *,
                      failed: str | None = None) -> None: ...

    def background(self, coro: Coroutine[Any, Any, None]) -> None: ...


async def respond(ctx: TierCalls, tier: Deployment) -> None:
    """Let one tier answer, streaming when the client streams."""
    if not ctx.allows(tier):
        raise ctx.refuse_for_budget(tier)
    if ctx.streaming and ctx.kind != "embedding":
        await ctx.stream(tier)
    else:
        body, _ = await ctx.complete(tier)
        ctx.answer(tier, body)
