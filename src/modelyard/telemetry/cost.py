"""What a request cost, in USD, from its model's catalog price.

**Hosted models** cost their list price per token::

    cost = (prompt_tokens × price.input_per_1m + completion_tokens × price.output_per_1m) / 1e6

**Local models** cost the time they held an instance. A card (or, per
deployment, the spec's ``cost.usd_per_instance_hour``) says what one running
instance costs per hour — an operator's estimate of the machine's share,
power included. That hourly cost is spread over the work the instance did:
each request pays for the seconds it kept its instance busy, from sending
the request to the last token (prompt processing and generation; a stream
pays until it ends)::

    cost = usd_per_instance_hour × busy_seconds / 3600 / max_concurrent_requests_per_instance
           + token prices, if the card has any (usually none for local models)

An instance that serves several requests at once (the deployment's
``max_concurrent_requests_per_instance``) splits its hour between them, so
a fully loaded instance is charged its hourly cost once, not once per
request. Idle time is charged to nobody. The seconds are measured by the
gateway around the upstream call, so time spent waiting for a free instance
counts as busy time too (a queue is rare: it only forms when every instance
is busy).

So a local answer is cheap but not free, and the router and the budgets can
compare it with a hosted one. Per deployment::

    # deployment.yml
    name: local-small
    endpoint_name: assistant
    model: gemma-3-270m
    cost: {usd_per_instance_hour: 0.05}
"""

from __future__ import annotations

from typing import Any

from ..catalog.card import ModelCard


def request_cost(card: ModelCard, prompt_tokens: int, completion_tokens: int, busy_s: float, *,
                 usd_per_instance_hour: float | None = None, concurrency: int = 1) -> float:
    """USD for one request to a model with ``card``'s price (see the module docstring).

    ``usd_per_instance_hour`` overrides the card's hourly price of a local
    model; ``concurrency`` is how many requests one instance serves at once.
    """
    price = card.price
    tokens = price.token_cost(prompt_tokens, completion_tokens)
    if card.is_hosted:
        return tokens
    hourly = price.per_instance_hour if usd_per_instance_hour is None else usd_per_instance_hour
    return hourly * max(busy_s, 0.0) / 3600 / max(concurrency, 1) + tokens


def deployment_cost(deployment: Any, prompt_tokens: int, completion_tokens: int, busy_s: float) -> float:
    """USD for one request answered by ``deployment``: its card's price, with the deployment's own
    ``cost.usd_per_instance_hour`` and concurrency for a local model."""
    spec = getattr(deployment, "spec", None)
    override = getattr(spec, "cost", None)
    settings = getattr(spec, "request_settings", None)
    concurrency = (getattr(settings, "max_concurrent_requests_per_instance", None) or 1) if settings else 1
    return request_cost(deployment.card, prompt_tokens, completion_tokens, busy_s,
                        usd_per_instance_hour=override.usd_per_instance_hour if override is not None else None,
                        concurrency=concurrency)
