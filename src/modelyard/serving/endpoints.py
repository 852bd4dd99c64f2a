"""Endpoints: stable names in front of deployments, and the traffic split.

`Endpoints` holds what is running. It persists every change through the
`ConfigStore` first and then starts or stops instances, so a gateway that
restarts finds its endpoints again and starts them the same way.

Several gateways on one database: after each committed change `published`
is called with the endpoint's name (the gateway sends a change notice, see
`store.notices`), and `sync(name)` on the other gateways re-reads that
endpoint and its deployments and reconciles what runs with what is stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..catalog.registry import Catalog
from ..errors import ModelyardError, from_validation_error, invalid, not_found
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


KEY_SLOTS = ("primary", "secondary")


def _changes(method: Any) -> Any:
    """A change made through this gateway: `sync` is put off until it is done (it would otherwise see a half-made
    change in the store, e.g. a deployment saved but not yet started), and `published` is told afterwards."""

    @functools.wraps(method)
    async def wrapper(self: "Endpoints", *args: Any, **kwargs: Any) -> Any:
        self._changing += 1
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._changing -= 1
            self._changed += 1
            name = _endpoint_of(args, kwargs)
            if name is not None:
                self.published(name)
            if not self._changing and self._sync_wanted:  # a sync put off while the change ran
                self._sync_wanted = False
                self._background(self.sync())

    return wrapper


def _endpoint_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    first = args[0] if args else kwargs.get("spec") or kwargs.get("name") or kwargs.get("endpoint_name")
    if isinstance(first, EndpointSpec):
        return first.name
    if isinstance(first, DeploymentSpec):
        return first.endpoint_name
    return first if isinstance(first, str) else None


class Endpoints:
    """The live endpoints of one gateway, backed by the config store.

    Every change is validated, then persisted, then carried out, so a
    gateway that restarts finds its endpoints again. Each endpoint has two
    keys, ``primary`` and ``secondary``, regenerable one at a time.
    """

    def __init__(self, store: Any, catalog: Catalog, runtime: LocalRuntime, keys: Any = None) -> None:
        self.store = store
        self.catalog = catalog
        self.runtime = runtime
        self.keys = keys
        self._endpoints: dict[str, Endpoint] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: names an endpoint may not take (a flow's: requests name either by ``model``); set by the gateway
        self.name_taken: Any = lambda name: False
        #: told the endpoint's name after each change made here (the gateway publishes a change notice)
        self.published: Callable[[str], None] = lambda name: None
        self._changing = 0
        #: changes made here so far: a sync whose read straddles one drops its read (it may predate the change)
        self._changed = 0
        #: a sync was asked for while a change ran here: it runs once the change ends
        self._sync_wanted = False
        #: stored deployments the sync could not start here (endpoint, deployment, model), reported once
        self._cannot_run: set[tuple[str, str, str]] = set()
        self._sync_lock = asyncio.Lock()

    def __contains__(self, name: object) -> bool:
        return name in self._endpoints

    def get(self, name: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise not_found(f"The model (endpoint) '{name}' does not exist. GET /v1/models lists the endpoints.",
                            param="model", code="model_not_found") from None

    def deployment(self, endpoint: str, name: str) -> Deployment:
        ep = self.get(endpoint)
        try:
            return ep.deployments[name]
        except KeyError:
            raise not_found(f"Endpoint '{endpoint}' has no deployment '{name}'; it has: "
                            f"{', '.join(ep.deployments) or 'none'}.", param="deployment",
                            code="deployment_not_found") from None

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
                self._background(coro)

    def _background(self, coro: Any) -> None:
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

    # --- endpoints ----------------------------------------------------------------

    def _check_routes(self, spec: EndpointSpec, deployments: dict[str, Any]) -> None:
        for name_of, table in (("traffic", spec.traffic), ("mirror_traffic", spec.mirror_traffic)):
            unknown = [name for name in table if name not in deployments]
            if unknown:
                raise invalid(f"{name_of} names deployment(s) {', '.join(map(repr, unknown))} that endpoint "
                              f"'{spec.name}' does not have; it has: {', '.join(deployments) or 'none'}",
                              param=name_of, code="unknown_deployment")
        if spec.policy == "router":
            check_tiers(spec, deployments)

    @_changes
    async def create_endpoint(self, spec: EndpointSpec) -> tuple[Endpoint, dict[str, str]]:
        """Create an empty endpoint and its two keys; returns the plain keys (shown once)."""
        if spec.name in self._endpoints:
            raise ModelyardError(f"endpoint {spec.name!r} already exists", status=409, param="name", code="conflict")
        if self.name_taken(spec.name):
            raise ModelyardError(f"a flow is named {spec.name!r}; a flow and an endpoint cannot share a name",
                                 status=409, param="name", code="name_taken")
        self._check_routes(spec, {})
        self.store.save_endpoint(spec)
        endpoint = self._endpoints[spec.name] = Endpoint(spec)
        return endpoint, self._new_keys(spec.name)

    def new_keys(self, endpoint: str) -> dict[str, str]:
        """A ``primary`` and a ``secondary`` key that may call ``endpoint`` (an endpoint's or a flow's name)."""
        return self._new_keys(endpoint)

    def _new_keys(self, endpoint: str) -> dict[str, str]:
        if self.keys is None:
            return {}
        return {slot: self.keys.create(slot, endpoint)[0] for slot in KEY_SLOTS}

    @_changes
    async def update_endpoint(self, name: str, **changes: Any) -> Endpoint:
        """Change traffic, mirror_traffic or description; the whole new spec is validated first."""
        endpoint = self.get(name)
        data = endpoint.spec.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        spec = _validated(EndpointSpec, data)
        self._check_routes(spec, endpoint.deployments)
        self.store.save_endpoint(spec)
        endpoint.spec = spec
        log.info("endpoint %s: traffic %s, mirror %s", name, spec.traffic, spec.mirror_traffic)
        return endpoint

    @_changes
    async def delete_endpoint(self, name: str) -> None:
        endpoint = self.get(name)
        self.store.delete_endpoint(name)
        del self._endpoints[name]
        if self.keys is not None:
            for key in self.keys.list():
                if key.endpoint == name and not key.revoked:
                    self.keys.revoke(key.id)
        await asyncio.gather(*(d.stop() for d in endpoint.deployments.values()))

    def key_info(self, name: str) -> dict[str, Any]:
        self.get(name)
        out: dict[str, Any] = {}
        for key in self.keys.list() if self.keys is not None else []:
            if key.endpoint == name and key.name in KEY_SLOTS and not key.revoked:
                out[key.name] = {"prefix": key.prefix, "created_at": key.created_at.isoformat()}
        return out

    def regenerate_key(self, name: str, which: str) -> str:
        """Replace one of the endpoint's keys; the old one stops working at once. Returns the new key."""
        self.get(name)
        if which not in KEY_SLOTS:
            raise invalid(f"which must be 'primary' or 'secondary', not {which!r}", param="which")
        for key in self.keys.list():
            if key.endpoint == name and key.name == which and not key.revoked:
                self.keys.revoke(key.id)
        return self.keys.create(which, name)[0]

    # --- deployments --------------------------------------------------------------

    @_changes
    async def create_deployment(self, spec: DeploymentSpec, *, all_traffic: bool = False) -> Deployment:
        endpoint = self.get(spec.endpoint_name)
        if spec.name in endpoint.deployments:
            raise ModelyardError(f"deployment {spec.name!r} already exists in endpoint {endpoint.name!r}", status=409,
                                 param="name", code="conflict")
        try:
            card = self.catalog.get(spec.model)
        except ModelyardError as err:
            raise invalid(err.message, param="model", code="model_not_found") from None
        _check_autoscale(spec, card)
        adapter = getattr(card, "adapter", None)
        if adapter is not None and not Path(adapter.path).is_file():
            raise ModelyardError(f"'{spec.model}' is a fine-tuned model whose LoRA adapter {adapter.path} is missing; "
                                 "run its fine-tuning job again or restore the file", status=409, param="model",
                                 code="adapter_missing")
        self.store.save_deployment(spec)
        dep = await self._add(endpoint, spec)
        if dep.state == "failed":
            self.store.delete_deployment(endpoint.name, spec.name)
            del endpoint.deployments[spec.name]
            raise ModelyardError(f"deployment {dep.key} failed to start: {dep.error}", status=500, code="deployment_failed")
        # Traffic moves only once the deployment is ready: never to instances still loading.
        # A router endpoint routes by its tiers instead.
        if endpoint.spec.policy == "router":
            try:
                check_tiers(endpoint.spec, endpoint.deployments, require_all=False)
            except ModelyardError:
                await self.delete_deployment(endpoint.name, spec.name)
                raise
        elif all_traffic or not endpoint.spec.traffic:
            await self.update_endpoint(endpoint.name, traffic={spec.name: 100},
                                       mirror_traffic={k: v for k, v in endpoint.spec.mirror_traffic.items() if k != spec.name})
        return dep

    @_changes
    async def update_deployment(self, endpoint_name: str, name: str, *, instance_count: int | None = None,
                                request_settings: dict[str, Any] | None = None,
                                autoscale: dict[str, Any] | None = None, clear_autoscale: bool = False) -> Deployment:
        """Scale (new instances get traffic once ready; removed ones drain first), change request settings, or
        set (merged into the current settings) or clear autoscaling."""
        dep = self.deployment(endpoint_name, name)
        data = dep.spec.model_dump()
        if instance_count is not None:
            data["instance_count"] = instance_count
        if request_settings:
            data["request_settings"] = {**data["request_settings"], **request_settings}
        if clear_autoscale:
            data["autoscale"] = None
        elif autoscale is not None:
            data["autoscale"] = {**(data.get("autoscale") or {}), **autoscale}
        spec = _validated(DeploymentSpec, data)
        _check_autoscale(spec, dep.card)
        self.store.save_deployment(spec)
        await dep.reconfigure(spec)
        return dep

    @_changes
    async def delete_deployment(self, endpoint_name: str, name: str) -> None:
        endpoint = self.get(endpoint_name)
        dep = self.deployment(endpoint_name, name)
        if endpoint.spec.traffic.get(name, 0) > 0:
            raise ModelyardError(f"deployment '{name}' still receives {endpoint.spec.traffic[name]}% of live traffic; "
                                 "move its traffic elsewhere first", status=409, param="traffic", code="deployment_has_traffic")
        if name in endpoint.spec.mirror_traffic:
            await self.update_endpoint(endpoint_name, mirror_traffic={})
        self.store.delete_deployment(endpoint_name, name)
        del endpoint.deployments[name]
        if name in endpoint.spec.traffic:
            await self.update_endpoint(endpoint_name, traffic={k: v for k, v in endpoint.spec.traffic.items() if k != name})
        await dep.stop()

    # --- apply (idempotent) -----------------------------------------------------------

    @_changes
    async def apply_endpoint(self, spec: EndpointSpec) -> tuple[str, Endpoint, dict[str, str]]:
        """Create the endpoint or bring it to `spec`: 'created', 'updated' or 'unchanged'."""
        if spec.name not in self._endpoints:
            endpoint, keys = await self.create_endpoint(spec)
            return "created", endpoint, keys
        endpoint = self.get(spec.name)
        if endpoint.spec == spec:
            return "unchanged", endpoint, {}
        # The file is the whole truth: what it leaves out (a budget, a mirror) is removed, not kept.
        self._check_routes(spec, endpoint.deployments)
        self.store.save_endpoint(spec)
        endpoint.spec = spec
        log.info("endpoint %s applied: policy %s, traffic %s", spec.name, spec.policy, spec.traffic)
        return "updated", endpoint, {}

    @_changes
    async def apply_deployment(self, spec: DeploymentSpec) -> tuple[str, Deployment]:
        endpoint = self.get(spec.endpoint_name)
        current = endpoint.deployments.get(spec.name)
        if current is None:
            return "created", await self.create_deployment(spec)
        if current.spec == spec:
            return "unchanged", current
        if (current.spec.model, current.spec.options, current.spec.environment_variables) != \
                (spec.model, spec.options, spec.environment_variables):
            raise invalid(f"deployment '{spec.name}' runs model '{current.spec.model}'; changing its model, options or "
                          "environment needs a new deployment (create it, move the traffic, delete the old one)",
                          param="model", code="immutable_field")
        _check_autoscale(spec, current.card)
        self.store.save_deployment(spec)
        await current.reconfigure(spec)
        return "updated", current

    # --- changes made through another gateway -----------------------------------------

    async def sync(self, name: str | None = None) -> None:
        """Bring endpoint ``name`` (every endpoint when None) in line with the store: another gateway on the
        same database created, changed or deleted it or its deployments.

        New deployments start (in the background), removed ones stop, changed ones are reconfigured (a
        changed model is stopped and started again). While a change made here is under way (a deployment's
        model loading can take minutes) the sync is put off until it ends, without waiting: the caller — the
        key reload timer, the change-notice listener — goes on with its other work."""
        if self._changing:
            self._sync_wanted = True
            return
        async with self._sync_lock:
            changed = self._changed
            if name is None:
                specs = await asyncio.to_thread(self.store.list_endpoints)
                dspecs = await asyncio.to_thread(self.store.list_deployments)
                names = {s.name for s in specs} | set(self._endpoints)
            else:
                spec = await asyncio.to_thread(self.store.get_endpoint, name)
                specs = [spec] if spec is not None else []
                dspecs = await asyncio.to_thread(self.store.list_deployments, name) if spec is not None else []
                names = {name}
            if self._changing or self._changed != changed:
                # a change began or ended here while we read: the read may predate it (an endpoint just created
                # would look deleted through another gateway); this gateway's own state wins, and the sync
                # runs again once no change is under way
                if self._changing:
                    self._sync_wanted = True
                else:
                    self._background(self.sync())
                return
            stored = {s.name: s for s in specs}
            for endpoint_name in sorted(names):
                wanted = {d.name: d for d in dspecs if d.endpoint_name == endpoint_name}
                await self._reconcile(endpoint_name, stored.get(endpoint_name), wanted)

    async def _reconcile(self, name: str, spec: EndpointSpec | None, wanted: dict[str, DeploymentSpec]) -> None:
        endpoint = self._endpoints.get(name)
        if spec is None:
            if endpoint is not None:
                del self._endpoints[name]
                log.info("endpoint %s was deleted through another gateway; stopping its deployments", name)
                await asyncio.gather(*(d.stop() for d in endpoint.deployments.values()), return_exceptions=True)
            return
        if endpoint is None:
            endpoint = self._endpoints[name] = Endpoint(spec)
            log.info("endpoint %s was created through another gateway", name)
        for dname, dep in list(endpoint.deployments.items()):
            new = wanted.get(dname)
            if new is None or (new.model, new.options, new.environment_variables) != \
                    (dep.spec.model, dep.spec.options, dep.spec.environment_variables):
                del endpoint.deployments[dname]
                self._background(dep.stop())
            elif new.model_dump(mode="json") != dep.spec.model_dump(mode="json"):
                self._background(dep.reconfigure(new))
        for dname, dspec in wanted.items():
            if dname not in endpoint.deployments:
                try:
                    await self._add_in_background(endpoint, dspec)
                except ModelyardError as err:  # a model this gateway's catalog does not know
                    said = (name, dname, dspec.model)
                    if said not in self._cannot_run:  # said once, not at every sync
                        self._cannot_run.add(said)
                        log.error("deployment %s/%s (model %s) cannot run on this gateway: %s", name, dname,
                                  dspec.model, err.message)
        # the spec last: traffic moves to a deployment once it is known here
        if spec.model_dump(mode="json") != endpoint.spec.model_dump(mode="json"):
            endpoint.spec = spec

    async def _add_in_background(self, endpoint: Endpoint, dspec: DeploymentSpec) -> None:
        card = self.catalog.get(dspec.model)  # raises for a model this gateway's catalog does not know
        if card.is_hosted:
            await self._add(endpoint, dspec)  # nothing to wait for: it takes traffic at once, as where it was made
        else:
            self._background(self._add(endpoint, dspec))  # instances start; traffic reaches them once ready

    async def close(self) -> None:
        """The gateway shuts down: its deployments stop here (not deleted; a runtime shared with other gateways,
        Ray at RAY_ADDRESS, keeps serving them there)."""
        detach = getattr(self.runtime, "detach", None)
        if detach is not None:
            detach()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(d.stop() for e in self._endpoints.values() for d in e.deployments.values()),
                             return_exceptions=True)
        await self.runtime.close()


