"""One query of an index, as the API's query route and a flow's ``retrieve`` node run it.

A text query is embedded with the index's own endpoint (through the embedder
the caller passes, as for a build); a vector is taken as it is. The search
runs on a thread, so the event loop never waits on it. Every failure is a
`ModelyardError` that names the field: ``vector`` of the wrong size,
``filter`` malformed, or the embedding endpoint down (its status, or 502).
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import numpy as np

from ..errors import ModelyardError, invalid
from .build import Embedder
from .store import DocumentIndex, Hit


async def retrieve(index: DocumentIndex, embed: Embedder, query: str | Sequence[float], top_k: int = 3,
                   filter: dict[str, Any] | None = None) -> list[Hit]:
    """The `top_k` chunks of `index` nearest to `query` (a text, or a vector of the index's size), best first,
    among those matching `filter`."""
    dims = index.settings.dimensions
    if isinstance(query, str):
        vector = await embed_query(index, embed, query)
    else:
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if dims is not None and vector.shape[0] != dims:
            raise invalid(f"Invalid value for 'vector': {vector.shape[0]} numbers, but index '{index.name}' holds "
                          f"vectors of {dims}.", param="vector")
        if not np.isfinite(vector).all():
            raise invalid("Invalid value for 'vector': it holds NaN or infinity.", param="vector")
    try:
        return await asyncio.to_thread(index.query, vector, top_k, filter)
    except ValueError as exc:
        raise invalid(f"Invalid value for 'filter': {exc}.", param="filter") from None


async def embed_query(index: DocumentIndex, embed: Embedder, text: str) -> np.ndarray:
    """`text`'s vector from the index's endpoint."""
    endpoint = index.settings.embed
    try:
        vectors = await embed([text])
    except ModelyardError:
        raise
    except Exception as exc:  # the embedder is the caller's; whatever it raises, the client gets an answer
        raise ModelyardError(f"Embedding through endpoint '{endpoint}' failed: {type(exc).__name__}: {exc}",
                             status=502, code="embedding_failed") from None
    try:
        vector = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        vector = np.zeros((0, 0), dtype=np.float32)
    if vector.ndim != 2 or vector.shape[0] != 1 or vector.shape[1] == 0 or not np.isfinite(vector).all():
        raise ModelyardError(f"Embedding through endpoint '{endpoint}' failed: it did not answer one vector for "
                             "one text.", status=502, code="embedding_failed")
    return vector[0]
