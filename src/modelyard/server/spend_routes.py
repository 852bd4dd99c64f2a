"""Management API for spend, savings and request-path decisions (what the console's charts read).

::

    GET /api/usage/spend?days=30[&endpoint=NAME]
        {"totals": {...}, "by_endpoint": [...], "by_key": [...], "by_day": [...]}
    GET /api/endpoints/{name}/decisions?window=1h[&bucket=S][&deployment=D]
        cache hit rate, router tier mix and escalations per time bucket

Definitions are in `modelyard.store.spend`. Both need the admin key.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..store.models import utcnow
from ..store.spend import decision_series, spend_report
from .http import int_param, json_response
from .admin import require_admin
from .metrics_routes import PARAMS, _parse_params
from .openapi import query

router = APIRouter(prefix="/api")

#: The longest look-back of the spend report.
MAX_DAYS = 366


@router.get("/usage/spend", openapi_extra={"parameters": [
    query("days", "how many days back", type="integer", minimum=1, maximum=MAX_DAYS, default=30),
    query("endpoint", "only this endpoint")]})
async def spend(request: Request, gateway=Depends(require_admin)) -> Response:
    """Spend and savings over the last ``days`` (default 30): totals, by endpoint, by key, by day."""
    days = int_param(request, "days", 30, 1, MAX_DAYS)
    endpoint = request.query_params.get("endpoint") or None
    if endpoint is not None and not (gateway.flows is not None and endpoint in gateway.flows):
        gateway.endpoints.get(endpoint)
    await gateway.writer.flush()
    until = utcnow()
    report = await asyncio.to_thread(spend_report, gateway.db, since=until - timedelta(days=days), until=until,
                                     endpoint=endpoint)
    return json_response({"days": days, **report})


@router.get("/endpoints/{name}/decisions", openapi_extra={"parameters": PARAMS})
async def decisions(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """Cache and router decisions of one endpoint over ``?window=`` (same parameters as ``/metrics``)."""
    gateway.endpoints.get(name)
    window_text, window, bucket_s = _parse_params(request)
    await gateway.writer.flush()
    until = utcnow()
    series = await asyncio.to_thread(decision_series, gateway.db, endpoint=name, since=until - window, until=until,
                                     bucket_s=bucket_s, deployment=request.query_params.get("deployment") or None)
    return json_response({"window": window_text, **series})
