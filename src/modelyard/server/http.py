"""HTTP plumbing shared by the routes: bodies, keys, errors and headers."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ModelyardError


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(err: ModelyardError, headers: dict[str, str] | None = None) -> Response:
    if err.headers:
        headers = {**(headers or {}), **err.headers}
    return json_response(err.body(), err.status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes with 413 (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ModelyardError:
    return ModelyardError(f"Request body is larger than the limit of {limit} bytes.", status=413,
                          code="request_too_large")


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise ModelyardError("The request body is empty; send a JSON object.", status=400, code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ModelyardError(f"The request body is not valid JSON: {exc}", status=400, code="invalid_json") from None


def api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("api-key") or None
