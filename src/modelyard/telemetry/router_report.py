"""The router report: what an endpoint spent, which tiers answered, and what routing saved.

For one endpoint and a window (``15m``, ``1h``, ``24h``, ``7d``, ``30d`` …),
read from the usage records::

    report = router_report(db, endpoint.spec, {name: d.card for name, d in endpoint.deployments.items()},
                           parse_window("7d"))

What it counts (every figure in USD comes from the records' ``cost_usd``):

- **requests** — live requests: every record except mirrored copies (route
  ``mirror:…``) and work that finished after its answer (routes
  ``speculative-check:…`` and ``feedback:…``, which belong to a request
  already counted). ``errors`` are those answered with status ≥ 400.
- **spend** — every record's cost, mirrored copies and follow-up work
  included: what the budget counts. ``mirror_spend_usd`` and
  ``follow_up_spend_usd`` say how much of it those were.
- **tier mix** — each answered request (status < 400) by the deployment that
  answered it (the record's ``deployment``); cache hits are their own row,
  ``(cache)``. ``share`` is the row's part of all answers.
- **escalations** — requests whose ``tiers`` show a step that was
  ``escalated`` (judged not good enough) or ``corrected`` (a speculative
  answer replaced); ``escalation_rate`` is their share of the requests that
  the tiers answered (cache hits left out).
- **cache** — hits and ``saved_usd`` they recorded (what the original
  generation cost).
- **counterfactual** — "everything to the top tier": each request the tiers
  answered, priced at the top tier's price. The top tier is the last of a
  router endpoint's ``tiers``; for a split endpoint, the deployment with the
  highest per-token card price. The tokens are the answering step's (for a
  routed request, the step of the tier that answered; otherwise the
  record's). A top tier with a token price on its card is priced by it; a
  local top tier (priced by instance time) by its observed cost per token in
  the window; with neither, the counterfactual is unknown (None).
  ``savings_usd`` = counterfactual − what those requests and their
  follow-up work cost; ``savings_pct`` is that share of the counterfactual.
  Cache savings are not in it: they are reported on their own.
- **learned fallbacks** — requests a ``learned`` router left to its fallback:
  ``ood`` (the prompt was far from the router's training data; route
  ``learned-ood:…``) and ``inactive`` (the router was not activated; route
  ``learned-off:…``), and their share of the learned router's requests.
- **feedback** — ratings per tier (``POST /v1/feedback``), when any.
- **series** — the same numbers per time bucket (5 minutes up to a 2-hour
  window, hours up to 2 days, days beyond), for the plot.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy import case, func, select

from .. import durations
from ..catalog.card import Price
from ..errors import invalid
from ..store.models import UsageRecord

log = logging.getLogger(__name__)

_T = UsageRecord.__table__.c
#: Routes of records that are not requests of their own.
MIRROR_PREFIX = "mirror:"
FOLLOW_UP_PREFIXES = ("speculative-check:", "feedback:")
#: Outcomes of a tier step that mean the request went further than its first answer.
ESCALATED = frozenset({"escalated", "corrected"})
CACHE_ROW = "(cache)"
#: Route prefixes of a learned router's decisions left to its fallback (``routing.policy`` writes them), by reason.
LEARNED_FALLBACK_ROUTES = {"ood": "learned-ood:", "inactive": "learned-off:"}
LEARNED_PREFIX = "learned"


def fallback_reason(route: str | None) -> str | None:
    """``ood`` or ``inactive`` when ``route`` is a learned router's fallback decision, else None."""
    if route and route.startswith("learned-"):
        for reason, prefix in LEARNED_FALLBACK_ROUTES.items():
            if route.startswith(prefix):
                return reason
    return None
MAX_WINDOW = timedelta(days=366)


def parse_window(text: str) -> timedelta:
    """``"15m"``, ``"1h"``, ``"24h"``, ``"7d"``, ``"30d"``, ``"2w"`` as a `timedelta`; a clear 400 otherwise."""
    try:
        window = timedelta(seconds=durations.parse_duration(text, units=("m", "h", "d", "w"), whole=True, bare=None))
    except ValueError as exc:
        raise invalid(f"window {text!r} is not a duration ({exc}): a whole number and a unit, m (minutes), "
                      "h (hours), d (days) or w (weeks), e.g. 15m, 1h, 24h, 7d, 30d", param="window",
                      code="invalid_window") from None
    if window > MAX_WINDOW:
        raise invalid(f"window {text!r} is longer than the {MAX_WINDOW.days} days a report covers", param="window",
                      code="invalid_window")
    return window


