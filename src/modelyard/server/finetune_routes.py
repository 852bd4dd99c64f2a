"""The OpenAI fine-tuning routes: thin, over `modelyard.finetune`.

::

    POST /v1/fine_tuning/jobs                    {"model", "training_file", "validation_file", "hyperparameters",
                                                  "method", "suffix", "seed", "metadata"}      → fine_tuning.job
    GET  /v1/fine_tuning/jobs?after=&limit=                                     → list of jobs, newest first
    GET  /v1/fine_tuning/jobs/{id}                                              → fine_tuning.job
    POST /v1/fine_tuning/jobs/{id}/cancel                                       → fine_tuning.job (cancelled)
    GET  /v1/fine_tuning/jobs/{id}/events?after=&limit=                         → events, newest first
    GET  /v1/fine_tuning/jobs/{id}/checkpoints?after=&limit=                    → checkpoints, latest step first

Training files are uploaded through ``/v1/files`` with purpose ``fine-tune``.
Only the admin key (or the web console's session) may call these routes: a
job's result is a new model in the catalog, which is the operator's to change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ..errors import ModelyardError, from_validation_error, invalid
from ..finetune.jobs import FineTuneRunner
from ..finetune.spec import FineTuneCreate, describe_checkpoint, describe_event, describe_job, parse_row_id
from ..store.batches import storable
from ..store.finetune import ID_WIDTH
from .http import api_key, int_param, json_response, parse_json, read_body
from .openapi import json_body, query
from .ui.auth import console_session

router = APIRouter(prefix="/v1/fine_tuning")

#: a create body is a few fields; anything bigger is not one
MAX_CREATE_BYTES = 64 * 1024


def _admin(request: Request) -> Any:
    """The admin key's record (None for the web console's session); 401 without a valid key, 403 for another."""
    key = api_key(request)
    if key is None and console_session(request):
        return None
    if key is None:
        raise ModelyardError("You didn't provide an API key.", status=401, code="missing_api_key")
    info = request.app.state.gateway.keys.verify(key)
    if info is None:
        raise ModelyardError("Incorrect API key provided.", status=401, code="invalid_api_key")
    if not info.is_admin:
        raise ModelyardError("Fine-tuning needs the admin key: a job adds a model to the catalog.", status=403,
                             code="not_admin")
    return info


def _runner(request: Request) -> FineTuneRunner:
    runner = getattr(request.app.state.gateway, "finetune", None)
    if runner is None:
        raise ModelyardError("This gateway has not started its fine-tuning jobs yet.", status=503,
                             code="not_ready", headers={"retry-after": "1"})
    return runner


def _cursor(request: Request, prefix: str) -> int | None:
    """An ``after`` cursor naming an event or checkpoint (``<prefix>N``), or the 400 naming it."""
    after = request.query_params.get("after")
    if after is None:
        return None
    number = parse_row_id(after, prefix)
    if number is None:
        raise invalid(f"Invalid value for 'after': the id of a {prefix.rstrip('-')} ('{prefix}…'), not "
                      f"{after[:40]!r}.", param="after")
    return number


def _page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


@router.post("/jobs", openapi_extra=json_body(FineTuneCreate))
async def create_job(request: Request) -> Response:
    """Create a fine-tuning job; it starts ``validating_files`` at once and runs when its turn comes."""
    key = _admin(request)
    runner = _runner(request)
    req = FineTuneCreate.parse(parse_json(await read_body(request, MAX_CREATE_BYTES)))
    return json_response(describe_job(await runner.create(req, key)))


@router.get("/jobs", openapi_extra={"parameters": [
    query("limit", "how many (1-100)", type="integer", minimum=1, maximum=100),
    query("after", "the id of the last job of the previous page", type="string")]})
async def list_jobs(request: Request) -> Response:
    key = _admin(request)
    runner = _runner(request)
    limit = int_param(request, "limit", 20, 1, 100)
    after = request.query_params.get("after")
    if after is not None and not storable(after, ID_WIDTH):
        raise invalid(f"Invalid value for 'after': the id of a fine-tuning job (at most {ID_WIDTH} characters).",
                      param="after")
    rows, more = await asyncio.to_thread(runner.store.list_jobs, owner_key_id=None if key is None or key.is_admin
                                         else key.id, limit=limit, after=after)
    return json_response(_page([describe_job(job) for job in rows], more))


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Response:
    return json_response(describe_job(await _runner(request).get(job_id, _admin(request))))


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel a job that has not finished; its training process is stopped."""
    return json_response(describe_job(await _runner(request).cancel(job_id, _admin(request))))


