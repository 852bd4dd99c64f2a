"""`FlowEngine`: one run of a checked flow, each node as soon as what it reads is ready.

::

    engine = FlowEngine(flow, steps, PythonWorker.for_flow(flow))
    run = await engine.run({"question": "How many days of leave?"})
    run.outputs["answer"], run.trace.cost_usd

    async for kind, value in engine.run_stream(inputs):     # ("delta", text) … ("done", FlowRun)
        ...

**Scheduling.** A node starts the moment every node it reads has finished —
not level by level, so a slow branch never holds back an independent one,
and two independent 200 ms model calls take about 200 ms. Model, index and
python nodes run as tasks; ``prompt`` nodes and bypassed nodes are decided
inline (no task: they are CPU-only and quick). A node's model call goes
through `steps.StepCalls` (the gateway's pipeline: router, cache, budgets);
a python node's function runs in the flow's `PythonWorker` process.

**Activate and bypass** (as prompt flow does): a node with ``activate`` runs
only if its ``when`` value equals ``is``, otherwise it is *bypassed* and its
output is None; a node without ``activate`` whose every node dependency was
bypassed is bypassed too. A node that runs although something it reads was
bypassed reads None — except a python parameter with a default, which is
left out so the default applies. A flow output that reads a bypassed node
is None.

**Failure.** The first node that fails ends the run with a `FlowRunError`
naming it (``node 'format_context' raised ValueError: ...``); nodes that
read it never start, nodes running beside it are cancelled, and the error
carries the trace of everything that ran. `FlowRunError.to_error()` is the
OpenAI-shaped error for the client: the step's own status for a 4xx/429
(a spent budget stays a 429), 502 for a failed step upstream, 504 for a node
timeout, 500 for a python node that raised or a worker that died.

**Retries and timeouts.** A model, embedding or index call that fails with
a retryable error (`steps.is_retryable`: 429 or 5xx) is tried again up to
``retries`` times, waiting `Backoff` (or the ``retry-after`` the error
carries); the span counts the attempts. Python nodes are not retried (user
code may not be idempotent). Every node has ``node_timeout_s`` (``timeouts``
overrides it per node; the flow format has no field for it) for the whole
node, retries included; a python call past it retires its worker process
(see `python_worker`).

**Cancellation.** Cancelling the task that runs `run` (the client hung up)
cancels every node task and so the step calls inside them; their spans end
``cancelled``, and ``on_trace`` still receives the trace.

**Streaming.** `run_stream` yields the text of the streamed output as it is
generated — the chat output (or ``output=``) when it reads an ``llm`` chat
node directly: that node runs through `StepCalls.chat_stream`. Any other
output arrives as one delta when the run ends. Errors before the first
event (bad inputs: a `FlowError`, a 400) come from the first ``__anext__``,
before anything was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from ..errors import ModelyardError
from ..retry import Backoff, retry_after_s
from ..wire import new_id
from .errors import FlowError
from .model import EmbedNode, Flow, LLMNode, Node, PromptNode, PythonNode, RetrieveNode
from .nodes import _ANNOTATION_TYPES
from .python_worker import PythonNodeError, PythonWorker, PythonWorkerDied
from .references import Reference
from .steps import CURRENT_NODE, StepCalls, StepResult, is_retryable
from .trace import Span, Trace
from .values import UNSET, coerce_llm_param, coerce_value

log = logging.getLogger(__name__)

#: The default wait between tries of a failed step: 0.25 s, 0.5 s, 1 s … at most 2 s.
DEFAULT_BACKOFF = Backoff(0.25, 2.0)
#: The error code of a run that failed on a node (unless the node's step error has its own).
FAILED_CODE = "flow_node_failed"


@dataclass(slots=True)
class FlowRun:
    """A finished run: the flow's outputs (``evaluation_only`` ones left out) and its trace."""

    outputs: dict[str, Any]
    trace: Trace


