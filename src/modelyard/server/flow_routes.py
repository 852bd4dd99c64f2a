"""The flow API (``/api/flows``): apply, list, run and trace flows; what ``modelyard flow`` calls.

======  ===================================  ================================================================
PUT     /api/flows/{name}                    apply: ``{yaml, files: {path: text}, description}`` (admin)
POST    /api/flows/{name}/check              check a flow without storing it: ``{yaml, files}`` (admin)
GET     /api/flows                           list (admin)
GET     /api/flows/{name}                    one, with its YAML and files (admin)
DELETE  /api/flows/{name}                    delete it and revoke its keys (admin)
POST    /api/flows/{name}/run                ``{inputs, variants, stream}`` → outputs and trace (a key for it)
GET     /api/flows/{name}/runs               latest runs, newest first (``?limit=``) (a key for it)
GET     /api/flows/{name}/runs/{id}          one run: its trace and its steps' usage records (a key for it)
======  ===================================  ================================================================

Applying a flow checks it first (every problem names its line; nothing
changes if one is found), and the first apply creates a ``primary`` and a
``secondary`` key that may call the flow — and only it — shown once, as
for an endpoint. The flow is then called by name: ``model`` in a chat
request (a chat flow), or ``run`` here. A run goes through the gateway's
request path like a chat request (`gateway.flows`): it is recorded (its
record holds the trace), and each step is its own call.

A streamed run (``"stream": true``) sends server-sent events as things
happen: ``node_start`` and ``node`` (a node's span as it starts and as it
ends), ``delta`` (``{node, delta}``: the streamed output's text as it is
generated), then ``done`` (``{id, outputs, usage, cost_usd, trace}``) or
``error`` (the error, the run id and the trace of what ran). The signed-in
console may run a flow with its session (and CSRF token) instead of a key;
the run is the admin key's.

A key other than the admin key sees only its own runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from ..errors import ModelyardError, not_found
from ..flows import FlowError
from ..gateway import Call
from ..gateway.auth import verify_key
from ..gateway.flows import FlowRunRequest
from ..serving.flows import MAX_CHARS, describe
from .admin import read_model, require_admin
from .http import api_key, error_response, header_value, json_response
from .openapi import json_body
from .ui.auth import console_session

router = APIRouter(prefix="/api/flows")


class FlowApply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the flow.dag.yaml text
    yaml: str = Field(min_length=1, max_length=MAX_CHARS)
    #: the flow folder's other files the YAML names: ``{"prompts/answer.jinja2": "..."}``
    files: dict[str, str] = Field(default_factory=dict)
    description: str = Field(default="", max_length=2000)


class FlowRunBody(BaseModel):
    """``POST /api/flows/{name}/run``'s body: `FlowRunRequest` without the name (the path has it)."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, str] = Field(default_factory=dict)
    stream: bool = False


def _registry(gateway: Any) -> Any:
    if gateway.flows is None:  # pragma: no cover - every gateway built by Gateway.open has one
        raise ModelyardError("this gateway serves no flows", status=501, code="flows_disabled")
    return gateway.flows


@router.get("")
async def list_flows(gateway=Depends(require_admin)) -> Response:
    """Every flow: inputs, outputs, nodes with what each reads, variants, and its latest run."""
    registry = _registry(gateway)
    await gateway.writer.flush()
    data = []
    for loaded in registry.all():
        latest = await asyncio.to_thread(registry.store.runs, loaded.name, limit=1)
        data.append(describe(loaded) | {"last_run": latest[0] if latest else None})
    return json_response({"object": "list", "data": data})


