"""Sentence embeddings on the CPU: the one embedder, and the backend that serves it.

`SentenceEmbedder` runs a sentence-transformers model in this process. Every
part that embeds uses it: the ``embed`` backend in an instance, and, inside
the gateway, the response cache and the router (through
`routing.features.MiniLMEmbedder`, which finds the packaged
all-MiniLM-L6-v2). A model loads once per process and path, whoever asks
first, so a gateway whose cache and router both embed holds one copy.

`SentenceBackend` batches inputs in a worker thread so the instance keeps
answering health checks while it works. Token ids as input are decoded back
to text with the model's own tokenizer, as OpenAI accepts both.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from typing import Any, AsyncIterator, Protocol

import numpy as np

from ..errors import invalid
from ..extras import require
from ..wire import EmbeddingRequest

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text. ``name`` identifies the model."""

    name: str

    def __call__(self, texts: list[str]) -> np.ndarray: ...


class SentenceEmbedder:
    """A sentence-transformers model in this process (see the module docstring).

    ``threads`` sets torch's threads for the process when the model loads
    (None leaves torch's default). Calls are serialised: one torch model on a
    small machine gains nothing from concurrent calls.
    """

    _models: dict[str, Any] = {}
    _lock = threading.Lock()

    def __init__(self, path: str | None = None, *, name: str = "", batch_size: int = 64,
                 threads: int | None = None) -> None:
        self.path = path
        self.name = name or path or "sentence-embedder"
        self.batch_size = batch_size
        self.threads = threads

    def weights_path(self) -> str:
        """Where the model's files are; a subclass may find them when first needed."""
        if not self.path:
            raise ValueError(f"embedder '{self.name}' needs the path of its weights")
        return self.path

    @property
    def model(self) -> Any:
        key = self.path or self.name
        model = self._models.get(key)
        if model is None:
            with self._lock:
                model = self._models.get(key)
                if model is None:
                    model = self._models[key] = self._load()
        return model

    def load(self) -> None:
        """Load the model now (it otherwise loads on the first call)."""
        self.model  # noqa: B018 - loading is the point

    def _load(self) -> Any:
        SentenceTransformer = require("sentence_transformers", "local", "sentence embeddings").SentenceTransformer

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        try:  # no "Loading weights" progress bar in a server's log or before `--json` output
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
        path = self.weights_path()
        t0 = time.perf_counter()
        model = SentenceTransformer(path, device="cpu")
        log.info("loaded %s from %s in %.1f s", self.name, path, time.perf_counter() - t0)
        return model

    def __call__(self, texts: list[str]) -> np.ndarray:
        model = self.model
        texts = list(texts)
        with self._lock:
            if len(texts) <= 4:  # the per-request path: skip encode()'s batching machinery
                fast = _forward(model, texts)
                if fast is not None:
                    return fast
            vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads of `texts` (each cut at its maximum sequence length), as usage counts them."""
        model = self.model
        limit = model.max_seq_length
        return sum(min(len(ids), limit) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"])


def _forward(model: Any, texts: list[str]) -> np.ndarray | None:
    """Tokenise, run the transformer, mean-pool, normalise: what encode() does for this model, minus overhead.

    Returns None when the model is not a plain transformer + mean pooling
    (then encode() runs instead).
    """
    import torch

    try:
        transformer, pooling = model[0], model[1]
        mode = getattr(pooling, "pooling_mode", None)
        mean = mode == "mean" if mode is not None else getattr(pooling, "pooling_mode_mean_tokens", False)
        if not mean or len(model) > 3 or (len(model) == 3 and type(model[2]).__name__ != "Normalize"):
            return None
        auto = transformer.auto_model
        tokenizer = transformer.tokenizer
    except (AttributeError, IndexError, TypeError):
        return None
    with torch.inference_mode():
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=model.max_seq_length)
        hidden = auto(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled.float().numpy()


class SentenceBackend:
    """Embeds text with a sentence-transformers model. Options: ``path``, ``batch_size``."""

    max_concurrency = 1

    def __init__(self, card: Any, *, path: str | None = None, batch_size: int = 32) -> None:
        self.card = card
        self.embedder = SentenceEmbedder(path or _no_path(card), name=card.id, batch_size=batch_size)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self.embedder.load)

    async def close(self) -> None:
        pass

    async def generate(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        raise invalid(f"model {self.card.id!r} is an embedding model; use /v1/embeddings", param="model")
        yield {}  # pragma: no cover - makes this an async generator

    def _texts(self, request: EmbeddingRequest) -> list[str]:
        data = request.input
        tok = self.embedder.model.tokenizer
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
        return self.embedder(texts), self.embedder.count_tokens(texts)


def _no_path(card: Any) -> str:
    raise ValueError(f"backend for '{card.id}' needs the path of its weights (options.path)")
