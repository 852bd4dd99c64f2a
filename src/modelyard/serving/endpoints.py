"""Endpoints: stable names in front of deployments, and the traffic split.

`Endpoints` holds what is running. It persists every change through the
`ConfigStore` first and then starts or stops instances, so a gateway that
restarts finds its endpoints again and starts them the same way.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from ..catalog.registry import Catalog
from ..errors import ModelyardError, invalid, not_found
from ..runtime.local import LocalRuntime
from .deployment import Deployment
from .spec import DeploymentSpec, EndpointSpec

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    spec: EndpointSpec
    deployments: dict[str, Deployment] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tasks(self) -> set[str]:
        out: set[str] = set()
        for d in self.deployments.values():
            out.update(d.card.tasks)
        return out

    def describe(self) -> dict[str, Any]:
        return {**self.spec.model_dump(mode="json"),
                "deployments": [d.describe() for d in self.deployments.values()]}


class TrafficSplit:
    """Chooses a deployment by the endpoint's traffic weights (percent)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, endpoint: Endpoint) -> Deployment:
        weights = [(name, w) for name, w in endpoint.spec.traffic.items() if w > 0 and name in endpoint.deployments]
        if not weights:
            if len(endpoint.deployments) == 1:
                return next(iter(endpoint.deployments.values()))
            raise ModelyardError(f"endpoint {endpoint.name!r} sends no traffic to any deployment", status=503,
                                 code="no_traffic")
        if len(weights) == 1:
            return endpoint.deployments[weights[0][0]]
        pick = self.rng.uniform(0, sum(w for _, w in weights))
        for name, w in weights:
            pick -= w
            if pick <= 0:
                return endpoint.deployments[name]
        return endpoint.deployments[weights[-1][0]]


class Endpoints:
    """The live endpoints of one gateway, backed by the config store."""

    def __init__(self, store: Any, catalog: Catalog, runtime: LocalRuntime) -> None:
        self.store = store
        self.catalog = catalog
        self.runtime = runtime
        self._endpoints: dict[str, Endpoint] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def get(self, name: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise not_found(f"The model (endpoint) '{name}' does not exist. GET /v1/models lists the endpoints.",
                            param="model", code="model_not_found") from None

    def all(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def ready(self) -> bool:
        return all(d.state == "ready" for e in self._endpoints.values() for d in e.deployments.values())

    async def load(self, *, wait: bool = False) -> None:
        """Start every endpoint the store knows. Deployments start in the background unless `wait`."""
        for spec in self.store.list_endpoints():
            self._endpoints[spec.name] = Endpoint(spec)
        starts = []
        for dspec in self.store.list_deployments():
            endpoint = self._endpoints.get(dspec.endpoint_name)
            if endpoint is None:
                continue
            starts.append(self._add(endpoint, dspec))
        if wait:
            await asyncio.gather(*starts, return_exceptions=True)
        else:
            for coro in starts:
                task = asyncio.create_task(coro)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _add(self, endpoint: Endpoint, dspec: DeploymentSpec) -> Deployment:
        card = self.catalog.get(dspec.model)
        dep = Deployment(dspec, card, self.runtime)
        endpoint.deployments[dspec.name] = dep
        try:
            await dep.start()
        except Exception:
            pass  # state "failed" and the error are on the deployment
        return dep

    async def create_endpoint(self, spec: EndpointSpec) -> Endpoint:
        if spec.name in self._endpoints:
            raise ModelyardError(f"endpoint {spec.name!r} already exists", status=409, param="name", code="conflict")
        self.store.save_endpoint(spec)
        endpoint = self._endpoints[spec.name] = Endpoint(spec)
        return endpoint

    async def create_deployment(self, spec: DeploymentSpec, *, all_traffic: bool = False) -> Deployment:
        endpoint = self.get(spec.endpoint_name)
        if spec.name in endpoint.deployments:
            raise ModelyardError(f"deployment {spec.name!r} already exists in endpoint {endpoint.name!r}", status=409,
                                 param="name", code="conflict")
        try:
            self.catalog.get(spec.model)
        except ModelyardError as err:
            raise invalid(err.message, param="model", code="model_not_found") from None
        self.store.save_deployment(spec)
        if all_traffic or not endpoint.spec.traffic:
            endpoint.spec = endpoint.spec.model_copy(update={"traffic": {spec.name: 100}})
            self.store.save_endpoint(endpoint.spec)
        dep = await self._add(endpoint, spec)
        if dep.state == "failed":
            raise ModelyardError(f"deployment {dep.key} failed to start: {dep.error}", status=500, code="deployment_failed")
        return dep

    async def delete_endpoint(self, name: str) -> None:
        endpoint = self.get(name)
        self.store.delete_endpoint(name)
        del self._endpoints[name]
        await asyncio.gather(*(d.stop() for d in endpoint.deployments.values()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(d.stop() for e in self._endpoints.values() for d in e.deployments.values()),
                             return_exceptions=True)
        await self.runtime.close()
