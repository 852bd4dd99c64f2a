"""``modelyard router calibrate ENDPOINT --strong-share 0.3``: pick the learned router's threshold.

The endpoint's trained model scores the prompts of its recent traffic (the
routed answers it logged); the threshold is the score above which the wanted
share of those prompts lies, so that — as long as traffic looks like it did —
about that share goes to the strong tier.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ..errors import ModelyardError, invalid

#: fewer recent prompts than this give a threshold too noisy to trust
MIN_PROMPTS = 20


def threshold_for_share(scores: np.ndarray, strong_share: float) -> float:
    """The threshold at which ``strong_share`` of `scores` are at or above it."""
    if not 0 <= strong_share <= 1:
        raise invalid(f"strong_share must be between 0 and 1, not {strong_share}", param="strong_share")
    if strong_share == 0:
        return 1.0
    ordered = np.sort(np.asarray(scores, dtype=float))[::-1]
    k = max(1, int(round(strong_share * len(ordered))))
    return float(min(max(ordered[k - 1], 0.0), 1.0))


async def calibrate(gateway: Any, endpoint_name: str, strong_share: float, *, limit: int = 2000) -> dict[str, Any]:
    """Set the endpoint's learned threshold for `strong_share` of its recent prompts; returns what was done."""
    if not 0 <= strong_share <= 1:
        raise invalid(f"strong_share must be between 0 and 1, not {strong_share}", param="strong_share")
    endpoint = gateway.endpoints.get(endpoint_name)
    spec = endpoint.spec
    if spec.policy != "router" or spec.router is None or spec.router.strategy != "learned":
        raise invalid(f"endpoint '{endpoint_name}' does not route with a learned model (strategy: learned)",
                      param="endpoint", code="not_learned")
    prompts = await asyncio.to_thread(gateway.router.responses.store.recent_prompts, endpoint_name, limit)
    if len(prompts) < MIN_PROMPTS:
        raise ModelyardError(f"endpoint '{endpoint_name}' has {len(prompts)} recent routed prompts; calibrating needs "
                             f"at least {MIN_PROMPTS}", status=409, param="endpoint", code="too_little_traffic")
    model = gateway.router.models.router(endpoint_name)
    scores = np.asarray(await asyncio.to_thread(model.score, prompts), dtype=float)
    threshold = threshold_for_share(scores, strong_share)
    router = {**spec.router.model_dump(), "threshold": threshold}
    await gateway.endpoints.update_endpoint(endpoint_name, router=router)
    return {"endpoint": endpoint_name, "threshold": threshold, "strong_share": float(np.mean(scores >= threshold)),
            "target_strong_share": strong_share, "prompts": len(prompts), "previous_threshold": spec.router.threshold}
