"""``POST /v1/feedback`` and ``GET /v1/responses/{id}``: rating routed answers and reading the latest one.

Both take an endpoint key (or the admin key), like the OpenAI routes; a key
sees only the answers of endpoints it may call.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ModelyardError, from_validation_error
from ..gateway.feedback import FeedbackRequest
from ..routing.responses import describe
from .http import error_response, json_response, read_body
from .openai_routes import _check_key
from .openapi import json_body


async def post_feedback(request: Request) -> Response:
    gateway = request.app.state.gateway
    try:
        key = _check_key(request)
        raw = await read_body(request, 64 * 1024)
        if not raw.strip():
            raise ModelyardError("The request body is empty; send {response_id, rating}.", status=400, code="invalid_json")
        try:
            fb = FeedbackRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        out = await gateway.feedback.submit(fb, key)
    except ModelyardError as err:
        return error_response(err)
    return json_response(out, 201)


async def get_response(request: Request) -> Response:
    gateway = request.app.state.gateway
    try:
        key = _check_key(request)
        row = await gateway.feedback.response(request.path_params["response_id"], key)
    except ModelyardError as err:
        return error_response(err)
    return json_response(describe(row))


routes = [
    Route("/v1/feedback", post_feedback, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
]

#: /openapi.json's account of `routes` (`server.openapi.install`)
OPENAPI = {
    "/v1/feedback": dict(summary="Rate a routed answer", tags=["Feedback"], status_code=201,
                         openapi_extra=json_body(FeedbackRequest)),
    "/v1/responses/{response_id}": dict(summary="The latest answer to a routed request", tags=["Feedback"]),
}
