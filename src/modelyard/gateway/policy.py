"""The policy stage: which endpoint, and which of its deployments answers.

The endpoint is the request's ``model`` field. A request that names a
deployment (header ``modelyard-deployment``, or Azure's
``azureml-model-deployment``) goes to it even at 0% traffic — that is how a
new deployment is tried before it gets any. Otherwise the endpoint's policy
decides: the traffic split (weights per deployment), or — for a ``router``
endpoint — the router stage (gateway/router.py), which calls the endpoint's
tiers itself, so mirror and dispatch are not run.
"""

from __future__ import annotations

from ..errors import ModelyardError, invalid
from .pipeline import Call, Next

ROUTE_NAMES = {"chat": "chat completions", "completion": "completions", "embedding": "embeddings"}


class Policy:
    def __init__(self, endpoints, split, router=None) -> None:
        self.endpoints = endpoints
        self.split = split
        self.router = router

    async def __call__(self, call: Call, call_next: Next) -> None:
        endpoint = call.endpoint or self.endpoints.get(call.request.model)  # 404 for an unknown name
        call.endpoint = endpoint
        if call.target is not None:
            deployment = endpoint.deployments.get(call.target)
            if deployment is None:
                raise ModelyardError(f"Endpoint '{endpoint.name}' has no deployment '{call.target}'; it has: "
                                     f"{', '.join(endpoint.deployments) or 'none'}.", status=404,
                                     param="modelyard-deployment", code="deployment_not_found")
            route = f"target:{deployment.name}"
        elif endpoint.spec.policy == "router" and self.router is not None:
            if call.kind == "embedding" and "embedding" not in endpoint.tasks:
                raise invalid(f"endpoint '{endpoint.name}' routes between generation models, which do not answer "
                              "embeddings", param="model", code="wrong_task")
            await self.router(call)
            return
        else:
            deployment = self.split.choose(endpoint)
            route = f"split:{deployment.name}"
        if call.kind not in deployment.card.tasks:
            raise invalid(f"endpoint '{endpoint.name}' serves {deployment.card.task} model '{deployment.card.id}', "
                          f"which does not answer {ROUTE_NAMES[call.kind]}", param="model", code="wrong_task")
        call.deployment = deployment
        call.route = route
        await call_next(call)
