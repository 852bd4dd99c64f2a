"""Management API for endpoints and deployments (``/api/endpoints/...``).

Thin routes over `serving.endpoints.Endpoints`, which validates, persists
and then carries out each change. Every route needs the admin key; every
failure is an OpenAI-shaped error naming the field.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ..cache.spec import CacheSpec
from ..errors import from_validation_error, invalid
from ..serving.spec import Autoscale, DeploymentSpec, EndpointSpec, RequestSettings
from ..store.events import MAX_LIMIT
from ..store.metrics import parse_window
from ..store.models import utcnow
from .http import int_param, json_response
from .admin import read_model, require_admin
from .openapi import json_body, query, some_fields_of

router = APIRouter(prefix="/api")


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None
    description: str | None = None
    #: router endpoints (checked whole by EndpointSpec)
    policy: str | None = None
    tiers: list[str] | None = None
    router: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    #: response cache settings, merged into the current ones (checked by CacheSpec)
    cache: Annotated[dict[str, Any] | None, some_fields_of(CacheSpec)] = None


class DeploymentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance_count: int | None = Field(default=None, ge=1, le=64)
    request_settings: Annotated[dict[str, Any] | None, some_fields_of(RequestSettings)] = None
    #: merged into the current autoscale settings; ``null`` turns autoscaling off (back to ``instance_count``)
    autoscale: Annotated[dict[str, Any] | None, some_fields_of(Autoscale)] = None


class KeyRegenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    which: Literal["primary", "secondary"]


class ApplyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["endpoint", "deployment"]
    spec: dict[str, Any]


# What /api/apply takes, as /openapi.json says: the spec of the kind named. (The route reads an `ApplyBody`, then
# its spec by kind, so that an error names ``spec.FIELD``.)
class ApplyEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["endpoint"]
    spec: EndpointSpec


class ApplyDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["deployment"]
    spec: DeploymentSpec


_APPLY_BODY = Annotated[ApplyEndpoint | ApplyDeployment, Field(discriminator="kind")]


@router.get("/endpoints")
async def list_endpoints(request: Request, gateway=Depends(require_admin)) -> Response:
    return json_response({"data": [e.describe() for e in gateway.endpoints.all()]})


@router.post("/endpoints", status_code=201, openapi_extra=json_body(EndpointSpec))
async def create_endpoint(request: Request, gateway=Depends(require_admin)) -> Response:
    """Create an endpoint; its primary and secondary keys are in this answer only."""
    spec = await read_model(request, EndpointSpec)
    endpoint, keys = await gateway.endpoints.create_endpoint(spec)
    return json_response({**endpoint.describe(), "keys": keys}, 201)


@router.get("/endpoints/{name}")
async def get_endpoint(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    return json_response(gateway.endpoints.get(name).describe())


@router.patch("/endpoints/{name}", openapi_extra=json_body(EndpointPatch))
async def update_endpoint(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    patch = await read_model(request, EndpointPatch)
    changes = patch.model_dump(exclude_none=True)
    if "cache" in changes:  # a partial cache object changes only the settings it names
        changes["cache"] = {**gateway.endpoints.get(name).spec.cache.model_dump(), **changes["cache"]}
    endpoint = await gateway.endpoints.update_endpoint(name, **changes)
    return json_response(endpoint.describe())


@router.delete("/endpoints/{name}")
async def delete_endpoint(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    await gateway.endpoints.delete_endpoint(name)
    return json_response({"deleted": name})


@router.get("/endpoints/{name}/keys")
async def endpoint_keys(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """The endpoint's keys by prefix: keys are stored hashed and shown once, when made."""
    return json_response(gateway.endpoints.key_info(name))


