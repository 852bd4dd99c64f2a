"""Management API for endpoints' response caches (``/api/endpoints/{name}/cache``).

``GET`` says how the cache is set up, how many entries it holds and how much
memory its index takes, and — from the usage records of the last ``window``
(default 24h) — its hit rates and what the hits saved. ``DELETE`` empties
it, or only the entries stored more than ``older_than`` ago. Both need the
admin key.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..cache.spec import parse_duration
from ..cache.usage import cache_usage
from ..errors import ModelyardError, invalid
from ..gateway.cache import Cache
from .http import json_response
from .admin import require_admin
from .openapi import query

router = APIRouter(prefix="/api")


def _stage(gateway) -> Cache:
    for stage in gateway.pipeline.stages:
        if isinstance(stage, Cache):
            return stage
    raise ModelyardError("this gateway runs without a cache stage", status=501, code="cache_not_available")


def _duration(request: Request, name: str, default: str | None) -> float | None:
    value = request.query_params.get(name, default)
    if value is None:
        return None
    try:
        return parse_duration(value, what=name)
    except ValueError as exc:
        raise invalid(str(exc), param=name) from None


@router.get("/endpoints/{name}/cache", openapi_extra={"parameters": [
    query("window", "how far back the hit rates and savings go, e.g. 1h, 24h, 7d (default 24h)")]})
async def cache_stats(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """Entries, memory, hit rates (exact and semantic) and savings over ``window`` (default 24h)."""
    endpoint = gateway.endpoints.get(name)
    window = _duration(request, "window", "24h")
    stats = await _stage(gateway).cache.stats(name, endpoint.spec.cache)
    await gateway.writer.flush()
    since = datetime.now(timezone.utc) - timedelta(seconds=window)  # type: ignore[arg-type]
    usage = await asyncio.to_thread(cache_usage, gateway.db, name, since)
    return json_response({"endpoint": name, "window": request.query_params.get("window", "24h"), **stats, **usage})


@router.delete("/endpoints/{name}/cache", openapi_extra={"parameters": [
    query("older_than", "only the entries stored longer ago than this, e.g. 1h")]})
async def cache_clear(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """Delete the endpoint's cached answers (``?older_than=1h``: only those stored more than an hour ago)."""
    endpoint = gateway.endpoints.get(name)
    older_than = _duration(request, "older_than", None)
    if not endpoint.spec.cache.enabled:
        raise invalid(f"endpoint '{name}' has no cache (cache.mode is off)", param="cache.mode", code="cache_off")
    try:
        deleted = await _stage(gateway).cache.clear(name, endpoint.spec.cache, older_than)
    except ModelyardError:
        raise
    except Exception as exc:
        raise ModelyardError(f"the cache of endpoint '{name}' is unavailable: {exc}", status=503,
                             code="cache_unavailable") from None
    return json_response({"endpoint": name, "deleted": deleted})
