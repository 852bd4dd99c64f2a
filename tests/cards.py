"""Catalog cards the tests make: one helper for a hosted model, as a `ModelCard` or as catalog YAML."""

from __future__ import annotations

from typing import Any

import yaml

from modelyard.catalog.card import ModelCard


def hosted_model_card(card_id: str = "fake-chat", base_url: str = "http://upstream.invalid/v1", *,
                      task: str = "chat", price: tuple[float, float] = (0.0, 0.0), context_length: int = 8192,
                      source: dict[str, Any] | None = None, **fields: Any) -> ModelCard:
    """A hosted (OpenAI-compatible) model at ``base_url`` costing ``price`` USD per 1M input/output tokens;
    `source` adds to the card's source (``api_key_env``, ``model`` …), `fields` to the card."""
    return ModelCard.model_validate({
        "id": card_id, "family": "stub", "task": task, "format": "hosted", "license": "none",
        "context_length": context_length,
        "source": {"type": "hosted", "provider": "openai-compatible", "base_url": base_url, **(source or {})},
        "price": {"input_per_1m": price[0], "output_per_1m": price[1]}, **fields})


def hosted_card(card_id: str, base_url: str, **options: Any) -> str:
    """The same card as a catalog YAML list item, for a gateway's user catalog (`live_gateway.write_catalog`)."""
    card = hosted_model_card(card_id, base_url, **options).model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump([card], sort_keys=False)


def tier_cards(stub: Any, tiers: dict[str, tuple[float, float]]) -> str:
    """Catalog YAML with a hosted card `tier-{tier}` on each of the stub's tiers (`tests.openai_stub.StubServer.tiers`),
    priced ``{tier: (input_per_1m, output_per_1m)}``."""
    return "".join(hosted_card(f"tier-{tier}", stub.base_url(tier), price=price) for tier, price in tiers.items())
