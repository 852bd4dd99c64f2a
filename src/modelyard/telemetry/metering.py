"""Calling a deployment and accounting for it: the one place where tokens and time become USD.

Whoever asks a deployment for work — the dispatch stage, each tier of a
router, a feedback escalation, a batch line and, next, a flow step — calls
it through this module and gets a `Metered`: the tokens, the time to the
first token, the seconds the deployment was busy, the USD, and how the call
ended. Two ways in, one set of rules:

- `complete(deployment, kind, request)` — a whole answer (embeddings, or
  chunks gathered into one body): ``(body, metered)``;
- `MeteredStream(deployment, kind, request)` — the chunks as they come;
  ``await stream.start()`` returns the first one (an error before it is an
  ordinary exception), iterating yields the rest, and ``await
  stream.aclose()`` — however the stream ended — settles ``stream.metered``.

The rules, the same on every path:

- **tokens** are the upstream's ``usage``. A stream that ends without a
  usage chunk (cut off by the client, or failed halfway) counts each chunk
  with choices but the first as one completion token, and no prompt tokens:
  only what was seen is charged;
- **busy seconds** run from sending the request to the end (the last chunk,
  the error, or the cut-off), less the time a background call (a batch
  line) waited for a free instance, which is not work;
- **cost** is `telemetry.cost.deployment_cost` of those tokens and seconds —
  for an answer, a cut-off stream and a failure alike (a failed local call
  still held its instance; a failed hosted call reported no tokens).

Background work (batch lines) runs inside `background()`; the deployment's
slot queue records there how long such a call waited, and the meter leaves
that wait out of the busy seconds.

``Metered.step(outcome)`` makes it a `TierStep`: the deployment's part in a
routed answer, and its entry in a usage record's ``tiers``. `usage_record`
builds every usage record (a call's, or one for work that ended after its
call), and a `Ledger` takes each one to the writer and counts it against the
budgets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

from ..catalog.card import ModelCard
from ..errors import ModelyardError
from ..wire import AnyRequest, gather
from .cost import deployment_cost


class Deployment(Protocol):
    """What metering needs of a deployment (`serving.deployment.Deployment` is the real one; a router's
    tiers are deployments): its name, its card's price, and the two calls."""

    @property
    def name(self) -> str: ...

    card: ModelCard

    def generate(self, kind: str, request: AnyRequest) -> AsyncIterator[dict[str, Any]]: ...

    async def embed(self, request: AnyRequest) -> dict[str, Any]: ...


@dataclass
class BackgroundWork:
    """Background calls of one task: the share of a deployment's capacity they may hold, and the
    seconds they spent waiting for it (so that waiting is not billed as work)."""

    share: float = 1.0
    waited_s: float = 0.0


#: set inside `background()`; None (the default) for live requests
BACKGROUND: ContextVar[BackgroundWork | None] = ContextVar("modelyard_background", default=None)


@contextmanager
def background(share: float = 1.0) -> Iterator[BackgroundWork]:
    """Deployment calls made inside this block (in this task and tasks it starts) are background work."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    work = BackgroundWork(share)
    token = BACKGROUND.set(work)
    try:
        yield work
    finally:
        BACKGROUND.reset(token)


@dataclass(slots=True)
class Metered:
    """What one call to one deployment used and cost."""

    deployment: Deployment
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: seconds the deployment worked on the call (waiting for a background slot excluded)
    busy_s: float = 0.0
    #: streams: seconds from `since` (the request's start, by default the moment it was sent) to the first text
    ttft_s: float | None = None
    cost_usd: float = 0.0
    status: int = 200
    error_code: str | None = None

    def step(self, outcome: str) -> "TierStep":
        return TierStep(self, outcome)


@dataclass(slots=True)
class TierStep:
    """One deployment's part in a routed answer: what it used, and what became of its answer.

    ``outcome``: ``answered`` (its answer went to the client), ``escalated``
    (judged not good enough), ``checked`` / ``corrected`` (a speculative
    check), ``error``. ``extra`` holds what the strategy judged by
    (``score``, ``similarity``).
    """

    metered: Metered
    outcome: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deployment(self) -> Deployment:
        return self.metered.deployment

    def record(self) -> dict[str, Any]:
        """The entry in a usage record's ``tiers``."""
        m = self.metered
        return {"deployment": m.deployment.name, "model": m.deployment.card.id, "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens, "cost_usd": m.cost_usd, "outcome": self.outcome,
                **self.extra}


def usage_record(*, endpoint: str, kind: str, key_id: int | None, prompt_tokens: int, completion_tokens: int,
                 cost_usd: float, status: int, deployment: Deployment | None = None,
                 tiers: list[TierStep] | None = None, route: str | None = None, **fields: Any) -> dict[str, Any]:
    """A usage record (a row of ``usage_records``) for the writer. `fields` are the other columns
    (``request_id``, ``latency_ms``, ``ttft_ms``, ``cache`` …); the writer fills what is left out."""
    return {"endpoint": endpoint, "kind": kind, "key_id": key_id,
            "deployment": deployment.name if deployment is not None else None,
            "model": deployment.card.id if deployment is not None else None,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost_usd": cost_usd,
            "status": status, "route": route[:64] if route else None,
            "tiers": [t.record() for t in tiers] if tiers is not None else None, **fields}


def step_record(step: TierStep, *, endpoint: str, kind: str, key_id: int | None, route: str,
                **fields: Any) -> dict[str, Any]:
    """The usage record of one tier's work that ended after its call's record was written (a speculative
    check, a feedback escalation)."""
    m = step.metered
    return usage_record(endpoint=endpoint, kind=kind, key_id=key_id, prompt_tokens=m.prompt_tokens,
                        completion_tokens=m.completion_tokens, cost_usd=m.cost_usd, status=m.status,
                        error_code=m.error_code, deployment=m.deployment, tiers=[step], route=route,
                        latency_ms=m.busy_s * 1000, **fields)


