"""The record stage: one usage line and the metrics for every request.

Recording is off the request path: the usage line goes to the
`UsageWriter`'s queue and a background task writes it to the database in
batches. For a stream the line is written when the stream ends, however it
ends — finished, failed, or cut off by a client that went away (status 499,
with the tokens generated up to then).
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import anyio

from ..errors import ModelyardError
from ..telemetry.metering import Ledger, usage_record
from .pipeline import Call, Next

CLIENT_CLOSED = 499
#: How much of each node's inputs, prompt and output a flow run's stored trace keeps (characters of JSON).
STORED_CHARS = 2048


class Record:
    def __init__(self, writer, metrics, budget=None) -> None:
        self.metrics = metrics
        # the writer, and the budgets (telemetry.budget.BudgetTracker) that count what each endpoint and key spent
        self.ledger = Ledger(writer, budget)

    async def __call__(self, call: Call, call_next: Next) -> None:
        gauge = self.metrics.in_flight
        gauge.inc()
        try:
            await call_next(call)
        except ModelyardError as err:
            call.status, call.error_code = err.status, err.code
            self._finish(call)
            gauge.dec()
            raise
        except BaseException:
            call.status, call.error_code = 500, "internal_error"
            self._finish(call)
            gauge.dec()
            raise
        if call.stream is None:
            self._finish(call)
            gauge.dec()
        else:
            call.stream = self._watch(call, call.stream, gauge)

    async def _watch(self, call: Call, stream: AsyncIterator[bytes], gauge) -> AsyncIterator[bytes]:
        try:
            async for event in stream:
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            call.status, call.error_code = CLIENT_CLOSED, "client_closed"
            raise
        finally:
            # Close the inner stream first: its own clean-up counts the tokens sent and closes
            # the upstream, and that must happen before the line is written, not at garbage collection.
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[attr-defined]
            self._finish(call)
            gauge.dec()

    def _finish(self, call: Call) -> None:
        call.finished = time.perf_counter()
        latency = call.finished - call.started
        deployment = call.deployment_name
        # Metric labels only name endpoints that exist, so made-up model names cannot grow the label set.
        label = call.endpoint.name if call.endpoint is not None else (call.flow or "")
        self.metrics.observe(label, deployment, call.status, call.prompt_tokens, call.completion_tokens,
                             call.cost_usd, latency, call.ttft_s)
        trace = call.trace
        self.ledger.submit(usage_record(
            endpoint=call.endpoint_name,
            # a flow call's record sums its steps' tokens and cost and holds the run's trace; the Ledger
            # does not count it against budgets, its steps' records did
            kind="flow" if call.flow is not None else call.kind,
            key_id=call.key.id if call.key is not None else None,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost_usd=call.cost_usd,
            status=call.status,
            deployment=call.deployment,
            tiers=list(call.tiers) if call.tiers is not None else None,
            route=call.route,
            request_id=call.request_id,
            stream=call.streaming,
            latency_ms=latency * 1000,
            ttft_ms=call.ttft_s * 1000 if call.ttft_s is not None else None,
            error_code=call.error_code,
            cache=call.cache,
            batch_id=call.batch_id,
            saved_tokens=call.saved_tokens,
            saved_usd=call.saved_usd,
            parent_request_id=call.parent_id,
            trace=trace.to_dict(STORED_CHARS) if trace is not None else None,
        ))
        if call.reservation is not None:  # after its cost was counted just above, never before
            call.reservation.release()
