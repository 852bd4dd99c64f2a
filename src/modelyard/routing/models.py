"""The models router strategies use, loaded once per gateway: trained routers and the sentence embedder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ModelyardError


class Models:
    """Trained router models, loaded on first use and again when their file changes; and the embedder
    (one all-MiniLM-L6-v2 for every endpoint, loaded in-process on first use)."""

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings
        self._routers: dict[str, tuple[float, Any]] = {}
        self._embedder: Any = None

    def path(self, endpoint: str) -> Path:
        from .learned import router_path

        return router_path(self.settings, endpoint)

    def embedder(self) -> Any:
        if self._embedder is None:
            from .features import MiniLMEmbedder, server_threads

            self._embedder = MiniLMEmbedder(threads=server_threads())
        return self._embedder

    def router(self, endpoint: str) -> Any:
        from .learned import LearnedRouter

        path = self.path(endpoint)
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            raise ModelyardError(f"endpoint '{endpoint}' routes with a learned model, but none is trained yet: run "
                                 f"`modelyard router train {endpoint} --data outcomes.csv`", status=503,
                                 code="router_not_trained") from None
        cached = self._routers.get(endpoint)
        if cached is None or cached[0] != mtime:
            self._routers[endpoint] = cached = (mtime, LearnedRouter.load(path, embedder=self.embedder()))
        return cached[1]

    def embed(self, texts: list[str]) -> Any:
        """Unit-length sentence embeddings of `texts`."""
        return self.embedder()(texts)
