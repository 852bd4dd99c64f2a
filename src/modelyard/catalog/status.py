"""Whether a card can run on this machine now, and what one instance of it needs."""

from __future__ import annotations

from typing import Any

from .card import HostedSource, HubSource, LocalSource, ModelCard, PackageSource
from .sources import is_available


#: Memory a process needs besides the weights, by format, in MB: llama.cpp's runtime and a
#: small KV cache; Python, torch and sentence-transformers (measured RSS of the built-in models).
RUNTIME_OVERHEAD_MB = {"gguf": 120, "transformers": 450}


def memory_estimate_mb(card: ModelCard) -> int | None:
    """Roughly how much memory one local instance needs, in MB; None for hosted models or an unknown size.

    The weights' size (GGUF files are memory-mapped, so instances of one model
    share those pages) plus a fixed runtime overhead per format. An estimate
    for choosing a model, not a limit: long contexts need more KV cache.
    """
    if card.is_hosted or card.size_bytes is None:
        return None
    return int(round(card.size_bytes / 1_000_000 + RUNTIME_OVERHEAD_MB.get(card.format, 200)))


def availability(card: ModelCard, settings: Any) -> tuple[bool, str]:
    """(usable now, a short word on why not: ``ready``, ``not pulled``, ``not installed``, ``no OPENAI_API_KEY``,
    ``missing``). The console, the management API and the CLI all say it this way."""
    if is_available(card, settings):
        return True, "ready"
    source = card.source
    if isinstance(source, HubSource):
        return False, "not pulled"
    if isinstance(source, PackageSource):
        return False, "not installed"
    if isinstance(source, HostedSource):
        return False, f"no {source.api_key_env}"
    if isinstance(source, LocalSource):
        return False, "missing"
    return False, "unavailable"  # pragma: no cover