class UsageSink(Protocol):
    def submit(self, record: dict[str, Any]) -> None: ...


class SpendCounter(Protocol):
    def add(self, endpoint: str, key_id: int | None, cost_usd: float) -> None: ...


class Ledger:
    """Where every usage record goes: to the writer (the database, in batches, off the request path), and
    — the one place spend is counted — against the endpoint's and the key's budgets."""

    def __init__(self, writer: UsageSink, budget: SpendCounter | None = None) -> None:
        self.writer = writer
        self.budget = budget

    def submit(self, record: dict[str, Any]) -> None:
        self.writer.submit(record)
        # A flow call's record sums its steps, each of which was counted when its own record came by.
        if self.budget is not None and record.get("kind") != "flow":
            self.budget.add(record["endpoint"], record.get("key_id"), float(record.get("cost_usd") or 0.0))


class _Meter:
    """Running totals for one call: settled once, by `settle`."""

    def __init__(self, deployment: Deployment, since: float | None) -> None:
        self.sent = time.perf_counter()
        self.since = self.sent if since is None else since
        self.work = BACKGROUND.get()
        self.waited_before = self.work.waited_s if self.work is not None else 0.0
        self.metered = Metered(deployment)

    def first_text(self) -> None:
        if self.metered.ttft_s is None:
            self.metered.ttft_s = time.perf_counter() - self.since

    def settle(self, usage: dict[str, Any] | None, *, pieces: int = 0,
               error: ModelyardError | None = None) -> Metered:
        m = self.metered
        waited = (self.work.waited_s - self.waited_before) if self.work is not None else 0.0
        m.busy_s = max(time.perf_counter() - self.sent - waited, 0.0)
        if usage:
            m.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            m.completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            m.prompt_tokens, m.completion_tokens = 0, max(pieces - 1, 0)
        if error is not None:
            m.status, m.error_code = error.status, error.code
        m.cost_usd = deployment_cost(m.deployment, m.prompt_tokens, m.completion_tokens, m.busy_s)
        return m


class MeteringError(ModelyardError):
    """A deployment call that failed, with what it used up to the failure (`metered`)."""

    def __init__(self, error: ModelyardError, metered: Metered) -> None:
        super().__init__(error.message, status=error.status, type=error.type, param=error.param, code=error.code,
                         headers=error.headers)
        self.metered = metered


async def complete(deployment: Deployment, kind: str, request: Any, *,
                   since: float | None = None) -> tuple[dict[str, Any], Metered]:
    """A whole answer from `deployment` and what it cost. A failure raises `MeteringError` (a
    `ModelyardError` carrying the failed call's `Metered`)."""
    meter = _Meter(deployment, since)
    try:
        if kind == "embedding":
            body = await deployment.embed(request)
        else:
            body = gather(kind, [c async for c in deployment.generate(kind, request)])
    except ModelyardError as err:
        raise MeteringError(err, meter.settle(None, error=err)) from err
    return body, meter.settle(body.get("usage"))


class MeteredStream:
    """A deployment's streamed answer, metered as its chunks pass (see the module docstring).

    ``text`` is the answer's text so far; ``usage`` the upstream's usage
    chunk once seen. The stream always asks the upstream for usage, whatever
    the client asked (the caller decides which chunks the client sees).
    """

    def __init__(self, deployment: Deployment, kind: str, request: Any, *, since: float | None = None) -> None:
        self.kind = kind
        self._key = "delta" if kind == "chat" else "text"
        self._meter = _Meter(deployment, since)
        self._chunks = deployment.generate(kind, request)
        self._pieces = 0
        self._text: list[str] = []
        self._error: ModelyardError | None = None
        self._first: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.metered: Metered | None = None

    @property
    def text(self) -> str:
        return "".join(self._text)

    def elapsed_s(self) -> float:
        """Seconds since the request was sent."""
        return time.perf_counter() - self._meter.sent

    async def start(self) -> dict[str, Any]:
        """The first chunk. A failure before it (or a stream with no chunk at all) raises `MeteringError`,
        with the stream already closed and metered."""
        try:
            first = await anext(self._chunks)
        except StopAsyncIteration:
            err = ModelyardError("the deployment closed the stream without an answer", status=502, code="empty_stream")
            raise MeteringError(err, await self._fail(err)) from None
        except ModelyardError as err:
            raise MeteringError(err, await self._fail(err)) from err
        self._see(first)
        self._first = first
        return first

    async def _fail(self, err: ModelyardError) -> Metered:
        self._error = err
        return await self.aclose()

    def _see(self, chunk: dict[str, Any]) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if choices:
            self._pieces += 1
            c = choices[0]
            piece = (c.get("delta") or {}).get("content") if self._key == "delta" else c.get("text")
            if piece:
                self._text.append(piece)
                self._meter.first_text()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._rest()

    async def _rest(self) -> AsyncIterator[dict[str, Any]]:
        """The chunks after the first (`start` returns that one). A failure mid-stream is remembered for
        the meter and raised."""
        try:
            async for chunk in self._chunks:
                self._see(chunk)
                yield chunk
        except ModelyardError as err:
            self._error = err
            raise

    async def aclose(self) -> Metered:
        """Close the upstream (stopping its generation) and settle the meter; safe to call twice."""
        if self.metered is None:
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                self.metered = self._meter.settle(self.usage, pieces=self._pieces, error=self._error)
        return self.metered

