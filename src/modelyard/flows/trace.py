"""A flow run's trace: one `Span` per node, and the run's totals.

Every run of a flow is a `Trace`. Each node the run reached has a `Span`:
what it read and returned, which endpoint and deployment (tier) answered,
the cache decision, tokens, USD, latency, the number of attempts, and how it
ended::

    ok         the node ran and returned its output
    error      the node failed (``error`` says why); the run failed with it
    bypassed   its ``activate`` condition was not met, or every node it reads was bypassed
    cancelled  the run ended first (another node failed, or the client hung up)

Nodes the run never reached (dependents of a failed node) have no span. The
run's tokens and USD are the sum of its spans (`Trace.prompt_tokens`, …):
the flow call's usage record is built from them.

Spans keep the values themselves, so a run that nobody stores costs no
serialisation; `Trace.to_dict()` renders inputs and outputs as JSON text cut
to ``max_chars`` (a few KB) for storage and the API.

OpenTelemetry
=============

`configure_otel` is called once at start-up with the OTLP endpoint from the
settings (``OTEL_EXPORTER_OTLP_ENDPOINT``). With ``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http`` installed (the ``otel`` extra,
part of ``all``) it makes a tracer provider of its own — not the global one,
which would switch on the web framework's per-request spans too — that sends
spans in batches, off the request path; without them it
logs once what to install and export stays a no-op. `export_otel` sends
one finished trace as a span tree (the run, a child per node, with their
real start and end times) through the OpenTelemetry API — also to a tracer
provider the application configured itself (``opentelemetry-instrument``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger(__name__)

#: How much of a node's inputs or output a stored trace keeps (characters of JSON).
PREVIEW_CHARS = 4096

_otel_configured = False
_provider: Any = None


@dataclass(slots=True)
class Span:
    """One node of one run. Times: ``started_at``/``ended_at`` are wall-clock (epoch seconds),
    ``latency_ms`` is measured on the monotonic clock."""

    node: str
    kind: str
    started_at: float
    status: str = "running"  # running | ok | error | bypassed | cancelled
    variant: str | None = None
    ended_at: float | None = None
    latency_ms: float | None = None
    inputs: dict[str, Any] | None = None
    #: an llm node's rendered prompt: its chat messages, or the completion prompt's text
    prompt: Any = None
    output: Any = None
    endpoint: str | None = None
    deployment: str | None = None
    cache: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    request_id: str | None = None
    attempts: int = 0
    error: str | None = None
    #: a python node's traceback, from the user's code on
    traceback: str | None = None
    _t0: float = 0.0

    def finish(self, status: str, *, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.ended_at = time.time()
        self.latency_ms = (time.perf_counter() - self._t0) * 1000 if self._t0 else 0.0

    def to_dict(self, max_chars: int = PREVIEW_CHARS) -> dict[str, Any]:
        out = self._fields(max_chars)
        if self.kind == "retrieve" and self.status == "ok" and isinstance(self.output, list):
            # which documents were found, never cut with the output's text (a hit-rate evaluation reads them)
            out["hits"] = [_hit(h) for h in self.output if isinstance(h, dict)]
        return out

    def _fields(self, max_chars: int) -> dict[str, Any]:
        return {
            "node": self.node, "kind": self.kind, "variant": self.variant, "status": self.status,
            "started_at": self.started_at, "ended_at": self.ended_at, "latency_ms": self.latency_ms,
            "inputs": preview(self.inputs, max_chars) if self.inputs is not None else None,
            "prompt": preview(self.prompt, max_chars) if self.prompt is not None else None,
            "output": preview(self.output, max_chars) if self.status == "ok" else None,
            "endpoint": self.endpoint, "deployment": self.deployment, "cache": self.cache,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd, "request_id": self.request_id, "attempts": self.attempts,
            "error": self.error, "traceback": self.traceback,
        }


@dataclass(slots=True)
class Trace:
    """One run of a flow: its spans in the order the nodes started, and how the run ended."""

    run_id: str
    flow: str | None
    started_at: float
    status: str = "running"  # running | ok | error | cancelled
    ended_at: float | None = None
    latency_ms: float | None = None
    error: str | None = None
    #: the node the run failed on, if it failed on one
    failed_node: str | None = None
    spans: list[Span] = field(default_factory=list)
    #: the flow's outputs (for a run that finished)
    outputs: dict[str, Any] | None = None

    def span(self, node: str) -> Span | None:
        """The span of ``node``, or None if the run never reached it."""
        return next((s for s in self.spans if s.node == node), None)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.spans)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.spans)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.spans)

    def to_dict(self, max_chars: int = PREVIEW_CHARS) -> dict[str, Any]:
        """The trace as plain JSON-ready data, inputs and outputs cut to ``max_chars`` of JSON each."""
        return {
            "run_id": self.run_id, "flow": self.flow, "status": self.status, "error": self.error,
            "failed_node": self.failed_node, "started_at": self.started_at, "ended_at": self.ended_at,
            "latency_ms": self.latency_ms, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd,
            "outputs": {k: preview(v, max_chars) for k, v in self.outputs.items()} if self.outputs else None,
            "spans": [s.to_dict(max_chars) for s in self.spans],
        }


def _hit(hit: dict[str, Any]) -> dict[str, Any]:
    """A retrieval hit without its text: the document's path and title, the chunk's section, the score."""
    document = hit.get("document") if isinstance(hit.get("document"), dict) else {}
    chunk = hit.get("chunk") if isinstance(hit.get("chunk"), dict) else {}
    meta = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    return {"path": document.get("path"), "title": meta.get("title"), "section": chunk.get("section"),
            "score": hit.get("score")}


def preview(value: Any, max_chars: int = PREVIEW_CHARS) -> str:
    """``value`` as JSON text of at most about ``max_chars`` characters (a cut one says how long it was)."""
    try:
        text = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… [{len(text)} characters]"


# -- OpenTelemetry --------------------------------------------------------------


def configure_otel(endpoint: str | None, *, service_name: str = "modelyard") -> bool:
    """Send flow traces to the OTLP collector at ``endpoint`` (None: not configured). Called once at start-up;
    answers whether traces will be exported. Without the SDK and the OTLP exporter, logs what to install."""
    global _otel_configured
    if not endpoint:
        return False
    if _otel_configured:
        return True
    try:
        from opentelemetry import trace as otel_trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set, but flow traces are not exported: install "
                    "opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    # The exporter reads the endpoint (and OTEL_EXPORTER_OTLP_HEADERS …) itself, as the OTel spec says.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Kept to ourselves rather than installed globally: a global provider would also switch on the web
    # framework's own per-request spans, on every request's path.
    global _provider
    _provider = provider
    _otel_configured = True
    log.info("flow traces are exported to %s", endpoint)
    return True


def shutdown_otel() -> None:
    """Send the spans still waiting in the batch processor (at shutdown)."""
    if _provider is not None:
        _provider.force_flush(5000)


def export_otel(trace: Trace) -> bool:
    """Send a finished ``trace`` as OpenTelemetry spans; False (and nothing done) when no tracer provider is
    configured or the OpenTelemetry API is not installed."""
    try:
        from opentelemetry import trace as otel_trace
        from opentelemetry.trace import Status, StatusCode
    except ImportError:
        return False
    if _provider is not None:
        tracer = _provider.get_tracer("modelyard.flows")
    elif type(otel_trace.get_tracer_provider()).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return False  # nobody would receive them
    else:  # a provider the application installed itself (opentelemetry-instrument)
        tracer = otel_trace.get_tracer("modelyard.flows")
    ended = trace.ended_at or time.time()
    root = tracer.start_span(f"flow {trace.flow}", start_time=_ns(trace.started_at), attributes=_attributes({
        "modelyard.flow": trace.flow, "modelyard.flow.run_id": trace.run_id,
        "modelyard.flow.status": trace.status, "modelyard.flow.failed_node": trace.failed_node,
        "gen_ai.usage.input_tokens": trace.prompt_tokens, "gen_ai.usage.output_tokens": trace.completion_tokens,
        "modelyard.cost_usd": trace.cost_usd}))
    if trace.status in ("error", "cancelled"):
        root.set_status(Status(StatusCode.ERROR, trace.error or trace.status))
    parent = otel_trace.set_span_in_context(root)
    for span in trace.spans:
        child = tracer.start_span(f"node {span.node}", context=parent, start_time=_ns(span.started_at),
                                  attributes=_attributes({
                                      "modelyard.flow.node": span.node, "modelyard.flow.node.kind": span.kind,
                                      "modelyard.flow.node.variant": span.variant,
                                      "modelyard.flow.node.status": span.status,
                                      "modelyard.endpoint": span.endpoint, "modelyard.deployment": span.deployment,
                                      "modelyard.cache": span.cache, "modelyard.request_id": span.request_id,
                                      "modelyard.flow.node.attempts": span.attempts,
                                      "gen_ai.usage.input_tokens": span.prompt_tokens,
                                      "gen_ai.usage.output_tokens": span.completion_tokens,
                                      "modelyard.cost_usd": span.cost_usd}))
        if span.status in ("error", "cancelled"):
            child.set_status(Status(StatusCode.ERROR, span.error or span.status))
        child.end(end_time=_ns(span.ended_at or ended))
    root.end(end_time=_ns(ended))
    return True


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _attributes(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
