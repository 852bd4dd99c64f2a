"""Feedback: ``POST /v1/feedback {response_id, rating: -1|1, comment?}``.

A rating is kept with the tier that answered (ratings per tier are in the
metrics and the router report). A negative rating of an answer that a
cheaper tier gave asks the next tier in the background; its answer replaces
the first one at ``GET /v1/responses/{id}`` (status ``improving``, then
``improved``). Every rated answer is a training row for the learned router
(``modelyard router train ENDPOINT --from-feedback``).

Escalation spends like any other call and so obeys the endpoint's and the
key's budgets: once a budget is spent, a paid next tier is not asked; the
rating is kept and the answer says why nothing was escalated
(``escalation_refused``, the same message as the 429 a request would get).

An answer the response cache served (or stored) is rated too: a -1 deletes
its cache entry, so it is not served again, and a -1 of a *semantic* hit
raises the endpoint's similarity threshold a step (see
`modelyard.cache.service.ResponseCache.rated_down`); the answer says so
(``cache``).

A key may read and rate only the answers it was given (an admin key, any);
any other id is answered 404, as if it did not exist, so ids of other
endpoints or other keys cannot be probed. An answer whose request was too
large to keep (`routing.responses.MAX_KEPT_REQUEST_BYTES`) is rated but not
escalated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..cache.service import ResponseCache
from ..errors import ModelyardError
from ..routing.responses import ResponseLog, kept_request
from ..serving.endpoints import Endpoints
from ..store.responses import ResponseStore
from ..telemetry import budget, metering
from ..telemetry.metering import Deployment, MeteringError, step_record
from ..telemetry.metrics import GatewayMetrics
from ..wire import KINDS, answer_text
from .router import Router

log = logging.getLogger(__name__)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=64)
    rating: Literal[-1, 1]
    comment: str | None = Field(default=None, max_length=4000)


def not_found(response_id: str) -> ModelyardError:
    return ModelyardError(f"No response with id '{response_id}' for this key.", status=404, param="response_id",
                          code="response_not_found")


class FeedbackService:
    """Takes ratings of routed answers and escalates a down-rated one to the next tier (see the module docstring)."""

    def __init__(self, log_: ResponseLog, store: ResponseStore, endpoints: Endpoints, router: Router,
                 metrics: GatewayMetrics | None = None, budgets: budget.BudgetTracker | None = None,
                 cache: ResponseCache | None = None) -> None:
        self.responses = log_
        self.store = store
        self.endpoints = endpoints
        self.router = router
        self.metrics = metrics
        self.budgets = budgets
        self.cache = cache

    async def response(self, response_id: str, key: Any) -> dict[str, Any]:
        row = await self.responses.get(response_id)
        if row is None or not (key.is_admin or (row["key_id"] == key.id and key.allows(row["endpoint"]))):
            raise not_found(response_id)
        return row

    async def submit(self, fb: FeedbackRequest, key: Any) -> dict[str, Any]:
        cached = self.cache.served(fb.response_id) if self.cache is not None else None
        if cached is not None and cached.result != "stored":
            return await self._rate_cached(fb, key, cached)
        try:
            row = await self.response(fb.response_id, key)
        except ModelyardError:
            if cached is None:
                raise
            return await self._rate_cached(fb, key, cached)  # an answer the cache stored, of an endpoint without a router
        await self.responses.flush()  # the rated answer is in the database before its rating
        rated_tier = row["latest_tier"] or row["tier"]
        saved = await asyncio.to_thread(self.store.add_feedback, response_id=row["id"], endpoint=row["endpoint"],
                                        tier=rated_tier, rating=fb.rating, comment=fb.comment,
                                        key_id=getattr(key, "id", None))
        if self.metrics is not None:
            self.metrics.feedback(row["endpoint"], rated_tier, fb.rating)
        escalate_to = self._next_tier(row) if fb.rating < 0 and row["status"] not in ("improving",) else None
        refused = self._budget_refusal(row, escalate_to) if escalate_to is not None else None
        if refused is not None:
            escalate_to = None
        if escalate_to is not None:
            await self.responses.change(row["id"], status="improving")
            self.router.background(self._improve(row, escalate_to, key))
        answer = {"id": f"fb-{saved['id']}", "object": "modelyard.feedback", "response_id": row["id"],
                  "rating": fb.rating, "tier": rated_tier, "escalated_to": escalate_to.name if escalate_to else None,
                  "status": "improving" if escalate_to else row["status"]}
        if refused is not None:
            answer["escalation_refused"] = {"code": refused.code, "message": refused.message}
        if cached is not None and fb.rating < 0:  # a routed answer that the cache also stored
            answer["cache"] = await self._forget_cached(fb.response_id, row["endpoint"])
        return answer

    async def _rate_cached(self, fb: FeedbackRequest, key: Any, cached: Any) -> dict[str, Any]:
        """A rating of an answer the cache served: kept like any rating (tier ``cache``); a -1 also removes the
        entry and, for a semantic hit, tightens the endpoint's threshold."""
        if not (key.is_admin or (cached.key_id == getattr(key, "id", None) and key.allows(cached.endpoint))):
            raise not_found(fb.response_id)
        saved = await asyncio.to_thread(self.store.add_feedback, response_id=fb.response_id, endpoint=cached.endpoint,
                                        tier="cache", rating=fb.rating, comment=fb.comment,
                                        key_id=getattr(key, "id", None))
        if self.metrics is not None:
            self.metrics.feedback(cached.endpoint, "cache", fb.rating)
        answer: dict[str, Any] = {"id": f"fb-{saved['id']}", "object": "modelyard.feedback",
                                  "response_id": fb.response_id, "rating": fb.rating, "tier": "cache",
                                  "escalated_to": None, "status": "answered"}
        if fb.rating < 0:
            answer["cache"] = await self._forget_cached(fb.response_id, cached.endpoint)
        return answer

    async def _forget_cached(self, response_id: str, endpoint_name: str) -> dict[str, Any] | None:
        try:
            spec = self.endpoints.get(endpoint_name).spec.cache
        except ModelyardError:
            return None
        if not spec.enabled or self.cache is None:
            return None
        return await self.cache.rated_down(response_id, spec)

    def _budget_refusal(self, row: dict[str, Any], tier: Deployment) -> ModelyardError | None:
        """Why the budget does not allow asking ``tier`` for this answer now, or None when it does."""
        tracker = self.budgets
        if tracker is None or not budget.is_paid(tier):
            return None
        try:
            spec = self.endpoints.get(row["endpoint"]).spec.budget
        except ModelyardError:
            return None
        state = tracker.state(row["endpoint"], row["key_id"], spec) if spec is not None else None
        if state is None or not state.exhausted:
            return None
        return budget.exhausted_error(state, tier)

    def _next_tier(self, row: dict[str, Any]) -> Any:
        try:
            endpoint = self.endpoints.get(row["endpoint"])
        except ModelyardError:
            return None
        if not kept_request(row):
            return None
        tiers = endpoint.spec.tiers
        rated = row["latest_tier"] or row["tier"]
        if rated not in tiers:
            return None
        i = tiers.index(rated)
        if i + 1 >= len(tiers):
            return None  # the top tier answered: nothing stronger to ask
        return endpoint.deployments.get(tiers[i + 1])

    async def _improve(self, row: dict[str, Any], tier: Deployment, key: Any) -> None:
        kind = row["kind"]
        request = KINDS[kind].model_validate({**row["request"], "stream": False, "stream_options": None})
        route = f"feedback:{tier.name}"
        refused = self._budget_refusal(row, tier)  # spent meanwhile, by other requests
        if refused is not None:
            log.info("feedback escalation of %s to %s refused: %s", row["id"], tier.name, refused.message)
            await self.responses.change(row["id"], status="improve_failed")
            return
        try:
            body, metered = await metering.complete(tier, kind, request)
        except MeteringError as err:
            log.warning("feedback escalation of %s to %s failed: %s", row["id"], tier.name, err.message)
            self.router.ledger.submit(step_record(err.metered.step("error"), endpoint=row["endpoint"], kind=kind,
                                                  key_id=row["key_id"], route=route))
            await self.responses.change(row["id"], status="improve_failed")
            return
        self.router.ledger.submit(step_record(metered.step("answered"), endpoint=row["endpoint"], kind=kind,
                                              key_id=row["key_id"], route=route))
        await self.responses.change(row["id"], status="improved", latest_tier=tier.name,
                                    latest_content=answer_text(kind, body))
