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

Torch runs on one thread by default (``MODELYARD_EMBED_THREADS``, see
`settings.Settings.embed_threads`): the gateway shares the machine's cores
with the instances, and with two OpenMP threads on a busy two-core machine
one short sentence took 500 ms instead of 10 ms (the threads spin waiting
for each other).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backends.sentence import Embedder
from ..routing.features import MiniLMEmbedder

log = logging.getLogger(__name__)


class AsyncEmbedder:
    """Runs an `Embedder` (default: the gateway's all-MiniLM-L6-v2, shared with the router) on one dedicated
    thread, so the event loop never waits on torch."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or MiniLMEmbedder(threads=1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-embed")
        self._loading: asyncio.Future | None = None

    def warm(self) -> None:
        """Start loading the model in the background (a no-op once started)."""
        if self._loading is None and hasattr(self.embedder, "load"):
            self._loading = asyncio.get_running_loop().run_in_executor(self._pool, self.embedder.load)  # type: ignore[attr-defined]
            self._loading.add_done_callback(_log_failure)

    async def embed(self, text: str) -> np.ndarray:
        vectors = await asyncio.get_running_loop().run_in_executor(self._pool, self.embedder, [text])
        return vectors[0]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the cache's embedding model failed to load: %s", future.exception())