def bucket_seconds(window: timedelta) -> int:
    """The series' bucket: 5 minutes up to 2 hours, an hour up to 2 days, a day beyond."""
    if window <= timedelta(hours=2):
        return 300
    if window <= timedelta(days=2):
        return 3600
    return 86400


@dataclass(frozen=True)
class TierPrice:
    """What the counterfactual charges per token: the top tier's card price, or its observed rate."""

    deployment: str
    model: str | None
    price: Price
    #: ``card`` (the catalog's per-token price) or ``observed`` (the window's cost per token of a local tier)
    source: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.price.token_cost(prompt_tokens, completion_tokens)

    def describe(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "model": self.model, "input_per_1m": self.price.input_per_1m,
                "output_per_1m": self.price.output_per_1m, "price_from": self.source}


def _card_price(name: str, card: Any) -> TierPrice | None:
    price = card.price
    if price.input_per_1m > 0 or price.output_per_1m > 0:
        return TierPrice(name, card.id, price, "card")
    return None


def _observed_price(name: str, card: Any, observed: Mapping[str, tuple[float, int]]) -> TierPrice | None:
    cost, tokens = observed.get(name, (0.0, 0))
    if tokens <= 0 or cost <= 0:
        return None
    per_1m = cost / tokens * 1_000_000
    return TierPrice(name, card.id if card is not None else None, Price(input_per_1m=per_1m, output_per_1m=per_1m),
                     "observed")


def top_tier_price(spec: Any, cards: Mapping[str, Any], observed: Mapping[str, tuple[float, int]]) -> TierPrice | None:
    """The price of "everything to the top tier" (see the module docstring), or None when unknown.

    ``cards`` maps the endpoint's deployment names to their catalog cards;
    ``observed`` maps deployment names to (cost, tokens) seen in the window.
    """
    if spec.policy == "router" and spec.tiers:
        top = spec.tiers[-1]
        card = cards.get(top)
        if card is None:
            return _observed_price(top, None, observed)
        return _card_price(top, card) or _observed_price(top, card, observed)
    priced = [p for p in (_card_price(n, c) for n, c in cards.items()) if p is not None]
    if priced:
        return max(priced, key=lambda p: (p.price.input_per_1m + p.price.output_per_1m, p.deployment))
    seen = [p for p in (_observed_price(n, c, observed) for n, c in cards.items()) if p is not None]
    return max(seen, key=lambda p: (p.price.input_per_1m, p.deployment)) if seen else None


def _answering_tokens(deployment: str | None, tiers: Any, prompt: int, completion: int) -> tuple[int, int]:
    """The tokens of the step that answered (a routed request's tiers), else the record's."""
    if isinstance(tiers, list):
        for step in reversed(tiers):
            if isinstance(step, dict) and step.get("deployment") == deployment:
                return int(step.get("prompt_tokens") or 0), int(step.get("completion_tokens") or 0)
    return prompt, completion


def _escalated(tiers: Any) -> bool:
    return isinstance(tiers, list) and any(isinstance(s, dict) and s.get("outcome") in ESCALATED for s in tiers)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _r(value: float) -> float:
    return round(value, 10)


