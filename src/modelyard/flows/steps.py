"""What a flow node may ask of the gateway: the seam between ``flows/`` and the request path.

The engine (`engine.FlowEngine`) never calls a deployment itself. Every
model or index call of a node goes through a `StepCalls`, which the gateway
implements by running a `Call` through its own pipeline, so the endpoint's
router, response cache, budgets and keys apply to a flow's steps exactly as
to a client's request. The protocol lives here, below the gateway, so the
engine depends on it and never on the gateway's classes (as
`routing.context.TierCalls` does for router strategies).

Each call answers a `StepResult`: the value the node outputs and what it
cost — which endpoint and deployment (tier) answered, the cache decision,
tokens, USD, latency, the request id — which becomes the node's span in the
run's trace and is summed into the flow call's usage record.

=================  =========================================================
call               ``StepResult.value``
=================  =========================================================
``chat``           the assistant's text (the first choice's content)
``chat_stream``    a `StepStream`: text deltas, then ``result()``
``complete``       the completion's text (the first choice's text)
``embed``          one vector (a list of floats) per text, in order
``retrieve``       the hits, best first: ``[{"text", "score", "metadata"}]``
=================  =========================================================

Errors are `errors.ModelyardError` (the status the gateway would have
answered: 429 for a busy or over-budget endpoint, 5xx for an upstream
failure, 4xx for a request the endpoint refused); the engine retries the
retryable ones (`is_retryable`).

Which node is calling: `CURRENT_NODE` holds the node's name while its step
runs (each node runs in its own task, so the context variable is the
node's), for an implementation that labels its records or logs by node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ModelyardError

#: The node whose step is being called (None outside a flow run).
CURRENT_NODE: ContextVar[str | None] = ContextVar("modelyard_flow_node", default=None)

#: Codes of 429/5xx errors that asking again cannot fix.
NOT_RETRYABLE_CODES = frozenset({"budget_exhausted", "upstream_auth_failed", "tier_not_deployed"})


@dataclass(slots=True)
class StepResult:
    """One step's answer and its accounting.

    ``deployment`` is the deployment (a router endpoint's tier) that
    answered, None for a cache hit or a retrieval; ``cache`` is the cache
    decision as the ``x-modelyard-cache`` header says it (``hit``, ``miss``,
    ``semantic``, …) or None when the endpoint has no cache.
    """

    value: Any
    endpoint: str | None = None
    deployment: str | None = None
    cache: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float | None = None
    request_id: str | None = None


class StepStream(Protocol):
    """A chat answer as it is generated: iterate for the text deltas; ``result()`` once iteration ended
    gives the whole answer's `StepResult` (``value`` the joined text). ``aclose()`` ends it early (the
    engine calls it however the stream ended, so the gateway can settle the call's usage)."""

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def result(self) -> StepResult: ...

    async def aclose(self) -> None: ...


class StepCalls(Protocol):
    """The gateway's side of a flow run: one object per flow call (it knows the caller's key and budgets)."""

    async def chat(self, endpoint: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> StepResult:
        """A chat completion of ``messages`` (``{"role", "content"}``) with request ``params`` (max_tokens …)."""
        ...

    async def chat_stream(self, endpoint: str, messages: list[dict[str, Any]],
                          params: dict[str, Any]) -> StepStream:
        """The same, streamed. An error before the first delta is raised here (so it can be retried);
        one after it is raised by the iteration."""
        ...

    async def complete(self, endpoint: str, prompt: str, params: dict[str, Any]) -> StepResult:
        """A text completion of ``prompt``."""
        ...

    async def embed(self, endpoint: str, texts: list[str]) -> StepResult:
        """The embeddings of ``texts``."""
        ...

    async def retrieve(self, index: str, query: str | list[float], top_k: int,
                       filter: dict[str, Any] | None) -> StepResult:
        """The ``top_k`` hits of ``index`` for a text or a vector, optionally filtered on metadata."""
        ...


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed step may succeed if asked again: a 429 or a 5xx, unless its code says it cannot
    (a spent budget, credentials the upstream refused, a tier that is not deployed)."""
    if not isinstance(exc, ModelyardError):
        return False
    if exc.code in NOT_RETRYABLE_CODES or exc.type == "insufficient_quota":
        return False
    return exc.status == 429 or exc.status >= 500
