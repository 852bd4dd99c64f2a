"""Management API for rollouts (``/api/.../rollout``, ``/api/rollouts/...``).

Thin routes over `serving.rollout.RolloutController` (``gateway.rollouts``)::

    POST /api/endpoints/{name}/deployments/{deployment}/rollout   start one   → 201 and the rollout
         {"steps": [10, 25, 50, 100], "interval_s": 60, "max_error_rate": 0.02, "max_p95_ms": 3000}
    GET  /api/endpoints/{name}/rollouts                           {"data": [...]}, newest first
    GET  /api/rollouts/{id}                                       one rollout, with its history
    POST /api/rollouts/{id}/cancel                                back to the split before it

Every route needs the admin key. A rollout is its stored record plus
``traffic_now`` (the endpoint's live split), ``step_label`` ("2/4") and
``next_check_at`` (when the current step is judged).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..errors import ModelyardError
from .http import json_response, row_id
from .admin import read_model, require_admin
from .openapi import json_body

router = APIRouter(prefix="/api")


class RolloutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the new deployment's share of live traffic at each step, in percent
    steps: list[int]
    #: seconds each step is watched before it is judged
    interval_s: float = 60.0
    #: the most errors (5xx, 408, 429) per request the new deployment may have in a step, 0.02 = 2%
    max_error_rate: float = 0.02
    #: the highest p95 latency the new deployment may have in a step, in milliseconds
    max_p95_ms: float = 3000.0
    #: fewer requests than this in a step: not judged, the rollout moves on
    min_requests: int = Field(default=1, ge=1)


def _controller(gateway):
    rollouts = getattr(gateway, "rollouts", None)
    if rollouts is None:
        raise ModelyardError("This gateway does not run rollouts.", status=501, code="not_implemented")
    return rollouts


@router.post("/endpoints/{name}/deployments/{deployment}/rollout", status_code=201,
             openapi_extra=json_body(RolloutBody))
async def start_rollout(request: Request, name: str, deployment: str, gateway=Depends(require_admin)) -> Response:
    """Start shifting live traffic to the deployment step by step; the first step's split is set at once."""
    body = await read_model(request, RolloutBody)
    rollouts = _controller(gateway)
    record = await rollouts.start(name, deployment, body.steps, interval_s=body.interval_s,
                                  max_error_rate=body.max_error_rate, max_p95_ms=body.max_p95_ms,
                                  min_requests=body.min_requests)
    return json_response(rollouts.describe(record), 201)


@router.get("/endpoints/{name}/rollouts")
async def list_rollouts(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    rollouts = _controller(gateway)
    return json_response({"data": [rollouts.describe(r) for r in rollouts.list(name)]})


@router.get("/rollouts/{rollout_id}")
async def get_rollout(request: Request, rollout_id: str, gateway=Depends(require_admin)) -> Response:
    rollouts = _controller(gateway)
    return json_response(rollouts.describe(rollouts.get(row_id(rollout_id, "rollout_id", "rollout"))))


@router.post("/rollouts/{rollout_id}/cancel")
async def cancel_rollout(request: Request, rollout_id: str, gateway=Depends(require_admin)) -> Response:
    """Stop a running rollout and restore the split from before it (409 once it has ended)."""
    rollouts = _controller(gateway)
    return json_response(rollouts.describe(await rollouts.cancel(row_id(rollout_id, "rollout_id", "rollout"))))
