"""The OpenAI routes: thin. Parse and validate, run the pipeline, write HTTP.

The body is validated straight from bytes (pydantic's JSON parser), so a
request costs one parse; a malformed body or a bad field is a 400 that names
the field — once the key is known to be good: as with OpenAI, a request
without a valid key is a 401 whatever its body. Everything else happens in
the gateway pipeline (whose auth stage checks the key of a well-formed one).

These are plain Starlette routes, not FastAPI ones: they are the hot path,
they parse their own bodies, and FastAPI's per-request dependency solving
would only add CPU (about 0.1 ms a request, measured by bench/). So FastAPI
cannot document them either: ``OPENAPI`` says what they take, for
/openapi.json (`server.openapi`).
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import ModelyardError, from_validation_error, internal_error
from ..gateway import Call
from ..gateway.auth import verify_key
from ..store.keys import KeyInfo
from ..wire import KINDS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .http import api_key, error_response, header_value, json_response, read_body
from .openapi import json_body

log = logging.getLogger(__name__)

def _validate(kind: str, raw: bytes):
    if not raw.strip():
        raise ModelyardError("The request body is empty; send a JSON object.", status=400, code="invalid_json")
    try:
        return KINDS[kind].model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            raise ModelyardError(f"The request body is not valid JSON: {first.get('msg')}", status=400,
                                 code="invalid_json") from None
        if first.get("type") == "model_type":
            raise ModelyardError("The request body must be a JSON object.", status=400, code="invalid_json") from None
        raise from_validation_error(exc) from None


def _headers(call: Call) -> dict[str, str]:
    headers = {
        "x-request-id": call.request_id,
        # The endpoint is the client's `model` until it is found, and a route can hold a router rule's name.
        "x-modelyard-endpoint": header_value(call.endpoint_name),
        "x-modelyard-deployment": header_value(call.deployment_name),
        "x-modelyard-cache": call.cache,
        "x-modelyard-route": header_value(call.route),
        # For a stream: the gateway's share of the time to the first chunk.
        "x-modelyard-overhead-ms": f"{max(call.elapsed_s() - call.upstream_s, 0) * 1000:.3f}",
    }
    if call.stream is None:
        headers["x-modelyard-cost-usd"] = f"{call.cost_usd:.8f}"
    if call.headers:
        headers.update(call.headers)
    return headers


async def _handle(kind: str, request: Request) -> Response:
    gateway = request.app.state.gateway
    call = None
    try:
        key = api_key(request)
        try:
            body = _validate(kind, await read_body(request, gateway.settings.max_body_bytes))
        except ModelyardError:
            # Authentication comes before the body, as with OpenAI: without a valid key this is a 401. Checked
            # only here, for a body that fails; a good body's key is checked (and the refusal recorded) by the
            # pipeline's auth stage.
            verify_key(gateway.keys, key)
            raise
        headers = request.headers
        target = headers.get("modelyard-deployment") or headers.get("azureml-model-deployment")
        call = Call(kind, body, key, target=target or None, request_headers=headers)
        await gateway.pipeline(call)
    except ModelyardError as err:
        return error_response(err, _headers(call) if call is not None else None)
    except Exception:
        log.exception("request failed")
        return error_response(internal_error(), _headers(call) if call is not None else None)
    if call.stream is not None:
        return StreamingResponse(call.stream, media_type="text/event-stream", headers=_headers(call))
    return json_response(call.body, headers=_headers(call))


async def chat_completions(request: Request) -> Response:
    return await _handle("chat", request)


async def completions(request: Request) -> Response:
    return await _handle("completion", request)


async def embeddings(request: Request) -> Response:
    return await _handle("embedding", request)


def _check_key(request: Request) -> KeyInfo:
    return verify_key(request.app.state.gateway.keys, api_key(request))


def _model_entry(endpoint) -> dict:
    models = sorted({d.card.id for d in endpoint.deployments.values()})
    return {"id": endpoint.name, "object": "model", "created": 0, "owned_by": "modelyard",
            "models": models, "tasks": sorted(endpoint.tasks)}


async def list_models(request: Request) -> Response:
    try:
        info = _check_key(request)
    except ModelyardError as err:
        return error_response(err)
    gateway = request.app.state.gateway
    data = [_model_entry(e) for e in gateway.endpoints.all() if info.allows(e.name)]
    if gateway.flows is not None:
        data += [_flow_entry(f) for f in gateway.flows.all() if info.allows(f.name)]
    return json_response({"object": "list", "data": data})


def _flow_entry(loaded) -> dict:
    """A flow as a model: called by name like an endpoint (chat completions, for a chat flow)."""
    return {"id": loaded.name, "object": "model", "created": 0, "owned_by": "modelyard", "kind": "flow",
            "tasks": ["chat"] if loaded.flow.is_chat else []}


async def get_model(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        info = _check_key(request)
        # the key's scope first, as for a chat request: a key of one endpoint gets the same 403 for every other
        # name, existing or not, so it cannot probe which endpoints exist
        if not info.allows(name):
            raise ModelyardError(f"This key may not call endpoint '{name}'.", status=403, param="model",
                                 code="endpoint_not_allowed")
        flows = request.app.state.gateway.flows
        if flows is not None and name in flows:
            return json_response(_flow_entry(flows.find(name)))
        endpoint = request.app.state.gateway.endpoints.get(name)
    except ModelyardError as err:
        return error_response(err)
    return json_response(_model_entry(endpoint))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{name}", get_model, methods=["GET"]),
]

#: A completion: a JSON object, or with ``stream: true`` server-sent events ending with ``data: [DONE]``.
_COMPLETION = {200: {"description": "The completion, or with `stream: true` its chunks as server-sent events",
                     "content": {"application/json": {"schema": {"type": "object"}},
                                 "text/event-stream": {}}}}

#: /openapi.json's account of `routes` (`server.openapi.install`): `APIRoute` arguments by path. The examples
#: name the endpoints `modelyard up` creates, ``default`` (chat) and ``embed``.
OPENAPI = {
    "/v1/chat/completions": dict(
        summary="Create a chat completion", tags=["OpenAI"], responses=_COMPLETION,
        openapi_extra=json_body(ChatCompletionRequest, example={
            "model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})),
    "/v1/completions": dict(
        summary="Create a completion", tags=["OpenAI"], responses=_COMPLETION,
        openapi_extra=json_body(CompletionRequest, example={"model": "default", "prompt": "Say hello.",
                                                            "max_tokens": 16})),
    "/v1/embeddings": dict(
        summary="Create embeddings", tags=["OpenAI"],
        openapi_extra=json_body(EmbeddingRequest, example={"model": "embed", "input": "Say hello."})),
    "/v1/models": dict(summary="List the endpoints this key may call", tags=["OpenAI"]),
    "/v1/models/{name}": dict(summary="Describe an endpoint", tags=["OpenAI"]),
}