@router.get("/jobs/{job_id}/events", openapi_extra={"parameters": [
    query("limit", "how many (1-1000)", type="integer", minimum=1, maximum=1000),
    query("after", "the id of the last event of the previous page (events come newest first)", type="string")]})
async def list_events(request: Request, job_id: str) -> Response:
    runner = _runner(request)
    job = await runner.get(job_id, _admin(request))
    limit = int_param(request, "limit", 20, 1, 1000)
    rows, more = await asyncio.to_thread(runner.store.events, job.id, after=_cursor(request, "ftevent-"), limit=limit)
    return json_response(_page([describe_event(row) for row in rows], more))


@router.get("/jobs/{job_id}/checkpoints", openapi_extra={"parameters": [
    query("limit", "how many (1-100)", type="integer", minimum=1, maximum=100),
    query("after", "the id of the last checkpoint of the previous page", type="string")]})
async def list_checkpoints(request: Request, job_id: str) -> Response:
    runner = _runner(request)
    job = await runner.get(job_id, _admin(request))
    limit = int_param(request, "limit", 10, 1, 100)
    rows, more = await asyncio.to_thread(runner.store.checkpoints, job.id, after=_cursor(request, "ftckpt-"),
                                         limit=limit)
    return json_response(_page([describe_checkpoint(row) for row in rows], more))


# -- evaluations (modelyard's own): base against tuned, stored with the job -----------------------

#: ``/api/fine_tuning``: what OpenAI's fine-tuning API has no place for
api_router = APIRouter(prefix="/api/fine_tuning")


class ModelScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    score: float = Field(ge=0)
    examples: int = Field(ge=1)
    completion_tokens: int = Field(ge=0)
    seconds: float = Field(ge=0)
    decode_tokens: int = Field(default=0, ge=0)
    tokens_per_s: float = Field(ge=0)


class Evaluation(BaseModel):
    """``POST /api/fine_tuning/jobs/{id}/evaluations``: what `modelyard finetune eval` measured."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, max_length=500, description="the test file's name")
    data_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    metric: str = Field(default="exact_match", max_length=200)
    base: ModelScore
    tuned: ModelScore


@api_router.post("/jobs/{job_id}/evaluations", openapi_extra=json_body(Evaluation))
async def add_evaluation(request: Request, job_id: str) -> Response:
    """Keep an evaluation with a succeeded job, as one of its events (``data.evaluation``)."""
    runner = _runner(request)
    job = await runner.get(job_id, _admin(request))
    if job.status != "succeeded":
        raise ModelyardError(f"Fine-tuning job {job.id} is {job.status}; only a succeeded job's model can be "
                             "evaluated.", status=409, param="fine_tuning_job_id", code="job_not_succeeded")
    body = parse_json(await read_body(request, MAX_CREATE_BYTES))
    try:
        evaluation = Evaluation.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    base, tuned = evaluation.base, evaluation.tuned
    message = (f"Evaluation on {evaluation.data} ({tuned.examples} examples, {evaluation.metric}): base "
               f"{base.score:.3f}, tuned {tuned.score:.3f}; {base.tokens_per_s:.1f} → {tuned.tokens_per_s:.1f} "
               "tokens/s.")
    event = await asyncio.to_thread(runner.store.add_event, job.id, message,
                                    data={"evaluation": evaluation.model_dump()})
    return json_response(describe_event(event), status=201)


@api_router.get("/jobs/{job_id}/evaluations")
async def list_evaluations(request: Request, job_id: str) -> Response:
    """A job's evaluations, newest first."""
    runner = _runner(request)
    job = await runner.get(job_id, _admin(request))
    rows, _ = await asyncio.to_thread(runner.store.events, job.id, limit=1000)
    data = [describe_event(e) | {"evaluation": e.data["evaluation"]} for e in rows
            if isinstance(e.data, dict) and "evaluation" in e.data]
    return json_response({"object": "list", "data": data})
