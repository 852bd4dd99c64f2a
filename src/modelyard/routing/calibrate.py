"""``modelyard router calibrate ENDPOINT --strong-share 0.3``: pick the learned router's threshold.

The endpoint's trained model scores the prompts of its recent traffic (the
routed answers it logged); the threshold is the score above which the wanted
share of those prompts lies, so that — as long as traffic looks like it did —
about that share goes to the strong tier.

Calibrating is also where the router meets real traffic, so it is checked
again against the length rule before the threshold is set:

* a router that was not activated when trained (it did not beat the rule on
  held-out data: its saved ``gate``) is refused;
* with enough rated answers from the endpoint (feedback: data from outside
  the training set), the router and the rule are compared on them
  (`gate.compare`); a router below the rule is refused;
* the share of recent prompts out of the router's training distribution (the
  ones the fallback routes) is reported.

Refusals are 409 ``router_not_activated``; ``force`` sets the threshold
anyway and activates the router.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

import numpy as np

from ..errors import ModelyardError, invalid
from .data import OutcomeData
from .gate import TOLERANCE, Comparison, compare

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


def feedback_check(model: Any, rows: list[dict[str, Any]]) -> Comparison | None:
    """The router against the length rule on the endpoint's rated answers, when there are enough to tell."""
    if len(rows) < MIN_PROMPTS:
        return None
    data = OutcomeData([r["prompt"] for r in rows], np.array([float(r["weak_correct"]) for r in rows]),
                       np.array([float(r["strong_correct"]) for r in rows]), ["feedback"] * len(rows),
                       "weak_correct", "strong_correct", source="the endpoint's rated answers")
    if not data.strong.mean() > data.weak.mean() or model.uses_answers:
        return None
    return compare(data.source, model, data)


async def calibrate(gateway: Any, endpoint_name: str, strong_share: float, *, limit: int = 2000,
                    force: bool = False) -> dict[str, Any]:
    """Set the endpoint's learned threshold for `strong_share` of its recent prompts; returns what was done.

    Refuses (409 ``router_not_activated``) a router that was not activated or
    that the endpoint's rated answers show below the length rule, unless
    ``force``, which also activates it.
    """
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
    models = gateway.router.models
    model = models.router(endpoint_name)
    assessment = await asyncio.to_thread(model.assess, prompts)
    rated = await asyncio.to_thread(gateway.router.responses.store.outcomes, endpoint_name)
    check = await asyncio.to_thread(feedback_check, model, rated)
    problem = None
    if not model.active:
        reason = (model.gate or {}).get("reason") or "it did not beat the length rule when trained"
        problem = f"the learned router of endpoint '{endpoint_name}' is not activated: {reason}"
    elif check is not None and check.learned_apgr < check.length_apgr - TOLERANCE:
        problem = (f"on the endpoint's {check.rows} rated answers the learned router's APGR {check.learned_apgr:.3f} "
                   f"is below the length rule's {check.length_apgr:.3f}")
    if problem is not None and not force:
        raise ModelyardError(f"{problem}; the endpoint keeps routing by its fallback. Retrain on data like the "
                             "traffic, or pass force to use the router anyway", status=409, param="force",
                             code="router_not_activated")
    activated = False
    if problem is not None and not model.active:
        await asyncio.to_thread(models.activate, endpoint_name, f"forced at calibration: {problem}")
        activated = True
    scores = np.asarray(assessment.scores, dtype=float)
    threshold = threshold_for_share(scores, strong_share)
    router = {**spec.router.model_dump(), "threshold": threshold}
    await gateway.endpoints.update_endpoint(endpoint_name, router=router)
    return {"endpoint": endpoint_name, "threshold": threshold, "strong_share": float(np.mean(scores >= threshold)),
            "target_strong_share": strong_share, "prompts": len(prompts), "previous_threshold": spec.router.threshold,
            "ood_share": float(np.mean(assessment.outside)), "ood_fallback": spec.router.ood_fallback,
            "active": model.active or activated, "forced": problem is not None, "gate": model.gate,
            "feedback_check": asdict(check) if check is not None else None}
