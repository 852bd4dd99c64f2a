"""The index API (``/api/indexes``): retrieval indexes for flows, what ``modelyard index`` calls.

=========  ======================================  ==============================================
POST       /api/indexes                            create: ``{name, embed, chunk_size, overlap}``
GET        /api/indexes                            list, with settings and counts
GET        /api/indexes/{name}                     one: documents, chunks, disk and memory bytes
DELETE     /api/indexes/{name}                     delete it and its files
GET        /api/indexes/{name}/documents           its documents
POST       /api/indexes/{name}/documents           add: ``{documents: [{path, text | content …}]}``
DELETE     /api/indexes/{name}/documents?path=P    remove one document
POST       /api/indexes/{name}/query               ``{query | vector, top_k, filter}`` → hits
=========  ======================================  ==============================================

Every route needs the admin key. A document comes as its text (``text``,
parsed already, e.g. by the CLI, with optional ``sections`` and
``metadata``) or as its file (``content``, base64, read as the type of
``filename``, default ``path``): the server cuts it into chunks and embeds
them. An unreadable file is skipped and listed in the answer; a document
already stored with the same ``sha256`` is left alone, so sending the same
batch again after a failure continues where it stopped.

Embeddings go through the gateway: ``gateway.index_embedder(endpoint)``
returns ``async (texts: list[str]) -> list[list[float]]`` (one vector per
text, in order) that sends an embeddings request for the index's endpoint
through the gateway's own request path, so its usage is recorded like any
other request's; it raises `ModelyardError` when the endpoint cannot answer.
The indexes themselves are ``gateway.indexes`` (`IndexRegistry`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.responses import Response

from ..errors import ModelyardError, invalid, not_found
from ..index import Document, IndexSettings, UnreadableDocument, build, check_name, parse, retrieve
from ..index.build import BuildResult, Embedder, Skipped
from ..index.loaders import sha256_of
from ..index.store import RESERVED, DocumentIndex
from .admin import read_model, require_admin
from .http import json_response
from .openapi import json_body, query

router = APIRouter(prefix="/api/indexes")

#: most documents one request may add (the body limit, MODELYARD_MAX_BODY_BYTES, applies too)
MAX_DOCUMENTS = 1000
MAX_TOP_K = 100

MetaValue = str | int | float | bool | None | list[str | int | float | bool | None]


class IndexCreate(IndexSettings):
    """A new index: its name and `IndexSettings`."""

    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name)


class SectionIn(BaseModel):
    """Where a section starts in the text, and the metadata its chunks get (``section``, ``page`` …)."""

    model_config = ConfigDict(extra="allow")
    offset: int = Field(ge=0)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: how the index names the document (a second add of the same path replaces it when its sha256 differs)
    path: str = Field(min_length=1, max_length=1024)
    #: the document's text, parsed already
    text: str | None = None
    #: or its file's bytes, base64, parsed here as the type of `filename` (default: `path`)
    content: str | None = None
    filename: str | None = Field(default=None, max_length=1024)
    #: of the file's bytes (default: of `content`, or of the text's UTF-8)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    metadata: dict[str, MetaValue] = Field(default_factory=dict)
    sections: list[SectionIn] = Field(default_factory=list, max_length=100_000)

    @field_validator("metadata")
    @classmethod
    def _not_reserved(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(metadata) & set(RESERVED))
        if taken:
            raise ValueError(f"{', '.join(taken)} cannot be set: the index sets {', '.join(RESERVED)} itself")
        return metadata

    @model_validator(mode="after")
    def _text_or_content(self) -> "DocumentIn":
        if (self.text is None) == (self.content is None):
            raise ValueError("give either text or content (base64), not both or neither")
        return self


class DocumentsAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class IndexQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the text to look for (embedded with the index's endpoint) …
    query: str | None = Field(default=None, min_length=1, max_length=100_000)
    #: … or a vector from that endpoint
    vector: list[float] | None = Field(default=None, min_length=1, max_length=65_536)
    top_k: int = Field(default=3, ge=1, le=MAX_TOP_K)
    #: exact metadata matches: ``{"section": "Keys"}``, ``{"format": ["markdown", "html"]}``
    filter: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _query_or_vector(self) -> "IndexQuery":
        if (self.query is None) == (self.vector is None):
            raise ValueError("give either query (a text) or vector, not both or neither")
        return self


async def _index(gateway: Any, name: str) -> DocumentIndex:
    return await asyncio.to_thread(gateway.indexes.get, name)


def _embedder(gateway: Any, index: DocumentIndex) -> Embedder:
    return gateway.index_embedder(index.settings.embed)


@router.post("", status_code=201, openapi_extra=json_body(IndexCreate))
async def create_index(request: Request, gateway=Depends(require_admin)) -> Response:
    """Create an empty index; the embedding endpoint must exist (its vectors' size is learnt from the first
    document)."""
    body = await read_model(request, IndexCreate)
    try:
        gateway.endpoints.get(body.embed)
    except ModelyardError as exc:
        raise not_found(f"There is no endpoint '{body.embed}' to embed with: {exc.message}", param="embed",
                        code="model_not_found") from None
    settings = IndexSettings(**body.model_dump(exclude={"name"}))
    index = await asyncio.to_thread(gateway.indexes.create, body.name, settings)
    return json_response(await asyncio.to_thread(index.stats), 201)


@router.get("")
async def list_indexes(request: Request, gateway=Depends(require_admin)) -> Response:
    """Every index with its settings and counts."""
    return json_response({"object": "list", "data": await asyncio.to_thread(gateway.indexes.summaries)})


@router.get("/{name}")
async def get_index(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """An index's settings, documents and chunks, disk and memory bytes (opening it if it is not open yet)."""
    index = await _index(gateway, name)
    return json_response(await asyncio.to_thread(index.stats))


