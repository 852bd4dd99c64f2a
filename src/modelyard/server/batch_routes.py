"""The OpenAI Files and Batch routes: thin, over `modelyard.batch`.

::

    POST   /v1/files                     multipart: file, purpose=batch      → File
    GET    /v1/files?purpose=&limit=&order=&after=                           → list of File
    GET    /v1/files/{id}                                                    → File
    GET    /v1/files/{id}/content                                            → the bytes
    DELETE /v1/files/{id}                                                    → {"id", "object": "file", "deleted"}
    POST   /v1/batches                   {"input_file_id", "endpoint", "completion_window", ...} → Batch
    GET    /v1/batches?limit=&after=                                         → list of Batch, newest first
    GET    /v1/batches/{id}                                                  → Batch
    POST   /v1/batches/{id}/cancel                                           → Batch (cancelling)

Any valid key may call them, as for the OpenAI routes: an endpoint's key
sees the files and batches it created (and its batches may only call its
endpoint), the admin key sees everything. An endpoint's key keeps files up to
its quota (MODELYARD_BATCH_KEY_QUOTA_BYTES/_FILES, 413 past it); the admin
key has none. These are ordinary FastAPI routes: `FastPath` only short-cuts
the live inference routes.

A value that reaches a column (an id, ``after``, ``purpose``) is checked for
what the column can hold first: an id no row can have is a 404, a filter
none can match a 400 — never a 500 from PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from ..batch import BatchCreate, BatchRunner, describe_file, describe_job, visible
from ..batch.files import UPLOAD_PURPOSES
from ..errors import ModelyardError, invalid, not_found
from ..store.batches import ID_WIDTH, WIDTHS, storable
from .http import api_key, int_param, json_response, parse_json, read_body
from .openapi import json_body, query

router = APIRouter(prefix="/v1")

#: a create-batch body is a few fields; anything bigger is not one
MAX_CREATE_BYTES = 64 * 1024


def _key(request: Request) -> Any:
    key = api_key(request)
    if not key:
        raise ModelyardError("You didn't provide an API key.", status=401, code="missing_api_key")
    info = request.app.state.gateway.keys.verify(key)
    if info is None:
        raise ModelyardError("Incorrect API key provided.", status=401, code="invalid_api_key")
    return info


def _batches(request: Request) -> BatchRunner:
    runner = getattr(request.app.state.gateway, "batches", None)
    if runner is None:
        raise ModelyardError("This gateway does not run batch jobs.", status=501, code="not_implemented")
    return runner


def _after(request: Request) -> str | None:
    """The ``after`` cursor: an id, or the 400 naming it."""
    after = request.query_params.get("after")
    if after is not None and not storable(after, ID_WIDTH):
        raise invalid(f"Invalid value for 'after': the id of a file or batch (at most {ID_WIDTH} characters, "
                      "no NUL).", param="after")
    return after


def _page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


# --- files ------------------------------------------------------------------------------


#: /v1/files' multipart form, as OpenAI documents it (the route streams it to disk by hand)
_UPLOAD_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the JSONL file (non-empty)"},
        "purpose": {"type": "string", "enum": sorted(UPLOAD_PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
    }}}}}}


@router.post("/files", openapi_extra=_UPLOAD_FORM)
async def upload_file(request: Request) -> Response:
    """Store an uploaded file (streamed to disk; 413 past MODELYARD_BATCH_MAX_FILE_BYTES or the key's quota)."""
    key = _key(request)
    files = _batches(request).files
    holding = None if key.is_admin or files.quota is None else await asyncio.to_thread(files.holding, key.id)
    upload = await files.receive(request.headers.get("content-type", ""), request.stream(),
                                 declared_length=request.headers.get("content-length"), holding=holding)
    try:
        purpose = upload.fields.get("purpose")
        if upload.path is None:
            raise invalid("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if purpose is None:
            raise invalid("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
        if purpose not in UPLOAD_PURPOSES:
            raise invalid(f"Invalid value for 'purpose': {purpose!r}; this gateway takes files for "
                          f"{', '.join(map(repr, UPLOAD_PURPOSES))}.", param="purpose")
        if upload.size == 0:
            raise invalid("The file is empty; a batch input or fine-tuning file has one JSON object per line.",
                          param="file", code="empty_file")
        expires = _expires_after(upload.fields)
        record = await asyncio.to_thread(files.accept, upload, purpose=purpose, owner_key_id=key.id,
                                         expires_after_s=expires, quota=holding is not None)
    finally:
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)  # gone already once accepted
    return json_response(describe_file(record))


def _expires_after(fields: dict[str, str]) -> int | None:
    seconds = fields.get("expires_after[seconds]")
    if seconds is None:
        return None
    if fields.get("expires_after[anchor]", "created_at") != "created_at":
        raise invalid("expires_after.anchor must be 'created_at'.", param="expires_after.anchor")
    if not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
        raise invalid("expires_after.seconds must be between 3600 (1 hour) and 2592000 (30 days).",
                      param="expires_after.seconds")
    return int(seconds)


async def _visible_file(request: Request, file_id: str) -> Any:
    key = _key(request)
    record = await asyncio.to_thread(_batches(request).files.get, file_id)
    if not visible(record, key):
        raise not_found(f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return record


@router.get("/files", openapi_extra={"parameters": [
    query("purpose", "only files with this purpose", type="string", enum=sorted(UPLOAD_PURPOSES)),
    query("limit", "how many (1-10000)", type="integer", minimum=1, maximum=10000),
    query("order", "by creation time", type="string", enum=["asc", "desc"]),
    query("after", "the id of the last file of the previous page", type="string")]})
async def list_files(request: Request) -> Response:
    key = _key(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid(f"Invalid value for 'order': {order!r}; use 'asc' or 'desc'.", param="order")
    limit = int_param(request, "limit", 10_000, 1, 10_000)
    purpose = request.query_params.get("purpose")
    if purpose is not None and not storable(purpose, WIDTHS["batch_files.purpose"]):
        raise invalid(f"Invalid value for 'purpose': a file's purpose, such as 'batch' or 'batch_output' (at most "
                      f"{WIDTHS['batch_files.purpose']} characters, no NUL).", param="purpose")
    store = _batches(request).store
    rows, more = await asyncio.to_thread(
        store.list_files, purpose=purpose, owner_key_id=None if key.is_admin else key.id, order=order, limit=limit,
        after=_after(request))
    return json_response(_page([describe_file(r) for r in rows], more))


@router.get("/files/{file_id}")
async def get_file(request: Request, file_id: str) -> Response:
    return json_response(describe_file(await _visible_file(request, file_id)))


@router.get("/files/{file_id}/content", openapi_extra={"responses": {"200": {
    "description": "the file's bytes", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                       "format": "binary"}}}}}})
async def file_content(request: Request, file_id: str) -> Response:
    record = await _visible_file(request, file_id)
    path = _batches(request).files.path(record.id)
    if not path.exists():
        raise not_found(f"The content of file {file_id} is gone.", param="file_id", code="file_not_found")
    return FileResponse(path, media_type="application/octet-stream", filename=record.filename)


@router.delete("/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Response:
    record = await _visible_file(request, file_id)
    runner = _batches(request)
    using = await asyncio.to_thread(runner.store.jobs_using, record.id)
    if using:
        raise ModelyardError(f"File {file_id} is the input of batch {using[0]}, which has not finished; cancel it "
                             "first.", status=409, param="file_id", code="file_in_use")
    await asyncio.to_thread(runner.files.delete, record.id)
    return json_response({"id": record.id, "object": "file", "deleted": True})


# --- batches ----------------------------------------------------------------------------


async def _describe(runner: BatchRunner, job: Any) -> dict[str, Any]:
    return describe_job(job, await asyncio.to_thread(runner.store.usage, job.id))


@router.post("/batches", openapi_extra=json_body(BatchCreate))
async def create_batch(request: Request) -> Response:
    """Create a batch job from an uploaded input file; it starts (``validating``) at once."""
    key = _key(request)
    runner = _batches(request)
    req = BatchCreate.parse(parse_json(await read_body(request, MAX_CREATE_BYTES)))
    job = await runner.create(req, key)
    return json_response(await _describe(runner, job))


@router.get("/batches", openapi_extra={"parameters": [
    query("limit", "how many (1-100)", type="integer", minimum=1, maximum=100),
    query("after", "the id of the last batch of the previous page", type="string")]})
async def list_batches(request: Request) -> Response:
    key = _key(request)
    runner = _batches(request)
    limit = int_param(request, "limit", 20, 1, 100)
    rows, more = await asyncio.to_thread(runner.store.list_jobs, owner_key_id=None if key.is_admin else key.id,
                                         limit=limit, after=_after(request))
    return json_response(_page([await _describe(runner, job) for job in rows], more))


@router.get("/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    runner = _batches(request)
    return json_response(await _describe(runner, await runner.get(batch_id, _key(request))))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    """Stop a batch: finished lines are kept; ``cancelling`` until they are committed, then ``cancelled``."""
    runner = _batches(request)
    return json_response(await _describe(runner, await runner.cancel(batch_id, _key(request))))