def router_report(db: Any, spec: Any, cards: Mapping[str, Any], window: timedelta, *,
                  now: datetime | None = None, window_text: str | None = None) -> dict[str, Any]:
    """The report for endpoint ``spec`` over the ``window`` up to ``now`` (see the module docstring).

    ``cards`` maps the endpoint's deployment names to their catalog cards.
    """
    until = _aware(now) if now is not None else datetime.now(timezone.utc)
    since = until - window
    name = spec.name
    where = (_T.endpoint == name, _T.created_at >= since, _T.created_at < until)
    bucket_s = bucket_seconds(window)
    first = math.floor(since.timestamp() / bucket_s)
    count = max(1, math.ceil(until.timestamp() / bucket_s) - first)
    series = [{"t": datetime.fromtimestamp((first + i) * bucket_s, timezone.utc).isoformat(), "requests": 0,
               "spend_usd": 0.0, "counterfactual_usd": 0.0, "tiers": {}, "tokens": [0, 0]} for i in range(count)]

    with db.engine.connect() as conn:
        rows = conn.execute(
            select(_T.created_at, _T.deployment, _T.status, _T.cache, _T.route, _T.prompt_tokens,
                   _T.completion_tokens, _T.cost_usd, _T.saved_usd, _T.tiers)
            .where(*where).execution_options(yield_per=2000))
        totals = _tally(rows, series, first, bucket_s)
        feedback = _feedback(conn, name, since, until)
    top = top_tier_price(spec, cards, totals.pop("observed"))

    order = list(spec.tiers) if spec.policy == "router" else list(cards)
    mix = totals.pop("mix")
    answers = sum(m["answers"] for m in mix.values())
    names = [n for n in order if n in mix] + sorted(n for n in mix if n not in order and n != CACHE_ROW)
    names += [CACHE_ROW] if CACHE_ROW in mix else []
    tier_mix = []
    for tier in names:
        m = mix[tier]
        card = cards.get(tier)
        tier_mix.append({"deployment": tier, "model": card.id if card is not None else m.get("model"),
                         "answers": m["answers"], "share": m["answers"] / answers if answers else 0.0,
                         "spend_usd": _r(m["spend_usd"]), "prompt_tokens": m["prompt_tokens"],
                         "completion_tokens": m["completion_tokens"]})
    tiered = totals["requests"] - totals["cache_hits"]
    counterfactual = top.cost(*totals["counterfactual_tokens"]) if top is not None else None
    savings = counterfactual - totals["compared_usd"] if counterfactual is not None else None
    for point in series:
        point["spend_usd"] = _r(point["spend_usd"])
        point["counterfactual_usd"] = _r(top.cost(*point.pop("tokens"))) if top is not None else None
        point.pop("tokens", None)
    return {
        "endpoint": name,
        "policy": spec.policy,
        "tiers": list(spec.tiers) if spec.policy == "router" else list(cards),
        "window": window_text or f"{int(window.total_seconds())}s",
        "since": since.isoformat(),
        "until": until.isoformat(),
        "requests": totals["requests"],
        "answered": answers,
        "errors": totals["errors"],
        "spend_usd": _r(totals["spend_usd"]),
        "mirror_spend_usd": _r(totals["mirror_spend_usd"]),
        "follow_up_spend_usd": _r(totals["follow_up_spend_usd"]),
        "tier_mix": tier_mix,
        "escalations": totals["escalations"],
        "escalation_rate": totals["escalations"] / tiered if tiered else 0.0,
        "cache_hits": totals["cache_hits"],
        "cache_saved_usd": _r(totals["cache_saved_usd"]),
        "top_tier": top.describe() if top is not None else None,
        "counterfactual_usd": _r(counterfactual) if counterfactual is not None else None,
        "savings_usd": _r(savings) if savings is not None else None,
        "savings_pct": savings / counterfactual * 100 if savings is not None and counterfactual else None,
        "learned_fallbacks": _fallbacks(totals),
        "feedback": feedback,
        "bucket_s": bucket_s,
        "series": series,
    }


