"""``POST /api/fine_tuning/datasets``: training data distilled from a router endpoint's kept answers.

::

    POST /api/fine_tuning/datasets  {"endpoint", "window", "min_rating", "tiers", "sources", "holdout",
                                     "max_rows", "upload"}
        → {"object": "fine_tuning.dataset", "counts": {...}, "train": "<jsonl>", "holdout": "<jsonl>"}
          or, with "upload": true, "training_file" and "validation_file": File objects (purpose ``fine-tune``)
          that ``POST /v1/fine_tuning/jobs`` takes at once

The selection is `finetune.distill`'s; this route only reads the body, finds
the endpoint and keeps the files. Admin only (or the web console's session):
the rows are other keys' prompts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..batch.files import FileStore, describe_file
from ..errors import ModelyardError, invalid
from ..finetune.data import MIN_EXAMPLES
from ..finetune.distill import DistillRequest, distill, jsonl, router_endpoint
from ..finetune.jobs import PURPOSE
from ..store.batches import FileRecord
from .admin import read_model, require_admin
from .http import api_key, json_response
from .openapi import json_body

router = APIRouter(prefix="/api/fine_tuning")


@router.post("/datasets", openapi_extra=json_body(DistillRequest))
async def create_dataset(request: Request) -> Response:
    """Select training rows from an endpoint's kept answers: top-tier answers, corrections, positively rated
    answers; return them as JSONL, or keep them as two files for a fine-tuning job."""
    gateway = require_admin(request)
    req: DistillRequest = await read_model(request, DistillRequest)
    spec = router_endpoint(await asyncio.to_thread(gateway.config.get_endpoint, req.endpoint), req.endpoint)
    result = await asyncio.to_thread(distill, gateway.db, spec, req)
    body: dict[str, Any] = result.describe()
    if len(result.train) < MIN_EXAMPLES:
        body["warning"] = (f"only {len(result.train)} training row(s); a fine-tuning job needs at least {MIN_EXAMPLES}"
                           " — widen the window or the sources")
    if not req.upload:
        body["train"] = jsonl(result.train).decode()
        body["holdout"] = jsonl(result.holdout).decode()
        return json_response(body)
    if not result.train:
        raise invalid(f"Nothing to upload: no answer of endpoint '{req.endpoint}' was selected "
                      f"({_why_empty(body['counts'])}).", param="upload", code="empty_dataset")
    files = getattr(gateway.batches, "files", None)
    if files is None:
        raise ModelyardError("This gateway has not opened its file store yet.", status=503, code="not_ready",
                             headers={"retry-after": "1"})
    info = gateway.keys.verify(api_key(request) or "")
    owner = getattr(info, "id", None)
    train = await asyncio.to_thread(_keep, files, jsonl(result.train), f"{req.endpoint}-train.jsonl", owner)
    body["training_file"] = describe_file(train)
    body["validation_file"] = None
    if result.holdout:
        held = await asyncio.to_thread(_keep, files, jsonl(result.holdout), f"{req.endpoint}-holdout.jsonl", owner)
        body["validation_file"] = describe_file(held)
    return json_response(body, 201)


def _keep(files: FileStore, data: bytes, filename: str, owner: int | None) -> FileRecord:
    """Write `data` as a ``fine-tune`` file and add its row (blocking)."""
    record = files.write([data], filename=filename, purpose=PURPOSE, owner_key_id=owner)
    try:
        return files.store.add_file(record)
    except Exception:
        files.path(record.id).unlink(missing_ok=True)
        raise


def _why_empty(counts: dict[str, Any]) -> str:
    if not counts["scanned"]:
        return "it kept no answers in the window"
    return (f"{counts['scanned']} answers in the window: {counts['rated_down']} rated down, {counts['not_selected']} "
            f"in no requested source or tier, {counts['skipped']} not usable as chat rows")
