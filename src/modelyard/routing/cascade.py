"""The cascade: call the cheapest tier, score its answer, escalate while the score is low.

Each tier but the last answers as a whole (its answer must be judged before
anything is sent); the last one streams to a streaming client. An answer
that is kept is replayed as a stream when the client asked for one. The
usage record holds every tier called: the escalated ones with outcome
``escalated``, the one whose answer was sent with ``answered``.

Scorers, all computed from the answer itself:

- ``mean_logprob`` / ``min_logprob`` — the mean or lowest log-probability
  of the answer's tokens (the tier is asked for log-probabilities; a tier
  that returns none scores −inf and escalates);
- ``refusal`` — 0 when the answer refuses or says it does not know, else 1;
- ``verifier`` — the endpoint's trained router model applied to prompt and
  answer: 1 − its probability that the stronger tier is needed.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from ..wire import answer_text, prompt_text
from .context import TierCalls, respond
from .models import Models
from .spec import CascadeRouter

#: answers that decline or admit not knowing (English); matched at the start or as a whole phrase
REFUSAL = re.compile(
    r"\b(i (really )?(do not|don't|dont) know|i'?m not (sure|certain)|i am not (sure|certain)|i (cannot|can't|can not|am unable to|'m unable to) "
    r"(answer|help|say|tell|provide|determine)|i have no (idea|information)|as an ai\b|i'?m sorry, but|"
    r"no idea\b|not enough information|unable to (answer|determine))",
    re.IGNORECASE,
)


def token_logprobs(kind: str, body: dict[str, Any]) -> list[float]:
    """The answer's token log-probabilities, from a chat or a completions body."""
    choices = body.get("choices") or [{}]
    lp = choices[0].get("logprobs") or {}
    if kind == "chat":
        return [float(t["logprob"]) for t in lp.get("content") or () if t.get("logprob") is not None]
    return [float(x) for x in lp.get("token_logprobs") or () if x is not None]


def is_refusal(text: str) -> bool:
    stripped = text.strip()
    return not stripped or bool(REFUSAL.search(stripped[:400]))


class CascadePolicy:
    def __init__(self, spec: CascadeRouter, models: Models, endpoint: str) -> None:
        self.spec = spec
        self.models = models
        self.endpoint = endpoint

    def _threshold(self, low_budget: bool) -> float:
        """While the budget runs low the bar is lowered, so fewer answers escalate."""
        t = self.spec.threshold
        if not low_budget:
            return t
        return t * 1.5 if self.spec.scorer in ("mean_logprob", "min_logprob") else t / 2

    async def score(self, ctx: TierCalls, body: dict[str, Any]) -> float:
        scorer = self.spec.scorer
        if scorer in ("mean_logprob", "min_logprob"):
            values = token_logprobs(ctx.kind, body)
            if not values:
                return -math.inf
            return sum(values) / len(values) if scorer == "mean_logprob" else min(values)
        text = answer_text(ctx.kind, body)
        if scorer == "refusal":
            return 0.0 if is_refusal(text) else 1.0
        model = self.models.router(self.endpoint)
        needs_strong = await asyncio.to_thread(model.score, [prompt_text(ctx.request)], [text])
        return 1.0 - float(needs_strong[0])

    def _overrides(self, ctx: TierCalls) -> dict[str, Any]:
        if self.spec.scorer not in ("mean_logprob", "min_logprob"):
            return {}
        return {"logprobs": True} if ctx.kind == "chat" else {"logprobs": 1}

    async def answer(self, ctx: TierCalls) -> None:
        threshold = self._threshold(ctx.budget_low)
        asked_logprobs = bool(getattr(ctx.request, "logprobs", None))
        path: list[str] = []
        for tier in ctx.tiers[:-1]:
            if not ctx.allows(tier):
                raise ctx.refuse_for_budget(tier)
            body, step = await ctx.complete(tier, **self._overrides(ctx))
            path.append(tier.name)
            score = await self.score(ctx, body)
            refused = self.spec.escalate_on_refusal and is_refusal(answer_text(ctx.kind, body))
            if score >= threshold and not refused:
                ctx.route = f"cascade:{'>'.join(path)}"
                ctx.answer(tier, body, strip_logprobs=not asked_logprobs)
                return
            step.outcome = "escalated"
            step.extra["score"] = None if math.isinf(score) else round(score, 4)
        last = ctx.tiers[-1]
        path.append(last.name)
        ctx.route = f"cascade:{'>'.join(path)}"
        await respond(ctx, last)