def _tally(rows: Iterable[Any], series: list[dict[str, Any]], first: int, bucket_s: int) -> dict[str, Any]:
    """One pass over the window's records: the totals, the tier mix, the series, and each
    deployment's observed (cost, tokens) — from each tier step of a routed record, else the record's."""
    t: dict[str, Any] = {"requests": 0, "errors": 0, "spend_usd": 0.0, "mirror_spend_usd": 0.0,
                         "follow_up_spend_usd": 0.0, "escalations": 0, "cache_hits": 0, "cache_saved_usd": 0.0,
                         "compared_usd": 0.0, "learned": 0, "fallback_ood": 0, "fallback_inactive": 0}
    mix: dict[str, dict[str, Any]] = {}
    observed: dict[str, tuple[float, int]] = {}
    would = [0, 0]  # the counterfactual's prompt and completion tokens
    count = len(series)
    for created_at, dep, status, cache, route, prompt, completion, cost, saved, tiers in rows:
        cost = float(cost or 0.0)
        hit = cache == "hit"
        if not hit:
            _observe(observed, dep, tiers, cost, int(prompt or 0) + int(completion or 0))
        index = math.floor(_aware(created_at).timestamp() / bucket_s) - first
        point = series[index] if 0 <= index < count else None
        t["spend_usd"] += cost
        if point is not None:
            point["spend_usd"] += cost
        route = route or ""
        if route.startswith(MIRROR_PREFIX):
            t["mirror_spend_usd"] += cost
            continue
        if route.startswith(FOLLOW_UP_PREFIXES):
            t["follow_up_spend_usd"] += cost
            t["compared_usd"] += cost
            continue
        t["requests"] += 1
        if route.startswith(LEARNED_PREFIX):
            t["learned"] += 1
            reason = fallback_reason(route)
            if reason is not None:
                t[f"fallback_{reason}"] += 1
        if point is not None:
            point["requests"] += 1
        if status >= 400:
            t["errors"] += 1
        if hit:
            t["cache_hits"] += 1
            t["cache_saved_usd"] += float(saved or 0.0)
        else:
            t["compared_usd"] += cost
            if _escalated(tiers):
                t["escalations"] += 1
            p, c = _answering_tokens(dep, tiers, int(prompt or 0), int(completion or 0))
            would[0] += p
            would[1] += c
            if point is not None:
                point["tokens"][0] += p
                point["tokens"][1] += c
        if status < 400:
            row = CACHE_ROW if hit else (dep or "?")
            m = mix.setdefault(row, {"answers": 0, "spend_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0})
            m["answers"] += 1
            m["spend_usd"] += cost
            m["prompt_tokens"] += int(prompt or 0)
            m["completion_tokens"] += int(completion or 0)
            if point is not None:
                point["tiers"][row] = point["tiers"].get(row, 0) + 1
    t["mix"] = mix
    t["observed"] = observed
    t["counterfactual_tokens"] = tuple(would)
    return t


def _fallbacks(totals: dict[str, Any]) -> dict[str, Any] | None:
    """The learned router's fallback decisions in the window, or None when no request was routed by one."""
    learned = totals.pop("learned")
    ood, inactive = totals.pop("fallback_ood"), totals.pop("fallback_inactive")
    if not learned:
        return None
    return {"learned_requests": learned, "ood": ood, "inactive": inactive, "ood_share": ood / learned,
            "fallback_share": (ood + inactive) / learned}


def _observe(observed: dict[str, tuple[float, int]], dep: str | None, tiers: Any, cost: float, tokens: int) -> None:
    steps = [s for s in tiers if isinstance(s, dict)] if isinstance(tiers, list) else []
    if steps:
        for s in steps:
            name = s.get("deployment")
            if name:
                c, n = observed.get(name, (0.0, 0))
                observed[name] = (c + float(s.get("cost_usd") or 0.0),
                                  n + int(s.get("prompt_tokens") or 0) + int(s.get("completion_tokens") or 0))
    elif dep:
        c, n = observed.get(dep, (0.0, 0))
        observed[dep] = (c + cost, n + tokens)


def _feedback(conn: Any, endpoint: str, since: datetime, until: datetime) -> list[dict[str, Any]] | None:
    """Ratings per tier in the window, or None when there are none (or no feedback table)."""
    try:
        from ..store.models import Feedback
    except ImportError:
        return None
    f = Feedback.__table__.c
    positive = func.sum(case((f.rating > 0, 1), else_=0))
    try:
        rows = conn.execute(select(f.tier, func.count(), positive)
                            .where(f.endpoint == endpoint, f.created_at >= since, f.created_at < until)
                            .group_by(f.tier).order_by(f.tier)).all()
    except Exception as exc:  # a database from before the feedback table: the report goes on without it
        log.debug("router report: no feedback (%s)", exc)
        conn.rollback()
        return None
    if not rows:
        return None
    out = []
    for tier, ratings, good in rows:
        good = int(good or 0)
        out.append({"tier": tier, "ratings": int(ratings), "positive": good, "negative": int(ratings) - good,
                    "positive_share": good / ratings if ratings else None})
    return out
