"""The flow stage: a request whose ``model`` names a flow runs the flow; each step is a call of its own.

A flow is served like an endpoint. After auth and budgets (a key scoped to
the flow's name may call it), this stage looks the name up among the flows;
anything else goes on to the cache and the policy. For a flow it:

- builds the run's inputs — from the chat request (`flows.chat.chat_inputs`:
  the last user message, the history, ``metadata`` for other inputs) or
  from ``/api/flows/NAME/run``'s ``{"inputs": {...}}``;
- runs it with a `GatewaySteps`: every llm, embed and retrieve node becomes
  a `Call` through the rest of the gateway — budget ▶ cache ▶ policy
  (router or split) ▶ mirror ▶ dispatch, with record outermost — carrying
  the caller's key, so each step is routed, cached, budgeted and recorded
  like a client's request. A step's key is not checked against the step's
  endpoint: the flow (which only the admin can write) decides which
  endpoints it calls, the key decides which flows it may call;
- answers: a ``chat.completion`` (streamed as chunks when asked: the final
  llm node streams), or for the run API the flow's outputs and the trace.

**Accounting.** Each step writes its own usage record under its endpoint
and counts against that endpoint's budgets and the key's, tagged with the
flow call's request id (``parent_request_id``). The flow call writes one
more record (``kind`` ``flow``) whose tokens and USD sum its nodes and which
holds the run's trace; budgets do not count it again and the spend report's
totals leave it out (`store.spend`), so nothing is counted twice. The run id
is the flow call's request id.

A flow whose endpoint was deleted after it was applied answers 424
``flow_endpoint_missing`` naming the endpoint, before any node runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ModelyardError, from_validation_error, invalid
from ..flows import FlowError, FlowRunError, StepResult
from ..flows.chat import chat_chunks, chat_inputs, completion_body
from ..flows.trace import Span, Trace, export_otel
from ..wire import SSE_DONE, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SSEDecoder, sse
from .pipeline import Call, Next, Pipeline

log = logging.getLogger(__name__)


class FlowRunRequest(BaseModel):
    """``POST /api/flows/NAME/run``: the flow's inputs, optionally node variants, optionally streamed."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    #: node → variant id (``{"compose": "variant_1"}``); the flow's defaults otherwise
    variants: dict[str, str] = Field(default_factory=dict)
    #: stream node events (``node``), the streamed output's text (``delta``) and the end (``done``)
    stream: bool = False


