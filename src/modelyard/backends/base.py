"""The Backend protocol: the one seam every model runner implements.

A backend is streaming-first. `generate()` yields OpenAI chunk dicts
(``chat.completion.chunk`` for chat, ``text_completion`` for completions),
the last of which carries ``usage``. A non-streaming response is those chunks
folded together by `modelyard.wire.gather` — one code path, two wire formats.
A backend that already holds a whole response (a non-streaming upstream API)
may yield that single final object instead; `gather` passes it through.

`embed()` returns the whole ``list`` object: embeddings do not stream.

Backends raise `ModelyardError` for anything the client should see (a prompt
longer than the context is a 400 that names the limit).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol, runtime_checkable

from ..wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

Chunk = dict[str, Any]


@runtime_checkable
class Backend(Protocol):
    #: how many requests one instance of this backend serves at once
    max_concurrency: int

    async def start(self) -> None:
        """Load the model; return when ready to serve."""

    async def close(self) -> None:
        """Release the model and any connections."""

    def generate(self, kind: str, request: ChatCompletionRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        """Yield the chunks of one chat (`kind='chat'`) or completion (`kind='completion'`) request."""

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """Return the OpenAI embeddings ``list`` body."""


def load_backend(card: Any, options: dict[str, Any] | None = None) -> Backend:
    """Build the backend for a catalog card. Heavy libraries are imported here, lazily.

    A local model's ``options`` carry ``path``, where its weights are on this
    machine: whoever starts the backend resolves it (`catalog.resolve_path`),
    so backends know nothing of the catalog or the settings.
    """
    options = options or {}
    if card.format == "gguf":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(card, **options)
    if card.task == "embedding":
        from .sentence import SentenceBackend

        return SentenceBackend(card, **options)
    if card.format == "hosted":
        from .openai_compat import OpenAICompatBackend

        return OpenAICompatBackend.for_card(card, **options)
    raise ValueError(f"no backend runs format={card.format!r} task={card.task!r}")
