"""What a request cost, from its model's catalog price.

Hosted models cost their list price per token. A local model costs its
instance-hour estimate for the seconds the request held an instance — so a
local answer is cheap but not free, and the router can compare the two.
"""

from __future__ import annotations

from ..catalog.card import ModelCard


def request_cost(card: ModelCard, prompt_tokens: int, completion_tokens: int, busy_s: float) -> float:
    price = card.price
    if card.is_hosted:
        return price.token_cost(prompt_tokens, completion_tokens)
    return price.per_instance_hour * busy_s / 3600 + price.token_cost(prompt_tokens, completion_tokens)
