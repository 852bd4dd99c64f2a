"""The management API (``/api/...``): what the CLI and the console call.

Every route needs the admin key. Errors are raised as `ModelyardError`; the
app turns them into OpenAI-shaped responses. Changes go through the core (`Endpoints`,
`KeyStore`), which persists them before anything starts.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from ..errors import ModelyardError
from ..store.usage import recent_usage, usage_summary
from .admin import read_model, require_admin
from .http import MAX_DB_INT, api_key, int_param, json_response, row_id
from .openapi import json_body, query

router = APIRouter(prefix="/api")

#: The longest look-back of ``/api/usage``: a hundred years, any history there is.
MAX_USAGE_DAYS = 36_500


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    endpoint: str | None = None


@router.get("/status")
async def status(request: Request, gateway=Depends(require_admin)) -> Response:
    """Endpoints, deployments and instances with their states."""
    return json_response({"ready": gateway.endpoints.ready(),
                          "endpoints": [e.describe() for e in gateway.endpoints.all()]})


@router.get("/keys")
async def list_keys(request: Request, gateway=Depends(require_admin)) -> Response:
    keys = [{"id": k.id, "name": k.name, "endpoint": k.endpoint, "prefix": k.prefix, "is_admin": k.is_admin,
             "created_at": k.created_at.isoformat() if k.created_at else None, "revoked": k.revoked}
            for k in gateway.keys.list()]
    return json_response({"data": keys})


@router.post("/keys", status_code=201, openapi_extra=json_body(KeyCreate))
async def create_key(request: Request, gateway=Depends(require_admin)) -> Response:
    body = await read_model(request, KeyCreate)
    if body.endpoint is not None and not (gateway.flows is not None and body.endpoint in gateway.flows):
        gateway.endpoints.get(body.endpoint)  # a 404 unless it names an endpoint or a flow
    plain, info = gateway.keys.create(body.name, body.endpoint)
    return json_response({"id": info.id, "name": info.name, "endpoint": info.endpoint, "key": plain}, 201)


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """Revoke a key: it stops working here at once and on other gateways sharing the database within
    ``MODELYARD_KEYS_RELOAD_S``; batch jobs it created stop before their next request."""
    number = row_id(key_id, "key_id", "key")
    info = await asyncio.to_thread(gateway.keys.get, number)
    if info is None:
        raise ModelyardError(f"No API key with id '{key_id}'.", status=404, param="key_id", code="key_not_found")
    caller = gateway.keys.verify(api_key(request) or "")
    if caller is not None and caller.id == info.id:
        raise ModelyardError("A key cannot revoke itself: revoke it with another admin key (to rotate the admin "
                             "key, delete MODELYARD_HOME/admin.key and restart).", status=409, param="key_id",
                             code="cannot_revoke_own_key")
    await asyncio.to_thread(gateway.keys.revoke, info.id)
    return json_response({"id": info.id, "name": info.name, "object": "modelyard.key", "revoked": True})


@router.get("/usage", openapi_extra={"parameters": [
    query("days", "how many days back", type="integer", minimum=1, maximum=MAX_USAGE_DAYS, default=30)]})
async def usage(request: Request, gateway=Depends(require_admin)) -> Response:
    """Requests, tokens and cost by endpoint and day (``?days=N``, default 30)."""
    days = int_param(request, "days", 30, 1, MAX_USAGE_DAYS)
    await gateway.writer.flush()
    since = datetime.now(timezone.utc) - timedelta(days=days)
    rows = await asyncio.to_thread(usage_summary, gateway.db, since=since)
    return json_response({"data": rows})


@router.get("/usage/recent", openapi_extra={"parameters": [
    query("limit", "how many records, newest first (more than 1000 is 1000)", type="integer", minimum=1,
          maximum=MAX_DB_INT, default=100),
    query("endpoint", "only this endpoint's records")]})
async def usage_recent(request: Request, gateway=Depends(require_admin)) -> Response:
    await gateway.writer.flush()
    limit = min(int_param(request, "limit", 100, 1, MAX_DB_INT), 1000)  # more than 1000 is 1000
    rows = await asyncio.to_thread(recent_usage, gateway.db, limit, request.query_params.get("endpoint"))
    return json_response({"data": rows}, 200)
