"""Embeddings for semantic look-ups: all-MiniLM-L6-v2, in the gateway process.

Why in-process rather than a call to the ``embed`` endpoint's deployment
(both measured by ``bench/cache_gateway.py``): the two cost about the same
per sentence (9.7 ms p50 in-process on one thread; 8.8 ms p50 for a request
to the ``embed`` endpoint through the gateway, whose instance uses two
threads), but the endpoint may not
exist (``modelyard up --no-defaults``), may be busy with other traffic (its
instance serves one request at a time, so look-ups would queue behind batch
embedding jobs) or restarting — and a cache look-up should depend on nothing
but the gateway. The price is memory and start-up: importing torch and
loading the model take about 5-7 s and some 490 MB of the gateway's memory,
so it happens only when an endpoint uses ``mode: semantic``, in a background
thread.

Torch runs on **one** thread here: the gateway shares the machine's cores
with the instances, and with two OpenMP threads on a busy two-core machine
one short sentence took 500 ms instead of 10 ms (the threads spin waiting
for each other).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

EMBEDDING_CARD = "all-minilm-l6-v2"


class Embedder(Protocol):
    """Turns texts into unit vectors."""

    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit-length float32 row per text (blocking)."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the packaged weights."""

    dim = 384

    def __init__(self, path: str | None = None, *, threads: int = 1) -> None:
        self.path = path
        self.threads = threads
        self._model = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - the `local` extra is missing
                raise RuntimeError("semantic caching needs sentence-transformers: pip install 'modelyard[local]'") from exc
            torch.set_num_threads(self.threads)
            try:  # no "Loading weights" progress bar in a server's log or before `--json` output
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:  # pragma: no cover
                pass
            path = self.path or _packaged_path()
            log.info("loading the cache's embedding model from %s", path)
            self._model = SentenceTransformer(path, device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self.load()
        import torch

        with torch.inference_mode():
            vectors = self._model.encode(texts, batch_size=64, normalize_embeddings=True,  # type: ignore[union-attr]
                                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def _packaged_path() -> str:
    from ..catalog.registry import Catalog
    from ..catalog.sources import resolve_path
    from ..settings import Settings

    settings = Settings.from_env()
    card = Catalog.load(settings).get(EMBEDDING_CARD)
    return str(resolve_path(card, settings))


class AsyncEmbedder:
    """Runs an `Embedder` on one dedicated thread, so the event loop never waits on torch."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or MiniLMEmbedder()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-embed")
        self._loading: asyncio.Future | None = None

    def warm(self) -> None:
        """Start loading the model in the background (a no-op once started)."""
        if self._loading is None and hasattr(self.embedder, "load"):
            self._loading = asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.load)  # type: ignore[attr-defined]
            self._loading.add_done_callback(_log_failure)

    async def embed(self, text: str) -> np.ndarray:
        vectors = await asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.encode, [text])
        return vectors[0]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the cache's embedding model failed to load: %s", future.exception())
