"""Router strategies: each is a `RouterPolicy` with one method, ``answer(ctx)``.

The gateway's router stage (gateway/router.py) builds the endpoint's
strategy and hands it a context holding the call and the endpoint's tiers,
cheapest first. A strategy calls tiers through the context
(``ctx.complete(tier)``, ``ctx.stream(tier)``), answers (``ctx.answer``),
and sets ``ctx.route`` to say why — the ``x-modelyard-route`` header and the
usage record's ``route`` carry it.

Strategies depend on `routing.context.TierCalls` (what they may ask of the
gateway) and `routing.models.Models` (trained routers, the embedder).

- ``rules``: the first rule whose conditions hold picks the tier (this file);
- ``learned``: a trained model scores the prompt; above the threshold goes
  to the strongest tier (this file);
- ``cascade``: cheapest first, escalate while the answer scores low
  (cascade.py);
- ``speculative``: stream the cheapest, check with the strongest, correct
  (speculative.py).

While the budget runs low (``ctx.budget_low``) every strategy leans to
cheaper tiers; a paid tier the budget no longer allows is refused with 429
(``ctx.refuse_for_budget``) — local tiers keep answering.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import regex

from ..errors import invalid
from ..telemetry.router_report import LEARNED_FALLBACK_ROUTES
from ..wire import prompt_text
from .cascade import CascadePolicy
from .context import TierCalls, respond
from .models import Models
from .speculative import SpeculativePolicy
from .spec import CascadeRouter, LearnedRouter, RulesRouter, SpeculativeRouter

log = logging.getLogger(__name__)

MAX_COST_HEADER = "x-modelyard-max-cost"
#: how long one rule's regex may search one prompt
REGEX_TIMEOUT_S = 0.05


class RouterPolicy(Protocol):
    async def answer(self, ctx: TierCalls) -> None:
        """Answer the call in `ctx` through its tiers."""


# --- rules ------------------------------------------------------------------------------


def estimate_tokens(request: Any) -> int:
    """Prompt tokens, estimated as characters / 4 (English averages about 4 characters a token)."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        chars = sum(len(m.text()) for m in messages)
    else:
        prompt = getattr(request, "prompt", "")
        chars = len(prompt) if isinstance(prompt, str) else sum(len(p) if isinstance(p, str) else 4 for p in prompt)
    return (chars + 3) // 4


def max_cost(headers: Any) -> float | None:
    value = headers.get(MAX_COST_HEADER) if headers is not None else None
    if value is None:
        return None
    try:
        cost = float(value)
    except ValueError:
        cost = -1.0
    if not cost >= 0:
        raise invalid(f"header {MAX_COST_HEADER} must be a non-negative number of USD, not {value!r}",
                      param=MAX_COST_HEADER, code="invalid_header")
    return cost