@router.delete("/{name}")
async def delete_index(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """Delete an index and its files."""
    await asyncio.to_thread(gateway.indexes.delete, name)
    return json_response({"name": name, "object": "modelyard.index", "deleted": True})


@router.get("/{name}/documents")
async def list_documents(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """The index's documents, by path, with their sha256 (what a client compares to skip unchanged files)."""
    index = await _index(gateway, name)
    return json_response({"object": "list", "data": [d.as_dict() for d in index.documents()]})


@router.post("/{name}/documents", openapi_extra=json_body(DocumentsAdd))
async def add_documents(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """Add documents (or new versions of them): chunked and embedded here, each stored whole. Unreadable ones
    are skipped and listed; ones stored already with the same sha256 are left alone."""
    index = await _index(gateway, name)
    body = await read_model(request, DocumentsAdd)
    result = BuildResult()
    documents = []
    for n, item in enumerate(body.documents):
        document = await _document(item, n, result)
        if document is not None:
            documents.append(document)

    built = await build(index, documents, _embedder(gateway, index))
    built.skipped[:0] = result.skipped
    return json_response({**built.as_dict(), "index": await asyncio.to_thread(index.stats)})


async def _document(item: DocumentIn, n: int, result: BuildResult) -> Document | None:
    sections = [(s.offset, dict(s.model_extra or {})) for s in item.sections]
    if item.text is not None:
        return Document(item.path, item.text, item.sha256 or sha256_of(item.text.encode()), dict(item.metadata),
                        sections)
    try:
        data = base64.b64decode(item.content or "", validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"documents[{n}].content is not base64.", param=f"documents.{n}.content") from None
    try:
        document = await asyncio.to_thread(parse, data, item.path, filename=item.filename)
    except UnreadableDocument as exc:
        result.skipped.append(Skipped(exc.path, exc.reason))
        return None
    document.metadata.update(item.metadata)
    document.sections = sections or document.sections
    if item.sha256:
        document.sha256 = item.sha256
    return document


@router.delete("/{name}/documents", openapi_extra={"parameters": [
    {**query("path", "the document's path in the index"), "required": True}]})
async def remove_document(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """Remove one document and its chunks."""
    path = request.query_params.get("path")
    if not path:
        raise invalid("Missing required parameter: 'path' (the document's path in the index).", param="path",
                      code="missing_required_parameter")
    index = await _index(gateway, name)
    removed = await asyncio.to_thread(index.remove, path)
    if removed is None:
        raise not_found(f"Index '{name}' has no document '{path[:300]}'; GET /api/indexes/{name}/documents lists "
                        "them.", param="path", code="document_not_found")
    return json_response({"path": removed.path, "chunks": removed.chunks, "deleted": True})


@router.post("/{name}/query", openapi_extra=json_body(IndexQuery))
async def query_index(name: str, request: Request, gateway=Depends(require_admin)) -> Response:
    """The ``top_k`` chunks nearest to ``query`` (embedded with the index's endpoint) or ``vector``, best first,
    with their cosine similarity, document and chunk metadata; ``filter`` keeps exact metadata matches only."""
    index = await _index(gateway, name)
    body = await read_model(request, IndexQuery)
    query = body.query if body.query is not None else body.vector
    hits = await retrieve(index, _embedder(gateway, index), query or [], body.top_k, body.filter)
    return json_response({"object": "list", "index": name, "data": [h.as_dict() for h in hits]})
