"""Prometheus metrics for the request path, served at ``/metrics``.

Each app gets its own `CollectorRegistry`, so several gateways (or tests) in
one process do not share counters.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("endpoint", "deployment")
        self.requests = Counter("modelyard_requests", "Requests answered, by endpoint, deployment and status",
                                (*labels, "status"), registry=self.registry)
        self.prompt_tokens = Counter("modelyard_prompt_tokens", "Prompt tokens", labels, registry=self.registry)
        self.completion_tokens = Counter("modelyard_completion_tokens", "Generated tokens", labels, registry=self.registry)
        self.cost = Counter("modelyard_cost_usd", "Cost in USD", labels, registry=self.registry)
        self.ttft = Histogram("modelyard_time_to_first_token_seconds", "Time to the first generated token",
                              labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("modelyard_request_latency_seconds", "End-to-end request latency",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("modelyard_requests_in_flight", "Requests being answered", registry=self.registry)
        self.ratings = Counter("modelyard_feedback", "Feedback ratings of routed answers, by the tier that answered",
                               (*labels, "rating"), registry=self.registry)
        self.router_fallbacks = Counter(
            "modelyard_router_fallbacks", "Learned-router decisions left to the endpoint's fallback, by reason: ood "
            "(the prompt is far from the training data) or inactive (the router did not beat the length rule)",
            ("endpoint", "reason"), registry=self.registry)
        self.cache = CacheMetrics(self.registry)

        # The labelled series of each (endpoint, deployment, status), looked up once: `labels()` is
        # the costly part of an update, and this runs for every request.
        self._series: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def _children(self, endpoint: str, deployment: str, status: int) -> tuple[Any, ...]:
        key = (endpoint, deployment, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(endpoint, deployment, str(status)),
                self.prompt_tokens.labels(endpoint, deployment),
                self.completion_tokens.labels(endpoint, deployment),
                self.cost.labels(endpoint, deployment),
                self.latency.labels(endpoint, deployment),
                self.ttft.labels(endpoint, deployment),
            )
        return series

    def observe(self, endpoint: str, deployment: str, status: int, prompt_tokens: int, completion_tokens: int,
                cost: float, latency_s: float, ttft_s: float | None) -> None:
        requests, prompt, completion, cost_usd, latency, ttft = self._children(endpoint, deployment, status)
        requests.inc()
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
        if cost:
            cost_usd.inc(cost)
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)

    def router_fallback(self, endpoint: str, reason: str) -> None:
        self.router_fallbacks.labels(endpoint, reason).inc()

    def feedback(self, endpoint: str, deployment: str, rating: int) -> None:
        self.ratings.labels(endpoint, deployment, "up" if rating > 0 else "down").inc()

    def watch_usage_writer(self, writer: Any) -> None:
        """Export the usage writer's queue and losses, read at each scrape: records waiting, written,
        quarantined (refused by the database for their content) and dropped (queue full)."""
        self.registry.register(_UsageWriterCollector(writer))

    def watch_deployments(self, endpoints: Any) -> None:
        """Export each local deployment's instance count, read at each scrape (``modelyard_deployment_instances``):
        the series that shows autoscaling at work."""
        self.registry.register(_DeploymentCollector(endpoints))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CacheMetrics:
    """The response cache's series, per endpoint (see `modelyard.gateway.cache`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ep = ("endpoint",)
        self.lookups = Counter("modelyard_cache_lookups", "Cache decisions: hit, semantic-hit, miss, bypass, unavailable, warming",
                               (*ep, "result"), registry=registry)
        self.stored = Counter("modelyard_cache_stored", "Answers stored in the cache", ep, registry=registry)
        self.rejected = Counter("modelyard_cache_rejected", "Semantic neighbours not served because a guard or the judge "
                                "found they ask something else", (*ep, "guard"), registry=registry)
        self.saved_tokens = Counter("modelyard_cache_saved_tokens", "Tokens not generated thanks to cache hits", ep,
                                    registry=registry)
        self.saved_usd = Counter("modelyard_cache_saved_usd", "USD not spent thanks to cache hits", ep, registry=registry)
        self.errors = Counter("modelyard_cache_errors", "Cache store failures; the request was answered without the cache",
                              ep, registry=registry)
        self.corrupt = Counter("modelyard_cache_corrupt_entries", "Stored entries dropped as corrupt (never served)", ep,
                               registry=registry)
        self.backend_up = Gauge("modelyard_cache_backend_up", "1 while the endpoint's cache store answers, 0 while it is down",
                                ep, registry=registry)
        self.entries = Gauge("modelyard_cache_entries", "Entries in the endpoint's cache (known to this gateway)", ep,
                             registry=registry)
        self.memory = Gauge("modelyard_cache_memory_bytes", "Memory the endpoint's cache index holds in this gateway", ep,
                            registry=registry)


class _UsageWriterCollector:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def collect(self) -> Any:
        w = self.writer
        yield GaugeMetricFamily("modelyard_usage_pending", "Usage records waiting to be written", value=w.pending)
        yield CounterMetricFamily("modelyard_usage_written", "Usage records written", value=w.written)
        yield CounterMetricFamily("modelyard_usage_quarantined",
                                  "Usage records the database refused for their content (logged, not retried)",
                                  value=w.quarantined)
        yield CounterMetricFamily("modelyard_usage_dropped", "Usage records dropped because the queue was full",
                                  value=w.dropped)


class _DeploymentCollector:
    def __init__(self, endpoints: Any) -> None:
        self.endpoints = endpoints

    def collect(self) -> Any:
        instances = GaugeMetricFamily("modelyard_deployment_instances",
                                      "Instances a local deployment runs now (autoscaling changes it)",
                                      labels=("endpoint", "deployment"))
        for endpoint in self.endpoints.all():
            for dep in list(endpoint.deployments.values()):
                if not dep.is_hosted:
                    instances.add_metric((endpoint.name, dep.name), len(dep.instances))
        yield instances
