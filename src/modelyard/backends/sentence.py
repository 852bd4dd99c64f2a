"""sentence-transformers backend: text embeddings on the CPU.

Batches of inputs are encoded in a worker thread so the instance keeps
answering health checks while it works. Token ids as input are decoded back
to text with the model's own tokenizer, as OpenAI accepts both.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, AsyncIterator

import numpy as np

from ..errors import invalid
from ..wire import EmbeddingRequest

log = logging.getLogger(__name__)


class SentenceBackend:
    """Embeds text with a sentence-transformers model. Options: ``path``, ``batch_size``."""

    max_concurrency = 1

    def __init__(self, card: Any, *, path: str | None = None, batch_size: int = 32) -> None:
        self.card = card
        self.path = path
        self.batch_size = batch_size
        self.model: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from sentence_transformers import SentenceTransformer

        path = self.path or _no_path(self.card)
        log.info("loading %s from %s", self.card.id, path)
        self.model = SentenceTransformer(path, device="cpu")

    async def close(self) -> None:
        self.model = None

    async def generate(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        raise invalid(f"model {self.card.id!r} is an embedding model; use /v1/embeddings", param="model")
        yield {}  # pragma: no cover - makes this an async generator

    def _texts(self, request: EmbeddingRequest) -> list[str]:
        data = request.input
        tok = self.model.tokenizer
        if isinstance(data, str):
            return [data]
        if data and isinstance(data[0], int):
            return [tok.decode(data)]
        if data and isinstance(data[0], list):
            return [tok.decode(ids) for ids in data]
        if any(not s for s in data):
            raise invalid("input strings must not be empty", param="input")
        return list(data)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        if request.dimensions is not None and request.dimensions != self.card.embedding_dimensions:
            raise invalid(f"model {self.card.id!r} only makes {self.card.embedding_dimensions}-dimensional embeddings",
                          param="dimensions", code="unsupported_value")
        texts = self._texts(request)
        async with self._lock:
            vectors, n_tokens = await asyncio.to_thread(self._encode, texts)
        data = []
        for i, vec in enumerate(vectors):
            if request.encoding_format == "base64":
                value: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
            else:
                value = vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": self.card.id,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        limit = self.model.max_seq_length
        n_tokens = sum(min(len(ids), limit) for ids in self.model.tokenizer(texts, add_special_tokens=True)["input_ids"])
        return vectors, n_tokens


def _no_path(card: Any) -> str:
    raise ValueError(f"backend for '{card.id}' needs the path of its weights (options.path)")