def check_tiers(spec: EndpointSpec, deployments: dict[str, Any], *, require_all: bool = True) -> None:
    """A router endpoint's tiers must be its deployments, all of one task.

    An endpoint created before its deployments (``apply -f`` creates the
    endpoint first) may name tiers not deployed yet: those answer 503 naming
    the missing tier until they are. Once the endpoint has deployments, a
    change that names a tier that is none of them is refused (``apply -f``
    applies such a change after the file's deployments).
    """
    if deployments and require_all:
        unknown = [t for t in spec.tiers if t not in deployments]
        if unknown:
            raise invalid(f"tiers name deployment(s) {', '.join(map(repr, unknown))} that endpoint '{spec.name}' "
                          f"does not have; it has: {', '.join(deployments)}", param="tiers", code="unknown_tier")
    kinds = {t: ("embedding" if deployments[t].card.task == "embedding" else "generation")
             for t in spec.tiers if t in deployments}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{t} ({deployments[t].card.task})" for t in kinds)
        raise invalid(f"tiers must all answer the same task; these differ: {shown}", param="tiers",
                      code="tiers_differ_in_task")


def _check_autoscale(spec: DeploymentSpec, card: Any) -> None:
    if spec.autoscale is not None and card.is_hosted:
        raise invalid(f"'{spec.model}' is a hosted model: it has no instances to autoscale (its capacity is "
                      "instance_count times max_concurrent_requests_per_instance); remove autoscale",
                      param="autoscale", code="autoscale_not_supported")


def _validated(model: Any, data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
