"""The models router strategies use, loaded once per gateway: trained routers and the sentence embedder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelyardError
from ..settings import Settings
from .features import MiniLMEmbedder
from .learned import LearnedRouter, router_path


class Models:
    """Trained router models, loaded on first use and again when their file changes; and the embedder
    (one all-MiniLM-L6-v2 for every endpoint, loaded in-process on first use, on ``settings.embed_threads``
    torch threads)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._routers: dict[str, tuple[int, LearnedRouter]] = {}
        self._embedder: MiniLMEmbedder | None = None

    def path(self, endpoint: str) -> Path:
        return router_path(self.settings, endpoint)

    def embedder(self) -> MiniLMEmbedder:
        if self._embedder is None:
            self._embedder = MiniLMEmbedder(threads=self.settings.embed_threads, settings=self.settings)
        return self._embedder

    def router(self, endpoint: str) -> LearnedRouter:
        path = self.path(endpoint)
        try:
            # the description (.json) changes alone when a router is activated
            mtime = max(os.stat(path).st_mtime_ns, os.stat(path.with_suffix(".json")).st_mtime_ns)
        except FileNotFoundError:
            raise ModelyardError(f"endpoint '{endpoint}' routes with a learned model, but none is trained yet: run "
                                 f"`modelyard router train {endpoint} --data outcomes.csv`", status=503,
                                 code="router_not_trained") from None
        cached = self._routers.get(endpoint)
        if cached is None or cached[0] != mtime:
            self._routers[endpoint] = cached = (mtime, LearnedRouter.load(path, embedder=self.embedder()))
        return cached[1]

    def activate(self, endpoint: str, reason: str) -> None:
        """Mark the endpoint's saved router active (``--force``), recording why; it is reloaded on next use."""
        LearnedRouter.set_active(self.path(endpoint), True, reason)
        self._routers.pop(endpoint, None)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length sentence embeddings of `texts`."""
        return self.embedder()(texts)