class Flows:
    """The flow stage (see the module docstring). ``steps`` is the pipeline a step runs through."""

    def __init__(self, registry: Any, steps: Pipeline, indexes: Any = None) -> None:
        self.registry = registry
        self.steps = steps
        self.indexes = indexes

    async def __call__(self, call: Call, call_next: Next) -> None:
        loaded = self.registry.get(call.request.model) if call.parent_id is None else None
        if loaded is None:
            if call.kind == "flow":
                raise ModelyardError(f"There is no flow '{call.request.model}'.", status=404, param="name",
                                     code="flow_not_found")
            return await call_next(call)
        call.flow = loaded.name
        call.route = f"flow:{loaded.name}"
        if call.target is not None:
            raise invalid(f"'{loaded.name}' is a flow, which has no deployments to choose from",
                          param="modelyard-deployment", code="not_a_deployment")
        if call.kind not in ("chat", "flow"):
            raise invalid(f"'{loaded.name}' is a flow: call it with chat completions or POST /api/flows/"
                          f"{loaded.name}/run", param="model", code="wrong_task")
        missing = self.registry.missing_endpoints(loaded)
        if missing:
            raise ModelyardError(f"flow '{loaded.name}' calls endpoint(s) that no longer exist: "
                                 f"{', '.join(missing)}; create them or apply the flow again", status=424,
                                 param="model", code="flow_endpoint_missing")
        request = call.request
        engine = loaded.engine_for(request.variants if call.kind == "flow" else None)
        try:
            inputs = chat_inputs(loaded.flow, request, loaded.name) if call.kind == "chat" else request.inputs
        except FlowError as exc:
            raise exc.to_error() from None
        steps = GatewaySteps(self.steps, call, self.indexes)
        if call.streaming:
            await self._stream(call, engine, inputs, steps)
        else:
            await self._run(call, engine, inputs, steps)

    async def _run(self, call: Call, engine: Any, inputs: dict[str, Any], steps: "GatewaySteps") -> None:
        try:
            run = await engine.run(inputs, steps=steps, on_trace=lambda t: self._ended(call, t))
        except FlowError as exc:
            raise _input_error(exc) from None
        except FlowRunError as exc:
            raise exc.to_error() from None
        if call.kind == "chat":
            call.body = completion_body(engine.flow, run, model=call.flow, response_id=f"chatcmpl-{call.request_id}")
        else:
            call.body = {"object": "flow.run", "id": call.request_id, "flow": call.flow, "outputs": run.outputs,
                         "usage": _usage(run.trace), "cost_usd": run.trace.cost_usd, "trace": run.trace.to_dict()}

    async def _stream(self, call: Call, engine: Any, inputs: dict[str, Any], steps: "GatewaySteps") -> None:
        if call.kind == "flow":
            try:
                engine.flow.bind_inputs(inputs)  # bad inputs are a 400, before the stream starts
            except FlowError as exc:
                raise _input_error(exc) from None
            call.stream = self._run_sse(call, engine, inputs, steps)
            return
        events = engine.run_stream(inputs, steps=steps, on_trace=lambda t: self._ended(call, t))
        # The first event decides the status: bad inputs (400) or a node that failed before anything could be
        # sent are answered as errors, not as a stream that breaks off.
        try:
            first = await events.__anext__()
        except FlowError as exc:
            await events.aclose()
            raise _input_error(exc) from None
        except FlowRunError as exc:
            await events.aclose()
            raise exc.to_error() from None
        except StopAsyncIteration:  # pragma: no cover - a run always ends with "done"
            raise ModelyardError("the flow ended without an answer", status=500, code="internal_error") from None

        async def replay() -> AsyncIterator[Any]:
            yield first
            async for event in events:
                yield event

        call.stream = self._chat_sse(call, replay(), events)

    async def _chat_sse(self, call: Call, events: AsyncIterator[Any], inner: Any) -> AsyncIterator[bytes]:
        try:
            async for chunk in chat_chunks(events, model=call.flow or "", include_usage=call.request.include_usage,
                                           response_id=f"chatcmpl-{call.request_id}"):
                yield sse(chunk)
        except FlowRunError as exc:
            err = exc.to_error()
            call.status, call.error_code = err.status, err.code
            yield sse(err.body())
        finally:
            await _close(inner)
        yield SSE_DONE

    async def _run_sse(self, call: Call, engine: Any, inputs: dict[str, Any],
                       steps: "GatewaySteps") -> AsyncIterator[bytes]:
        """The run API's stream: ``node_start`` and ``node`` (a span as a node starts and ends) the moment they
        happen, ``delta`` (``{"node", "delta"}``, the streamed output's text), then ``done`` or ``error``."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        streamed = engine.stream_node()

        def on_span(span: Span) -> None:
            queue.put_nowait(("node_start" if span.status == "running" else "node", span.to_dict()))

        async def pump() -> None:
            events = engine.run_stream(inputs, steps=steps, on_trace=lambda t: self._ended(call, t), on_span=on_span)
            try:
                async for kind, value in events:
                    queue.put_nowait((kind, value))
            except FlowRunError as exc:
                queue.put_nowait(("failed", exc))
            except Exception as exc:  # noqa: BLE001 - the stream ends with an error event, whatever happened
                log.exception("flow %s: run %s failed", call.flow, call.request_id)
                queue.put_nowait(("crashed", exc))
            finally:
                await _close(events)

        task = asyncio.create_task(pump(), name=f"flow-run-{call.request_id}")
        try:
            while True:
                kind, value = await queue.get()
                if kind in ("node_start", "node"):
                    yield sse(value, event=kind)
                elif kind == "delta":
                    yield sse({"node": streamed, "delta": value}, event="delta")
                elif kind == "done":
                    trace = value.trace
                    yield sse({"id": call.request_id, "outputs": value.outputs, "cost_usd": trace.cost_usd,
                               "usage": _usage(trace), "trace": trace.to_dict()}, event="done")
                    break
                else:
                    err = value.to_error() if kind == "failed" else ModelyardError(
                        "The gateway failed while running this flow.", status=500, code="internal_error")
                    call.status, call.error_code = err.status, err.code
                    trace = value.trace.to_dict() if kind == "failed" else None
                    yield sse(err.body() | {"id": call.request_id, "trace": trace}, event="error")
                    break
        finally:
            if not task.done():
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])

    @staticmethod
    def _ended(call: Call, trace: Trace) -> None:
        """The run ended (however): the flow call's record gets its totals and the trace."""
        trace.run_id = call.request_id
        call.trace = trace
        call.prompt_tokens = trace.prompt_tokens
        call.completion_tokens = trace.completion_tokens
        call.cost_usd = trace.cost_usd
        call.upstream_s = sum((s.latency_ms or 0.0) for s in trace.spans if s.kind != "prompt") / 1000
        try:
            export_otel(trace)
        except Exception:  # tracing must never fail a request
            log.exception("exporting flow run %s to OpenTelemetry failed", trace.run_id)


def _usage(trace: Trace) -> dict[str, int]:
    return {"prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens,
            "total_tokens": trace.total_tokens}


async def _close(events: Any) -> None:
    """End the run (cancelling what still runs) and wait for it, even when the client has gone: the server
    cancels a hung-up response's task again at every await, and the run's steps must close their upstream
    streams and settle their usage before the flow call's record is written."""
    with anyio.CancelScope(shield=True):
        await events.aclose()


def _input_error(exc: FlowError) -> ModelyardError:
    err = exc.to_error()
    err.param = err.param or "inputs"
    return err


