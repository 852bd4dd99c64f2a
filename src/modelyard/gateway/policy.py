"""The policy stage: which endpoint, and which of its deployments answers.

The endpoint is the request's ``model`` field. Its policy here is the
traffic split (weights per deployment); the router policy of cost-aware
tiers plugs in at this same place.
"""

from __future__ import annotations

from ..errors import invalid
from .pipeline import Call, Next

ROUTE_NAMES = {"chat": "chat completions", "completion": "completions", "embedding": "embeddings"}


class Policy:
    def __init__(self, endpoints, split) -> None:
        self.endpoints = endpoints
        self.split = split

    async def __call__(self, call: Call, call_next: Next) -> None:
        endpoint = self.endpoints.get(call.request.model)
        call.endpoint = endpoint
        deployment = self.split.choose(endpoint)
        if call.kind not in deployment.card.tasks:
            raise invalid(f"endpoint '{endpoint.name}' serves {deployment.card.task} model '{deployment.card.id}', "
                          f"which does not answer {ROUTE_NAMES[call.kind]}", param="model", code="wrong_task")
        call.deployment = deployment
        call.route = f"split:{deployment.name}"
        await call_next(call)