class RulesPolicy:
    """The first rule whose conditions all hold picks the tier; none: the default tier."""

    def __init__(self, spec: RulesRouter) -> None:
        self.spec = spec
        self._regex = [regex.compile(r.when.regex, regex.IGNORECASE) if r.when.regex else None for r in spec.rules]
        self._keywords = [[k.lower() for k in r.when.keywords] if r.when.keywords else None for r in spec.rules]
        #: searches cut off at `REGEX_TIMEOUT_S`
        self.regex_timeouts = 0

    def choose(self, request: Any, headers: Any) -> tuple[str, str]:
        """The tier's name and the name of the rule that chose it."""
        text = prompt_text(request)
        lowered = text.lower()
        tokens = estimate_tokens(request)
        n_messages = len(getattr(request, "messages", None) or [1])
        tags = getattr(request, "metadata", None) or {}
        cost = max_cost(headers)
        for i, rule in enumerate(self.spec.rules):
            w = rule.when
            if w.min_prompt_tokens is not None and tokens < w.min_prompt_tokens:
                continue
            if w.max_prompt_tokens is not None and tokens > w.max_prompt_tokens:
                continue
            if w.min_messages is not None and n_messages < w.min_messages:
                continue
            if w.max_messages is not None and n_messages > w.max_messages:
                continue
            if self._regex[i] is not None and not self._search(i, rule.name, text):
                continue
            if self._keywords[i] is not None and not any(k in lowered for k in self._keywords[i]):
                continue
            if w.metadata and not all(_tag_matches(tags.get(k), v) for k, v in w.metadata.items()):
                continue
            if w.max_cost_below is not None and (cost is None or cost >= w.max_cost_below):
                continue
            return rule.tier, rule.name or f"rule{i + 1}"
        return self.spec.default or "", "default"

    def _search(self, i: int, name: str | None, text: str) -> bool:
        """Whether rule ``i``'s pattern is found in ``text``. The search runs on the event loop, so it is cut off
        after `REGEX_TIMEOUT_S`: a pattern that backtracks catastrophically on some prompt then does not match
        (and is logged), instead of stalling every request of the gateway."""
        try:
            return self._regex[i].search(text, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            self.regex_timeouts += 1
            log.warning("router rule %s: its regex took over %.0f ms on a %d-character prompt; treated as no match",
                        name or f"rule{i + 1}", REGEX_TIMEOUT_S * 1000, len(text))
            return False

    async def answer(self, ctx: TierCalls) -> None:
        name, rule = self.choose(ctx.request, ctx.request_headers)
        tier = next((t for t in ctx.tiers if t.name == name), ctx.tiers[0])
        ctx.route = f"rules:{rule}>{tier.name}"
        await respond(ctx, tier)


def _tag_matches(value: str | None, wanted: str | list[str]) -> bool:
    if value is None:
        return False
    return value in wanted if isinstance(wanted, list) else value == wanted


# --- learned ----------------------------------------------------------------------------


class LearnedPolicy:
    """A trained model scores the prompt; at or above the threshold the strongest tier answers.

    The cheapest and the strongest tier are the two choices (tiers between
    them are for the cascade); while the budget runs low the threshold moves
    halfway to 1, so fewer prompts go to the paid tier.

    A prompt out of the model's training distribution (``ood_fallback``), and
    every prompt while the model is inactive, goes to ``fallback`` instead;
    the route says so (``learned-ood:…``, ``learned-off:…``), and the gateway
    counts those decisions (``modelyard_router_fallbacks``, `router report`).
    The ``length`` fallback sends a prompt to the strongest tier when it is
    longer than the share of training prompts the threshold keeps on the
    cheapest tier: the length rule at the learned threshold's strong share.
    """

    def __init__(self, spec: LearnedRouter, models: Models, endpoint: str) -> None:
        self.spec = spec
        self.models = models
        self.endpoint = endpoint
        fallback = spec.fallback
        self._fallback: RouterPolicy | None = (None if fallback == "length" else
                                               build(fallback, models, endpoint))

    async def answer(self, ctx: TierCalls) -> None:
        model = self.models.router(self.endpoint)
        text = prompt_text(ctx.request)
        assessment = await asyncio.to_thread(model.assess, [text])
        threshold = self.spec.threshold
        if ctx.budget_low:
            threshold += (1 - threshold) / 2
        if not model.active:
            await self._fall_back(ctx, model, text, threshold, "inactive")
            return
        if self.spec.ood_fallback and bool(assessment.outside[0]):
            await self._fall_back(ctx, model, text, threshold, "ood")
            return
        score = float(assessment.scores[0])
        tier = ctx.tiers[-1] if score >= threshold else ctx.tiers[0]
        ctx.route = f"learned:{score:.2f}>{tier.name}"
        await respond(ctx, tier)

    async def _fall_back(self, ctx: TierCalls, model: Any, text: str, threshold: float, reason: str) -> None:
        prefix = LEARNED_FALLBACK_ROUTES[reason]
        if self._fallback is not None:
            try:
                await self._fallback.answer(ctx)
            finally:
                ctx.route = prefix + (ctx.route or "")
            return
        strong = float(model.length_rank([text])[0]) >= 1.0 - model.strong_share(threshold)
        tier = ctx.tiers[-1] if strong else ctx.tiers[0]
        ctx.route = f"{prefix}length>{tier.name}"
        await respond(ctx, tier)


def build(spec: Any, models: Models, endpoint: str) -> RouterPolicy:
    """The strategy object for a router spec."""
    if isinstance(spec, RulesRouter):
        return RulesPolicy(spec)
    if isinstance(spec, LearnedRouter):
        return LearnedPolicy(spec, models, endpoint)
    if isinstance(spec, CascadeRouter):
        return CascadePolicy(spec, models, endpoint)
    if isinstance(spec, SpeculativeRouter):
        return SpeculativePolicy(spec, models)
    raise ValueError(f"unknown router strategy {spec!r}")