@router.post("/endpoints/{name}/keys/regenerate", openapi_extra=json_body(KeyRegenerate))
async def regenerate_key(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    body = await read_model(request, KeyRegenerate)
    return json_response({"which": body.which, "key": gateway.endpoints.regenerate_key(name, body.which)})


@router.post("/endpoints/{name}/deployments", status_code=201, openapi_extra={
    **json_body(DeploymentSpec, name="DeploymentCreate", from_path=["endpoint_name"]),
    "parameters": [query("all_traffic", "true or 1: move all of the endpoint's traffic to the new deployment")]})
async def create_deployment(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """Create a deployment and wait until its instances are ready (``?all_traffic=true`` moves all traffic to it)."""
    all_traffic = request.query_params.get("all_traffic") in ("1", "true")
    spec = await read_model(request, DeploymentSpec, endpoint_name=name)
    deployment = await gateway.endpoints.create_deployment(spec, all_traffic=all_traffic)
    return json_response(deployment.describe(), 201)


@router.get("/endpoints/{name}/deployments/{deployment}")
async def get_deployment(request: Request, name: str, deployment: str, gateway=Depends(require_admin)) -> Response:
    return json_response(gateway.endpoints.deployment(name, deployment).describe())


@router.patch("/endpoints/{name}/deployments/{deployment}", openapi_extra=json_body(DeploymentPatch))
async def update_deployment(request: Request, name: str, deployment: str, gateway=Depends(require_admin)) -> Response:
    """Scale (``instance_count``), change ``request_settings``, or set or clear (``null``) ``autoscale``, live."""
    patch = await read_model(request, DeploymentPatch)
    for field, model in (("request_settings", RequestSettings), ("autoscale", Autoscale)):
        given = getattr(patch, field)
        unknown = set(given or {}) - set(model.model_fields)
        if unknown:
            raise invalid(f"unknown {field.replace('_', ' ')} setting(s): {', '.join(sorted(unknown))}",
                          param=f"{field}.{sorted(unknown)[0]}", code="unknown_parameter")
    dep = await gateway.endpoints.update_deployment(
        name, deployment, instance_count=patch.instance_count, request_settings=patch.request_settings,
        autoscale=patch.autoscale, clear_autoscale="autoscale" in patch.model_fields_set and patch.autoscale is None)
    return json_response(dep.describe())


@router.delete("/endpoints/{name}/deployments/{deployment}")
async def delete_deployment(request: Request, name: str, deployment: str, gateway=Depends(require_admin)) -> Response:
    await gateway.endpoints.delete_deployment(name, deployment)
    return json_response({"deleted": deployment})


@router.get("/endpoints/{name}/deployments/{deployment}/logs", openapi_extra={"parameters": [
    query("lines", "how many of each log's last lines (1 to 10000)", type="integer", default=100)]})
async def deployment_logs(request: Request, name: str, deployment: str, gateway=Depends(require_admin)) -> Response:
    """The last ``lines`` (default 100) of each instance's log."""
    try:
        lines = max(1, min(int(request.query_params.get("lines", "100")), 10_000))
    except ValueError:
        raise invalid("lines must be an integer", param="lines") from None
    dep = gateway.endpoints.deployment(name, deployment)
    logs = {inst.name: await asyncio.to_thread(_tail, inst.log_file, lines) for inst in dep.instances}
    return json_response({"instances": logs})


@router.get("/endpoints/{name}/deployments/{deployment}/events", openapi_extra={"parameters": [
    query("limit", f"the latest events to return (1 to {MAX_LIMIT})", type="integer", default=100),
    query("window", "only events this recent: a number and a unit, e.g. 15m, 1h, 7d (default: any age)")]})
async def deployment_events(request: Request, name: str, deployment: str, gateway=Depends(require_admin)) -> Response:
    """What happened to the deployment's instances, oldest first: ``scale_up`` and ``scale_down`` (``from``,
    ``to`` and the reason: autoscaling, a cold start, a change of ``instance_count``), ``instance_restarted``
    and ``instance_failed``. A deleted deployment's events stay readable."""
    limit = int_param(request, "limit", 100, 1, MAX_LIMIT)
    since = None
    if request.query_params.get("window"):
        try:
            since = utcnow() - parse_window(request.query_params["window"])
        except ValueError as exc:
            raise invalid(str(exc), param="window") from None
    events = gateway.events
    live = deployment in gateway.endpoints.get(name).deployments  # 404 for an unknown endpoint
    if not live and not await asyncio.to_thread(events.has_events, name, deployment):
        gateway.endpoints.deployment(name, deployment)  # the 404 naming the deployments it has
    rows = await asyncio.to_thread(events.list, name, deployment, limit=limit, since=since)
    return json_response({"endpoint": name, "deployment": deployment, "data": rows})


@router.post("/apply", openapi_extra=json_body(_APPLY_BODY, name="ApplyBody"),
             responses={201: {"description": "Created (200: updated, or already as the spec says)"}})
async def apply(request: Request, gateway=Depends(require_admin)) -> Response:
    """Create or update an endpoint or a deployment from its spec; applying the same spec twice changes nothing."""
    body = await read_model(request, ApplyBody)
    if body.kind == "endpoint":
        spec = await _spec(EndpointSpec, body.spec)
        action, endpoint, keys = await gateway.endpoints.apply_endpoint(spec)
        out = {"action": action, "kind": "endpoint", "name": spec.name, "description": endpoint.describe()}
        if keys:
            out["keys"] = keys
    else:
        spec = await _spec(DeploymentSpec, body.spec)
        action, dep = await gateway.endpoints.apply_deployment(spec)
        out = {"action": action, "kind": "deployment", "name": spec.name, "description": dep.describe()}
    return json_response(out, 201 if action == "created" else 200)


async def _spec(model: Any, data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = from_validation_error(exc)
        err.param = f"spec.{err.param}" if err.param else "spec"
        raise err from None


def _tail(path: Any, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            return b"".join(deque(f, maxlen=lines)).decode(errors="replace")
    except FileNotFoundError:
        return ""