class GatewaySteps:
    """`flows.steps.StepCalls` through the gateway: each step a `Call` carrying the flow call's key."""

    def __init__(self, pipeline: Pipeline, parent: Call, indexes: Any = None) -> None:
        self.pipeline = pipeline
        self.parent = parent
        self.indexes = indexes  # index.IndexRegistry

    def _call(self, kind: str, request: Any) -> Call:
        parent = self.parent
        return Call(kind, request, parent.api_key, request_headers=None, key=parent.key, batch_id=parent.batch_id,
                    parent_id=parent.request_id)

    @staticmethod
    def _request(cls: type[BaseModel], body: dict[str, Any]) -> Any:
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    @staticmethod
    def _result(call: Call, value: Any) -> StepResult:
        deployment = call.deployment_name or None
        if deployment is None and call.tiers:
            answered = [t for t in call.tiers if t.outcome == "answered"] or call.tiers
            deployment = answered[-1].deployment.name
        return StepResult(value, endpoint=call.endpoint_name, deployment=deployment,
                          cache=call.cache if call.cache not in ("off", "") else None,
                          prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                          cost_usd=call.cost_usd, latency_ms=call.elapsed_s() * 1000, request_id=call.request_id)

    async def chat(self, endpoint: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> StepResult:
        request = self._request(ChatCompletionRequest, {**params, "model": endpoint, "messages": messages,
                                                        "stream": False})
        call = await self.pipeline(self._call("chat", request))
        assert call.body is not None
        return self._result(call, call.body["choices"][0]["message"].get("content") or "")

    async def chat_stream(self, endpoint: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> "_Stream":
        request = self._request(ChatCompletionRequest, {**params, "model": endpoint, "messages": messages,
                                                        "stream": True})
        call = await self.pipeline(self._call("chat", request))
        if call.stream is None:  # a cached answer may come whole
            assert call.body is not None
            return _Stream(call, None, call.body["choices"][0]["message"].get("content") or "", self._result)
        return _Stream(call, call.stream, None, self._result)

    async def complete(self, endpoint: str, prompt: str, params: dict[str, Any]) -> StepResult:
        request = self._request(CompletionRequest, {**params, "model": endpoint, "prompt": prompt, "stream": False})
        call = await self.pipeline(self._call("completion", request))
        assert call.body is not None
        return self._result(call, call.body["choices"][0].get("text") or "")

    async def embed(self, endpoint: str, texts: list[str]) -> StepResult:
        request = self._request(EmbeddingRequest, {"model": endpoint, "input": texts})
        call = await self.pipeline(self._call("embedding", request))
        assert call.body is not None
        vectors = [row["embedding"] for row in sorted(call.body["data"], key=lambda d: d["index"])]
        return self._result(call, vectors)

    async def retrieve(self, index: str, query: str | list[float], top_k: int,
                       filter: dict[str, Any] | None) -> StepResult:
        from ..index.retrieve import retrieve  # numpy, only for flows that retrieve

        indexes = self.indexes
        if indexes is None:
            raise ModelyardError("this gateway has no indexes", status=500, code="internal_error")
        try:
            found = await asyncio.to_thread(indexes.get, index)
        except ModelyardError as exc:
            if exc.status == 404:
                raise ModelyardError(f"index '{index}' does not exist", status=424, param="index",
                                     code="flow_index_missing") from None
            raise
        results: list[StepResult] = []

        async def embed(texts: list[str]) -> list[list[float]]:
            result = await self.embed(found.settings.embed, texts)
            results.append(result)
            return result.value

        t0 = time.perf_counter()
        hits = await retrieve(found, embed, query, top_k, filter)
        result = StepResult([h.as_dict() for h in hits], endpoint=index,
                            latency_ms=(time.perf_counter() - t0) * 1000)
        for step in results:  # the query's embedding is the retrieval's cost
            result.prompt_tokens += step.prompt_tokens
            result.cost_usd += step.cost_usd
            result.deployment = step.deployment
            result.cache = step.cache
            result.request_id = step.request_id
        return result


class _Stream:
    """A streamed chat step (`flows.steps.StepStream`) read from the gateway's own server-sent events."""

    def __init__(self, call: Call, stream: AsyncIterator[bytes] | None, whole: str | None, result: Any) -> None:
        self.call = call
        self.stream = stream
        self.whole = whole
        self.make_result = result
        self.parts: list[str] = []

    async def __aiter__(self) -> AsyncIterator[str]:  # type: ignore[override]
        if self.stream is None:
            if self.whole:
                self.parts.append(self.whole)
                yield self.whole
            return
        decoder = SSEDecoder()
        async for raw in self.stream:
            for data in decoder.feed(raw):
                if data == b"[DONE]":
                    continue
                event = orjson.loads(data)
                if "error" in event:
                    status = self.call.status if self.call.status >= 400 else 502
                    raise ModelyardError.from_body(status, event)
                for choice in event.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        self.parts.append(text)
                        yield text

    async def result(self) -> StepResult:
        await self.aclose()
        return self.make_result(self.call, "".join(self.parts))

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.aclose()  # type: ignore[attr-defined]
