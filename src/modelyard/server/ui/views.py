"""What the console's templates show, in words: sizes, prices, memory, and how to call an endpoint."""

from __future__ import annotations

from typing import Any

from ...catalog import format_size

#: The header that sends a request to one deployment, whatever the traffic split.
DEPLOYMENT_HEADER = "modelyard-deployment"


def human_bytes(size: int | None) -> str:
    """``253113024`` -> ``253 MB``; ``—`` when unknown."""
    return "—" if size is None else format_size(size)


def memory_text(mb: int | None) -> str:
    """``372`` -> ``≈ 372 MB``, ``4803`` -> ``≈ 4.8 GB``."""
    if mb is None:
        return "—"
    return f"≈ {mb} MB" if mb < 1000 else f"≈ {mb / 1000:.1f} GB"


def price_text(card: dict[str, Any]) -> str:
    """Hosted: ``$2.50 in / $10.00 out per 1M tokens``; local: ``$0.02 per instance-hour``."""
    price = card.get("price") or {}
    if card.get("format") == "hosted":
        inp, out = price.get("input_per_1m") or 0, price.get("output_per_1m") or 0
        if not (inp or out):
            return "—"
        if card.get("task") == "embedding" or not out:
            return f"${inp:.2f} per 1M tokens"
        return f"${inp:.2f} in / ${out:.2f} out per 1M tokens"
    hourly = price.get("per_instance_hour") or 0
    return f"${hourly:.2f} per instance-hour" if hourly else "—"


def context_text(tokens: int | None) -> str:
    """``32768`` -> ``32K``, ``131072`` -> ``128K``, ``16385`` -> ``16K``, ``1047576`` -> ``1M``, ``256`` -> ``256``."""
    if not tokens:
        return "—"
    if tokens >= 1_000_000:
        return f"{tokens / 1_000_000:.1f}".removesuffix(".0") + "M"
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens // 1024}K"
    return f"{round(tokens / 1000)}K" if tokens >= 1000 else str(tokens)


def source_text(card: dict[str, Any]) -> str:
    """Where the weights come from, in a few words."""
    source = card.get("source") or {}
    kind = source.get("type")
    if kind == "package":
        return f"Python package {source.get('package')}"
    if kind == "hub":
        file = f"/{source['file']}" if source.get("file") else ""
        return f"Hugging Face Hub {source.get('repo')}{file} @ {source.get('revision')}"
    if kind == "local":
        return f"local file {source.get('path')}"
    if kind == "hosted":
        return f"{source.get('provider')} API at {source.get('base_url')}"
    return "—"


def endpoint_task(desc: dict[str, Any], cards: dict[str, Any]) -> str:
    """``embedding`` when every deployment of the endpoint serves an embedding model, else ``chat``."""
    tasks = {cards[d["model"]].task for d in desc.get("deployments", []) if d.get("model") in cards}
    return "embedding" if tasks == {"embedding"} else "chat"


FILTERS = {
    "human_bytes": human_bytes,
    "memory_text": memory_text,
    "price_text": price_text,
    "context_text": context_text,
    "source_text": source_text,
}
