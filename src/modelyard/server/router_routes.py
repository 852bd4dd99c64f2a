"""Management API for a router endpoint's numbers (``/api/endpoints/{name}/router/...``).

::

    GET /api/endpoints/{name}/router/report?window=7d
        spend, tier mix, escalation rate, cache savings and the savings against
        sending everything to the top tier, with a time series

    GET /api/endpoints/{name}/router/budget
        the endpoint's spending limits and what it (and each key) spent this day and month

The report's definitions are in `modelyard.telemetry.router_report`. Both routes need
the admin key and work for split endpoints too (their "top tier" is the
priciest deployment).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from pydantic import BaseModel, ConfigDict, Field

from ..routing.calibrate import calibrate as calibrate_threshold
from ..telemetry.router_report import parse_window, router_report
from .http import json_response
from .admin import read_model, require_admin
from .openapi import json_body, query

router = APIRouter(prefix="/api")


@router.get("/endpoints/{name}/router/report", openapi_extra={"parameters": [
    query("window", "how far back: a whole number and a unit, m, h, d or w (default 24h)")]})
async def report(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """The router report over ``?window=`` (default 24h; e.g. 15m, 1h, 24h, 7d, 30d)."""
    text = request.query_params.get("window", "24h")
    window = parse_window(text)
    endpoint = gateway.endpoints.get(name)
    await gateway.writer.flush()  # the calls answered just now are in it
    cards = {dep_name: dep.card for dep_name, dep in endpoint.deployments.items()}
    body = await asyncio.to_thread(router_report, gateway.db, endpoint.spec, cards, window, window_text=text.strip())
    return json_response(body)


@router.get("/endpoints/{name}/router/budget")
async def budget(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """The endpoint's budget: its limits, the tightest one for the endpoint as a whole, and this day's and month's spend."""
    endpoint = gateway.endpoints.get(name)
    tracker = gateway.budget
    spec = endpoint.spec.budget
    out = {"endpoint": name, "budget": spec.model_dump(mode="json") if spec is not None else None,
           "spent_today_usd": tracker.spent(name, None, "day") if tracker else None,
           "spent_this_month_usd": tracker.spent(name, None, "month") if tracker else None}
    state = tracker.state(name, None, spec) if tracker is not None else None
    if state is not None:
        out["state"] = {"limit": state.limit_name, "limit_usd": state.limit_usd, "spent_usd": state.spent_usd,
                        "remaining_usd": state.remaining_usd, "share": state.share, "low": state.low,
                        "exhausted": state.exhausted, "resets_at": state.resets_at.isoformat()}
    return json_response(out)


class CalibrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strong_share: float = Field(ge=0, le=1)
    #: set the threshold even if the router is not activated or is below the length rule on rated answers
    force: bool = False


@router.post("/endpoints/{name}/router/calibrate", openapi_extra=json_body(CalibrateBody))
async def calibrate(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """Set a learned router's threshold so ``{"strong_share": 0.3}`` of recent prompts go to the strong tier."""
    body = await read_model(request, CalibrateBody)
    await gateway.router.responses.flush()
    return json_response(await calibrate_threshold(gateway, name, body.strong_share, force=body.force))


@router.get("/endpoints/{name}/router/outcomes")
async def outcomes(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """Training rows from the endpoint's feedback (``prompt``, ``weak_correct``, ``strong_correct``),
    and the ratings per tier."""
    gateway.endpoints.get(name)
    await gateway.router.responses.flush()
    store = gateway.router.responses.store
    rows = await asyncio.to_thread(store.outcomes, name)
    ratings = await asyncio.to_thread(store.ratings, name)
    return json_response({"endpoint": name, "object": "list", "data": rows, "ratings": ratings})