@router.post("/{name}/check", openapi_extra=json_body(FlowApply))
async def check_flow(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """Check a flow as apply would (its endpoints must exist), store nothing: ``{"ok": true, "warnings"}``
    or the 400 naming the first lines that are wrong."""
    body = await read_model(request, FlowApply)
    try:
        flow = _registry(gateway).check(name, body.yaml, body.files)
    except Exception as exc:
        raise _flow_error(exc) from None
    return json_response({"ok": True, "warnings": list(flow.warnings), "nodes": [n.name for n in flow.nodes]})


@router.put("/{name}", openapi_extra=json_body(FlowApply))
async def apply_flow(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """Create or replace a flow. 201 with its two keys (shown once) when it is new, 200 when replaced."""
    body = await read_model(request, FlowApply)
    registry = _registry(gateway)
    created = registry.get(name) is None and gateway.flows.store.get(name) is None
    try:
        loaded = await registry.apply(name, body.yaml, body.files, body.description)
    except Exception as exc:
        raise _flow_error(exc) from None
    out = describe(loaded)
    out["result"] = "created" if created else "updated"
    if created:
        out["keys"] = gateway.endpoints.new_keys(name)
    return json_response(out, status=201 if created else 200)


@router.get("/{name}")
async def get_flow(name: str, gateway=Depends(require_admin)) -> Response:
    return json_response(describe(_registry(gateway).find(name), with_files=True))


@router.delete("/{name}")
async def delete_flow(name: str, gateway=Depends(require_admin)) -> Response:
    """Delete the flow; its keys are revoked. Its runs' usage records stay."""
    await _registry(gateway).delete(name)
    for key in gateway.keys.list():
        if key.endpoint == name and not key.revoked and not key.is_admin:
            gateway.keys.revoke(key.id)
    return json_response({"object": "flow.deleted", "name": name, "deleted": True})


@router.post("/{name}/run", openapi_extra=json_body(FlowRunBody, example={"inputs": {"question": "What is X?"}}))
async def run_flow(name: str, request: Request) -> Response:
    """Run the flow once through the gateway (auth, budgets, each step routed, cached and recorded)."""
    gateway = request.app.state.gateway
    call = None
    try:
        key = api_key(request)
        if key is None and console_session(request):  # the signed-in console (its CSRF token checked)
            key = gateway.admin_key
        verify_key(gateway.keys, key)  # a 401 before the body is read, as for the OpenAI routes
        body = await read_model(request, FlowRunBody)
        call = Call("flow", FlowRunRequest(model=name, **body.model_dump()), key, request_headers=request.headers)
        await gateway.pipeline(call)
    except ModelyardError as err:
        return error_response(err, _headers(call))
    headers = _headers(call)
    if call.stream is not None:
        return StreamingResponse(call.stream, media_type="text/event-stream", headers=headers)
    return json_response(call.body, headers=headers)


def _headers(call: Call | None) -> dict[str, str] | None:
    if call is None:
        return None
    headers = {"x-request-id": call.request_id, "x-modelyard-endpoint": header_value(call.endpoint_name)}
    if call.stream is None and call.trace is not None:
        headers["x-modelyard-cost-usd"] = f"{call.cost_usd:.8f}"
    return headers


def _caller(request: Request, name: str) -> tuple[Any, int | None]:
    """The gateway and the key whose runs to show: None for the admin key (all runs)."""
    gateway = request.app.state.gateway
    try:
        require_admin(request)
        return gateway, None
    except ModelyardError:
        info = verify_key(gateway.keys, api_key(request))
        if not info.allows(name):
            raise ModelyardError(f"This key may not call flow '{name}'.", status=403, param="name",
                                 code="endpoint_not_allowed") from None
        return gateway, info.id


@router.get("/{name}/runs")
async def list_runs(name: str, request: Request, limit: int = 50) -> Response:
    """The flow's latest runs: status, tokens, USD, latency; the traces from ``runs/{id}``."""
    gateway, key_id = _caller(request, name)
    await gateway.writer.flush()  # runs that just ended are listed
    runs = await _to_thread(_registry(gateway).store.runs, name, limit=limit, key_id=key_id)
    return json_response({"object": "list", "flow": name, "data": runs})


@router.get("/{name}/runs/{run_id}")
async def get_run(name: str, run_id: str, request: Request) -> Response:
    """One run: its trace (a span per node: inputs, output, endpoint, tier, cache, tokens, USD, latency, error)
    and its steps' usage records."""
    gateway, key_id = _caller(request, name)
    await gateway.writer.flush()
    run = await _to_thread(_registry(gateway).store.run, name, run_id)
    if run is None or (key_id is not None and run["key_id"] != key_id):
        raise not_found(f"Flow '{name}' has no run '{run_id}'.",
                        param="run_id", code="run_not_found")
    return json_response(run)


async def _to_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _flow_error(exc: Exception) -> ModelyardError:
    if isinstance(exc, ModelyardError):
        return exc
    if isinstance(exc, FlowError):
        return exc.to_error()
    raise exc