class FlowRunError(Exception):
    """The run failed: ``node`` names the node (None for a flow output), ``trace`` holds what ran."""

    def __init__(self, message: str, *, node: str | None, trace: Trace, status: int = 500,
                 code: str = FAILED_CODE, cause: BaseException | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node
        self.trace = trace
        self.status = status
        self.code = code
        self.cause = cause
        #: the python traceback of a python node that raised
        self.traceback = traceback

    def to_error(self) -> ModelyardError:
        """The OpenAI-shaped error for the client (``param`` names the node)."""
        kind = self.cause.type if isinstance(self.cause, ModelyardError) and self.status < 500 else None
        return ModelyardError(self.message, status=self.status, type=kind, code=self.code,
                              param=f"nodes.{self.node}" if self.node else None,
                              headers=getattr(self.cause, "headers", None) if self.status == 429 else None)


FlowEvent = tuple[str, Any]  # ("delta", str) | ("done", FlowRun)


class _NodeFailed(Exception):
    """How a node failed, before the run turns it into a `FlowRunError`."""

    def __init__(self, message: str, *, status: int = 500, code: str = FAILED_CODE,
                 cause: BaseException | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.cause, self.traceback = message, status, code, cause, traceback


class FlowEngine:
    """Runs ``flow``: its model steps through ``steps``, its python nodes in ``python``.

    Build one per flow and give each run its call's `StepCalls` (``run(inputs, steps=...)``), or one per
    call with the steps here: building costs a few dictionaries (~0.1 ms for five nodes). ``python`` is
    required when the flow has python nodes.
    """

    def __init__(self, flow: Flow, steps: StepCalls | None = None, python: PythonWorker | None = None, *,
                 node_timeout_s: float = 60.0, timeouts: Mapping[str, float] | None = None, retries: int = 2,
                 backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.flow = flow
        self.steps = steps
        self.python = python
        self.node_timeout_s = node_timeout_s
        self.timeouts = dict(timeouts or {})
        self.retries = retries
        self.backoff = backoff
        self._nodes: dict[str, Node] = {n.name: n for n in flow.nodes}
        deps = flow.dependencies()
        self._deps = deps
        self._dependents: dict[str, list[str]] = {name: [] for name in self._nodes}
        for name, needs in deps.items():
            for dep in needs:
                self._dependents[dep].append(name)
        self._roots = [name for name, needs in deps.items() if not needs]
        python_nodes = [n.name for n in flow.nodes if isinstance(n, PythonNode)]
        if python_nodes and python is None:
            raise ValueError(f"flow {flow.name!r} has python nodes ({', '.join(python_nodes)}): "
                             "give the engine a PythonWorker")
        # Python parameters whose annotation converts a value read at run time (``priority: int``).
        self._conversions = {
            n.name: {k: _ANNOTATION_TYPES[p.annotation] for k in n.args
                     if (p := n.tool.parameter(k)) is not None and p.annotation in _ANNOTATION_TYPES}
            for n in flow.nodes if isinstance(n, PythonNode)}

    def _steps(self, steps: StepCalls | None) -> StepCalls:
        found = steps or self.steps
        if found is None:
            raise ValueError("no StepCalls: give them to FlowEngine() or to run()")
        return found

    def stream_node(self, output: str | None = None) -> str | None:
        """The llm chat node whose answer *is* ``output`` (default: the chat output), so it can stream."""
        name = output or self.flow.chat_output
        spec = self.flow.outputs.get(name) if name else None
        if spec is None or spec.reference.source != "node" or spec.reference.path:
            return None
        node = self._nodes.get(spec.reference.name)
        return node.name if isinstance(node, LLMNode) and node.api == "chat" else None

    async def run(self, inputs: Mapping[str, Any], *, steps: StepCalls | None = None,
                  on_trace: Callable[[Trace], None] | None = None,
                  on_span: Callable[[Span], None] | None = None) -> FlowRun:
        """Run the flow once. A `FlowError` for inputs that do not fit (a 400); a `FlowRunError` for a node
        that failed. ``steps`` replaces the engine's for this run; ``on_trace`` gets the trace however the
        run ended (done, failed, cancelled); ``on_span`` each node's span as the node starts (status
        ``running``) and as it ends (ok, error or bypassed), as it happens."""
        bound = self.flow.bind_inputs(inputs)
        return await _Run(self, self._steps(steps), bound, None, None, on_span).drive(on_trace)

    async def run_stream(self, inputs: Mapping[str, Any], *, output: str | None = None,
                         steps: StepCalls | None = None,
                         on_trace: Callable[[Trace], None] | None = None,
                         on_span: Callable[[Span], None] | None = None) -> AsyncIterator[FlowEvent]:
        """Run the flow once, yielding ``("delta", text)`` for the streamed output as it comes and then
        ``("done", FlowRun)``. Closing the iterator early cancels the run."""
        bound = self.flow.bind_inputs(inputs)
        run_steps = self._steps(steps)
        name = output or self.flow.chat_output
        if name is not None and name not in self.flow.outputs:
            raise FlowError(f"the flow has no output '{name}'", field="output")
        streamed = self.stream_node(name)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        end = object()
        task = asyncio.create_task(_Run(self, run_steps, bound, streamed, queue.put_nowait, on_span)
                                   .drive(on_trace))
        task.add_done_callback(lambda _: queue.put_nowait(end))
        try:
            while (item := await queue.get()) is not end:
                yield "delta", item
            run = task.result()
            if streamed is None and name is not None:
                text = output_text(run.outputs.get(name))
                if text:
                    yield "delta", text
            yield "done", run
        finally:
            if not task.done():
                task.cancel()
                # Wait for the run to wind down (its steps close their streams and settle their usage) without
                # cancelling it again: a consumer that is itself being cancelled — the server cancels a
                # hung-up response's task at every await — must neither skip the wait nor pass a second
                # cancellation on (gather would), which would cut the steps' clean-up short.
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([task])
            elif not task.cancelled():
                task.exception()  # retrieved: the caller left before it was raised to them


def output_text(value: Any) -> str:
    """A flow output as the text of a chat answer (None → empty; non-strings as JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


class _Run:
    """The state of one run: outputs so far, nodes waiting, tasks running, the trace."""

    def __init__(self, engine: FlowEngine, steps: StepCalls, inputs: dict[str, Any], streamed: str | None,
                 emit: Callable[[str], None] | None, on_span: Callable[[Span], None] | None = None) -> None:
        self.engine = engine
        self.on_span = on_span
        self.steps = steps
        self.inputs = inputs
        self.streamed = streamed
        self.emit = emit
        self.outputs: dict[str, Any] = {}
        self.bypassed: set[str] = set()
        self.waiting = {name: len(deps) for name, deps in engine._deps.items()}
        self.finished = 0
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.spans: dict[str, Span] = {}
        self.failure: FlowRunError | None = None
        self.stopped = False
        self.trace = Trace(run_id=new_id("flowrun"), flow=engine.flow.name, started_at=time.time())
        self.t0 = time.perf_counter()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the run as a whole -------------------------------------------------------

    async def drive(self, on_trace: Callable[[Trace], None] | None) -> FlowRun:
        try:
            if not self.waiting:
                self.done.set_result(None)
            for name in self.engine._roots:
                if self.done.done():
                    break
                self.start(name)
            await self.done
            if self.failure is not None:
                await self.stop_all(f"cancelled: node '{self.failure.node}' failed")
        except asyncio.CancelledError:
            await self.stop_all("cancelled: the run was cancelled (the client went away)")
            self.end("cancelled", "the run was cancelled", None, on_trace)
            raise
        if self.failure is not None:
            self.end("error", self.failure.message, self.failure.node, on_trace)
            raise self.failure
        try:
            outputs = self.flow_outputs()
        except FlowRunError as exc:
            self.end("error", exc.message, None, on_trace)
            raise
        self.trace.outputs = outputs
        self.end("ok", None, None, on_trace)
        flow_outputs = self.engine.flow.outputs
        return FlowRun(outputs={k: v for k, v in outputs.items() if not flow_outputs[k].evaluation_only},
                       trace=self.trace)

    def end(self, status: str, error: str | None, node: str | None,
            on_trace: Callable[[Trace], None] | None) -> None:
        trace = self.trace
        trace.status, trace.error, trace.failed_node = status, error, node
        trace.ended_at = time.time()
        trace.latency_ms = (time.perf_counter() - self.t0) * 1000
        if on_trace is not None:
            try:
                on_trace(trace)
            except Exception:  # a sink's failure must not change the run's answer
                log.exception("storing the trace of flow run %s failed", trace.run_id)

    async def stop_all(self, why: str) -> None:
        self.stopped = True  # a node finishing now starts nothing more
        running = [t for t in self.tasks.values() if not t.done()]
        for task in running:
            task.cancel(why)
        if running:
            # wait, not gather: were this run cancelled again meanwhile, gather would cancel the nodes a second
            # time, in the middle of their clean-up
            await asyncio.wait(running)

    def flow_outputs(self) -> dict[str, Any]:
        found = {}
        for name, spec in self.engine.flow.outputs.items():
            try:
                found[name] = self.read(spec.reference)
            except KeyError as exc:
                raise FlowRunError(f"flow output '{name}': {exc.args[0]}", node=None, trace=self.trace,
                                   code="flow_output_failed") from None
        return found

    # -- nodes --------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Decide the node: bypass it, render it (prompt) or start its task."""
        node = self.engine._nodes[name]
        span = Span(node=name, kind=node.kind, variant=node.variant, started_at=time.time(),
                    _t0=time.perf_counter())
        self.trace.spans.append(span)
        self.spans[name] = span
        self.told(span)
        try:
            if self.is_bypassed(node):
                span.finish("bypassed")
                self.bypassed.add(name)
                self.finish(name, None)
                return
            if isinstance(node, PromptNode):
                variables = self.values(node.variables, node)
                span.inputs = variables
                output = node.template.render_text(variables)
                span.output = output
                span.finish("ok")
                self.finish(name, output)
                return
        except (_NodeFailed, FlowError) as exc:
            self.fail(node, span, _as_failure(exc))
            return
        task = asyncio.create_task(self.run_node(node, span), name=f"flow-node-{name}")
        self.tasks[name] = task
        task.add_done_callback(lambda t, name=name: self.node_done(name, t))

    def is_bypassed(self, node: Node) -> bool:
        if node.activate is not None:
            try:
                value = self.read(node.activate.when)
            except KeyError as exc:
                raise _NodeFailed(f"activate.when: {exc.args[0]}") from None
            return not node.activate.is_met(value)
        deps = self.engine._deps[node.name]
        return bool(deps) and all(d in self.bypassed for d in deps)

    def finish(self, name: str, output: Any) -> None:
        """A node is done (ran or bypassed): start the nodes that were waiting only for it."""
        self.outputs[name] = output
        self.told(self.spans[name])
        self.finished += 1
        for dependent in self.engine._dependents[name]:
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0 and self.failure is None and not self.stopped:
                self.start(dependent)
        if self.finished == len(self.waiting) and not self.done.done():
            self.done.set_result(None)

    def told(self, span: Span) -> None:
        if self.on_span is not None:
            try:
                self.on_span(span)
            except Exception:  # a watcher's failure must not change the run
                log.exception("watching flow run %s failed", self.trace.run_id)

    def fail(self, node: Node, span: Span, failed: _NodeFailed) -> None:
        span.finish("error", error=failed.message)
        span.traceback = failed.traceback
        self.told(span)
        if self.failure is None:
            self.failure = FlowRunError(f"node '{node.name}' {failed.message}", node=node.name, trace=self.trace,
                                        status=failed.status, code=failed.code, cause=failed.cause,
                                        traceback=failed.traceback)
            if not self.done.done():
                self.done.set_result(None)

    def node_done(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # run_node turns every failure into a span; this is a bug in the engine
            log.error("flow node %s: engine error", name, exc_info=exc)
            self.fail(self.engine._nodes[name], self.spans[name],
                      _NodeFailed(f"failed inside the engine: {type(exc).__name__}: {exc}"))
            return
        span = self.spans[name]
        if span.status == "ok" and self.failure is None and not self.stopped:
            self.finish(name, span.output)

    async def run_node(self, node: Node, span: Span) -> None:
        """Run one node in its own task; the outcome lands in ``span`` (never raised, but cancellation)."""
        CURRENT_NODE.set(node.name)
        timeout_s = self.engine.timeouts.get(node.name, self.engine.node_timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline) as scope:
                output = await self.execute(node, span, deadline)
        except asyncio.CancelledError as exc:
            span.finish("cancelled", error=str(exc.args[0]) if exc.args else "cancelled")
            raise
        except TimeoutError as exc:
            if scope.expired():
                self.fail(node, span, _NodeFailed(f"timed out after {timeout_s:g} s", status=504,
                                                  code="flow_node_timeout", cause=exc))
            else:
                self.fail(node, span, _as_failure(exc))
            return
        except Exception as exc:  # noqa: BLE001 - every failure is the node's, named
            self.fail(node, span, _as_failure(exc))
            return
        span.output = output
        span.finish("ok")

    async def execute(self, node: Node, span: Span, deadline: float) -> Any:
        if isinstance(node, LLMNode):
            return await self.llm(node, span, deadline)
        if isinstance(node, PythonNode):
            return await self.python(node, span, deadline)
        if isinstance(node, EmbedNode):
            return await self.embed(node, span, deadline)
        if isinstance(node, RetrieveNode):
            return await self.retrieve(node, span, deadline)
        raise _NodeFailed(f"has a kind the engine does not run: {node.kind}")

    async def llm(self, node: LLMNode, span: Span, deadline: float) -> Any:
        endpoint = self.endpoint(node)
        variables = self.values(node.variables, node)
        params: dict[str, Any] = {}
        for key, value in node.params.items():
            if isinstance(value, Reference):
                try:
                    value = coerce_llm_param(key, self.value(value, node, key), node.api)
                except ValueError as exc:
                    raise _NodeFailed(f"input '{key}': {exc}") from None
                if value is UNSET:
                    continue
            params[key] = value
        span.inputs = {**variables, **params}
        steps = self.steps
        if node.api == "completion":
            prompt = node.template.render_text(variables)
            span.prompt = prompt
            result = await self.attempt(span, deadline, lambda: steps.complete(endpoint, prompt, params))
        else:
            messages = [_message(m) for m in node.template.render_chat(variables)]
            span.prompt = messages
            if node.name == self.streamed and self.emit is not None:
                result = await self.stream(span, deadline, endpoint, messages, params)
            else:
                result = await self.attempt(span, deadline, lambda: steps.chat(endpoint, messages, params))
        return self.account(span, result)

    async def stream(self, span: Span, deadline: float, endpoint: str, messages: list[dict[str, Any]],
                     params: dict[str, Any]) -> StepResult:
        steps, emit = self.steps, self.emit
        assert emit is not None
        stream = await self.attempt(span, deadline, lambda: steps.chat_stream(endpoint, messages, params))
        try:
            async for delta in stream:
                if delta:
                    emit(delta)
            return await stream.result()
        finally:
            await stream.aclose()

    async def embed(self, node: EmbedNode, span: Span, deadline: float) -> Any:
        endpoint = self.endpoint(node)
        text = self.value(node.input, node, "input")
        span.inputs = {"input": text}
        if isinstance(text, str):
            texts, single = [text], True
        elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            texts, single = text, False
        else:
            raise _NodeFailed(f"input 'input': expected a text or a list of texts, got {_kind(text)}")
        steps = self.steps
        result = await self.attempt(span, deadline, lambda: steps.embed(endpoint, texts))
        vectors = self.account(span, result)
        return vectors[0] if single else vectors

    async def retrieve(self, node: RetrieveNode, span: Span, deadline: float) -> Any:
        index = self.value(node.index, node, "index")
        query = self.value(node.query, node, "query")
        top_k = self.value(node.top_k, node, "top_k")
        filter_ = self.value(node.filter, node, "filter")
        span.inputs = {"index": index, "query": query, "top_k": top_k, "filter": filter_}
        if not isinstance(index, str) or not index:
            raise _NodeFailed(f"input 'index': expected an index name, got {_kind(index)}")
        # (a vector's first number stands for all of them: checking thousands of floats per call costs more
        # than the rest of the node; the index refuses a bad vector itself)
        if not (isinstance(query, str) or (isinstance(query, list) and query
                                           and isinstance(query[0], (int, float)))):
            raise _NodeFailed(f"input 'query': expected a text or a vector, got {_kind(query)}")
        try:
            top_k = coerce_value(top_k, "int")
            if top_k < 1:
                raise ValueError(f"expected at least 1, got {top_k}")
        except ValueError as exc:
            raise _NodeFailed(f"input 'top_k': {exc}") from None
        if filter_ is not None and not isinstance(filter_, dict):
            raise _NodeFailed(f"input 'filter': expected an object, got {_kind(filter_)}")
        steps = self.steps
        result = await self.attempt(span, deadline, lambda: steps.retrieve(index, query, top_k, filter_))
        span.endpoint = span.endpoint or index
        return self.account(span, result)

    async def python(self, node: PythonNode, span: Span, deadline: float) -> Any:
        kwargs: dict[str, Any] = {}
        conversions = self.engine._conversions[node.name]
        for key, value in node.args.items():
            if isinstance(value, Reference):
                if value.source == "node" and value.name in self.bypassed:
                    param = node.tool.parameter(key)
                    if param is not None and not param.required:
                        continue  # the function's default applies, as in prompt flow
                    value = None
                else:
                    value = self.value(value, node, key)
                if key in conversions and value is not None:
                    try:
                        value = coerce_value(value, conversions[key])
                    except ValueError as exc:
                        raise _NodeFailed(f"input '{key}': {exc}") from None
            kwargs[key] = value
        span.inputs = kwargs
        span.attempts = 1
        worker = self.engine.python
        assert worker is not None
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await worker.call(node.tool.path, node.tool.function, kwargs, is_async=node.tool.is_async,
                                     timeout_s=remaining)
        except PythonNodeError as exc:
            if exc.kind == "result":
                raise _NodeFailed(f"({node.tool.origin}:{node.tool.function}): {exc.message}", cause=exc) from None
            raise _NodeFailed(f"raised {exc.type_name}: {exc.message}", cause=exc, traceback=exc.traceback) from None
        except PythonWorkerDied as exc:
            raise _NodeFailed(f"failed: {exc}", cause=exc) from None
        except TypeError as exc:  # the inputs could not be sent
            raise _NodeFailed(f"failed: {exc}", cause=exc) from None

    # -- steps ----------------------------------------------------------------------

    async def attempt(self, span: Span, deadline: float, call: Callable[[], Any]) -> Any:
        """``call()``, tried again on a retryable error while tries and time remain."""
        engine = self.engine
        loop = asyncio.get_running_loop()
        retry = 0
        while True:
            span.attempts += 1
            try:
                return await call()
            except Exception as exc:
                if retry >= engine.retries or not is_retryable(exc):
                    raise
                wait = retry_after_s(getattr(exc, "headers", None))
                if wait is None:
                    wait = engine.backoff.delay(retry)
                if loop.time() + wait >= deadline:
                    raise  # the node's time would run out while waiting: fail with the real reason
                retry += 1
                log.info("flow %s node %s: %s; trying again in %.2f s (retry %d of %d)", engine.flow.name,
                         span.node, exc, wait, retry, engine.retries)
                await asyncio.sleep(wait)

    @staticmethod
    def account(span: Span, result: StepResult) -> Any:
        span.endpoint = result.endpoint or span.endpoint
        span.deployment = result.deployment
        span.cache = result.cache
        span.prompt_tokens = result.prompt_tokens
        span.completion_tokens = result.completion_tokens
        span.cost_usd = result.cost_usd
        span.request_id = result.request_id
        return result.value

    # -- values -----------------------------------------------------------------------

    def endpoint(self, node: LLMNode | EmbedNode) -> str:
        endpoint = self.value(node.endpoint, node, node.endpoint_input)
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise _NodeFailed(f"input '{node.endpoint_input}': expected an endpoint name, got {_kind(endpoint)}")
        return endpoint

    def read(self, ref: Reference) -> Any:
        """What ``ref`` names in this run; None for a bypassed node's output (and any field of it)."""
        if ref.source == "node" and ref.name in self.bypassed:
            return None
        return ref.resolve(self.inputs, self.outputs)

    def value(self, value: Any, node: Node, key: str) -> Any:
        if not isinstance(value, Reference):
            return value
        try:
            return self.read(value)
        except KeyError as exc:
            raise _NodeFailed(f"input '{key}': {exc.args[0]}") from None

    def values(self, values: Mapping[str, Any], node: Node) -> dict[str, Any]:
        return {key: self.value(value, node, key) for key, value in values.items()}


def _as_failure(exc: BaseException) -> _NodeFailed:
    if isinstance(exc, _NodeFailed):
        return exc
    if isinstance(exc, FlowError):  # a template that failed to render
        return _NodeFailed(f"failed: {exc.describe()}", cause=exc)
    if isinstance(exc, ModelyardError):
        # A 4xx is the step's answer to this call (a spent budget, a prompt too long) and stays one; an
        # endpoint or index the flow names that does not exist is the flow's fault, not the caller's.
        if exc.status == 404:
            status = 500
        elif 400 <= exc.status < 500:
            status = exc.status
        else:
            status = 502
        return _NodeFailed(f"failed: {exc.message}", status=status, code=exc.code or FAILED_CODE, cause=exc)
    return _NodeFailed(f"failed: {type(exc).__name__}: {exc}", cause=exc)


def _message(message: Any) -> dict[str, Any]:
    found = {"role": message.role, "content": message.content}
    if message.name is not None:
        found["name"] = message.name
    return found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (str, int, float, bool)):
        text = repr(value)
        return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"
    return f"a {type(value).__name__}"
