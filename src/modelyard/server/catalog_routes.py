"""Management API for the catalog (``/api/catalog...``): the cards, and pulling weights.

::

    GET  /api/catalog                 {"data": [card, ...]}  every card, with availability and where it is deployed
    GET  /api/catalog/{id}            one card
    POST /api/catalog/{id}/pull       start fetching the card's weights → 202 and the pull; 200 when already here
    GET  /api/catalog/{id}/pull       the pull's progress: state, bytes per file, the error if it failed

A card here is the catalog's `ModelCard` plus ``available`` (usable now,
nothing to fetch), ``availability`` (``ready``, ``not pulled``, ``not
installed``, ``no OPENAI_API_KEY``, ``missing``), ``memory_mb`` (an estimate
of one instance's memory, local models only; see `memory_estimate_mb`) and
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
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..catalog.card import HostedSource, HubSource, LocalSource, ModelCard, PackageSource
from ..catalog.sources import is_available, pull
from ..errors import ModelyardError, invalid, not_found
from .http import json_response
from .manage_routes import _admin

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")

#: Memory a process needs besides the weights, by format, in MB: llama.cpp's runtime and a
#: small KV cache; Python, torch and sentence-transformers (measured RSS of the built-in models).
RUNTIME_OVERHEAD_MB = {"gguf": 120, "transformers": 450}


def memory_estimate_mb(card: ModelCard) -> int | None:
    """Roughly how much memory one local instance needs, in MB; None for hosted models or an unknown size.

    The weights' size (GGUF files are memory-mapped, so instances of one model
    share those pages) plus a fixed runtime overhead per format. An estimate
    for choosing a model, not a limit: long contexts need more KV cache.
    """
    if card.is_hosted or card.size_bytes is None:
        return None
    return int(round(card.size_bytes / 1_000_000 + RUNTIME_OVERHEAD_MB.get(card.format, 200)))


def availability(card: ModelCard, settings: Any) -> tuple[bool, str]:
    """(usable now, a short word on why not)."""
    if is_available(card, settings):
        return True, "ready"
    source = card.source
    if isinstance(source, HubSource):
        return False, "not pulled"
    if isinstance(source, PackageSource):
        return False, "not installed"
    if isinstance(source, HostedSource):
        return False, f"no {source.api_key_env}"
    if isinstance(source, LocalSource):
        return False, "missing"
    return False, "unavailable"  # pragma: no cover


def card_view(card: ModelCard, gateway: Any) -> dict[str, Any]:
    """A card as the console shows it: the card, its availability, memory estimate and deployments."""
    available, why = availability(card, gateway.settings)
    deployments = [{"endpoint": e.name, "deployment": d.name, "state": d.state,
                    "traffic": e.spec.traffic.get(d.name, 0)}
                   for e in gateway.endpoints.all() for d in e.deployments.values() if d.card.id == card.id]
    return {**card.model_dump(mode="json"), "available": available, "availability": why,
            "memory_mb": memory_estimate_mb(card), "deployments": deployments}


@dataclass
class PullJob:
    """One pull of a card's weights, running or finished."""

    model: str
    state: str = "running"  # running | succeeded | failed
    files: dict[str, dict[str, int | None]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, name: str, done: int, total: int | None) -> None:
        with self._lock:
            self.files[name] = {"done": done, "total": total}

    def describe(self) -> dict[str, Any]:
        with self._lock:
            files = {k: dict(v) for k, v in self.files.items()}
        done = sum(f["done"] or 0 for f in files.values())
        totals = [f["total"] for f in files.values()]
        total = sum(totals) if totals and all(t for t in totals) else None
        return {"object": "catalog.pull", "model": self.model, "state": self.state, "files": files,
                "bytes_done": done, "bytes_total": total, "error": self.error,
                "started_at": int(self.started_at), "finished_at": int(self.finished_at) if self.finished_at else None}


def _jobs(request: Request) -> dict[str, PullJob]:
    jobs = getattr(request.app.state, "pull_jobs", None)
    if jobs is None:
        jobs = request.app.state.pull_jobs = {}
    return jobs


async def _run_pull(job: PullJob, card: ModelCard, settings: Any) -> None:
    try:
        await asyncio.to_thread(pull, card, settings, job.progress)
        job.state = "succeeded"
        log.info("pulled %s", card.id)
    except ModelyardError as err:
        job.state, job.error = "failed", err.body()["error"]
        log.warning("pull of %s failed: %s", card.id, err.message)
    except Exception as exc:  # a bug or an OS error: still a readable answer
        log.exception("pull of %s failed", card.id)
        job.state = "failed"
        job.error = ModelyardError(f"Pulling '{card.id}' failed: {type(exc).__name__}: {exc}", status=500,
                                   code="pull_failed").body()["error"]
    finally:
        job.finished_at = time.time()


@router.get("/catalog")
async def list_cards(request: Request, gateway=Depends(_admin)) -> Response:
    """Every card in catalog order, with availability, memory estimate and deployments."""
    cards = await asyncio.to_thread(lambda: [card_view(c, gateway) for c in gateway.catalog.cards()])
    return json_response({"data": cards})


@router.get("/catalog/{model_id}")
async def get_card(request: Request, model_id: str, gateway=Depends(_admin)) -> Response:
    return json_response(card_view(gateway.catalog.get(model_id), gateway))


@router.post("/catalog/{model_id}/pull")
async def start_pull(request: Request, model_id: str, gateway=Depends(_admin)) -> Response:
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
    task = asyncio.create_task(_run_pull(job, card, gateway.settings))
    tasks = getattr(request.app.state, "pull_tasks", None)
    if tasks is None:
        tasks = request.app.state.pull_tasks = set()
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return json_response(job.describe(), 202)


@router.get("/catalog/{model_id}/pull")
async def get_pull(request: Request, model_id: str, gateway=Depends(_admin)) -> Response:
    gateway.catalog.get(model_id)
    job = _jobs(request).get(model_id)
    if job is None:
        raise not_found(f"No pull of '{model_id}' was started on this gateway; POST /api/catalog/{model_id}/pull "
                        "starts one.", param="model", code="pull_not_found")
    return json_response(job.describe())
