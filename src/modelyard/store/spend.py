"""Spend and savings read back from the usage records: by endpoint, key and day, and decisions over time.

What the console's *Usage & cost* page and its monitoring charts for the
cache and the router show. Definitions:

- *spent* (``cost_usd``): what the requests cost, summed.
- *saved* (``saved_usd``): what the request path avoided paying. A cache hit
  records what the original generation cost (``cache`` ``hit`` or ``semantic-hit``: *cache
  savings*); a routed answer records what sending it to the top tier would
  have cost beyond what it did cost (every other record with ``saved_usd``:
  *router savings*).
- *without savings* (``baseline_usd`` = spent + saved): what everything sent to
  the top tier, nothing cached, would have cost.
- *batch*: records with a ``batch_id`` (requests of batch jobs), counted
  within the totals and also on their own.
- *flows*: a flow call's record (``kind`` ``flow``) sums its steps, whose own
  records carry their endpoints and keys. It has its row in ``by_endpoint``
  (what the flow costs) and is left out of ``totals``, ``by_key`` and
  ``by_day``, which would otherwise count the steps twice.

Mirrored (shadow) calls cost money too and are counted; their ``route``
starts with ``mirror:``.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import String, and_, case, cast, func, select

from .db import Database
from .metrics import _aware
from .models import ApiKey, UsageRecord, utcnow
from .usage import _day

_T = UsageRecord.__table__.c


#: ``cache`` values that mean no cache decision was made.
NO_CACHE = ("off", "")


def _routed() -> Any:
    """SQL: the record was routed (``tiers`` holds a list; a JSON column stores Python None as ``null``)."""
    return func.coalesce(cast(_T.tiers, String), "null") != "null"


def _sums() -> list[Any]:
    cache_hit = _T.cache.in_(("hit", "semantic-hit"))
    return [
        func.count().label("requests"),
        func.sum(case((_T.status >= 400, 1), else_=0)).label("errors"),
        func.sum(_T.prompt_tokens).label("prompt_tokens"),
        func.sum(_T.completion_tokens).label("completion_tokens"),
        func.sum(_T.cost_usd).label("cost_usd"),
        func.sum(_T.saved_usd).label("saved_usd"),
        func.sum(_T.saved_tokens).label("saved_tokens"),
        func.sum(case((cache_hit, _T.saved_usd), else_=0.0)).label("cache_saved_usd"),
        func.sum(case((cache_hit, 1), else_=0)).label("cache_hits"),
        func.sum(case((_routed(), 1), else_=0)).label("routed"),
        func.sum(case((_T.batch_id.is_not(None), 1), else_=0)).label("batch_requests"),
        func.sum(case((_T.batch_id.is_not(None), _T.cost_usd), else_=0.0)).label("batch_cost_usd"),
    ]


_INTS = ("requests", "errors", "prompt_tokens", "completion_tokens", "saved_tokens", "cache_hits", "routed",
         "batch_requests")
_FLOATS = ("cost_usd", "saved_usd", "cache_saved_usd", "batch_cost_usd")


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for name in _INTS:
        out[name] = int(out.get(name) or 0)
    for name in _FLOATS:
        out[name] = round(float(out.get(name) or 0.0), 10)
    out["router_saved_usd"] = round(max(out["saved_usd"] - out["cache_saved_usd"], 0.0), 10)
    out["baseline_usd"] = round(out["cost_usd"] + out["saved_usd"], 10)
    return out


def spend_report(db: Database, *, since: datetime, until: datetime | None = None,
                 endpoint: str | None = None) -> dict[str, Any]:
    """Spend and savings over ``[since, until)``: totals, by endpoint, by key and by UTC day.

    Each row holds ``requests, errors, prompt_tokens, completion_tokens, cost_usd,
    saved_usd, saved_tokens, cache_saved_usd, router_saved_usd, baseline_usd,
    cache_hits, routed, batch_requests, batch_cost_usd`` (see the module
    docstring); ``by_key`` rows add the key's ``key_id``, ``key_name``,
    ``key_prefix``, ``key_endpoint`` and ``is_admin`` (None for requests
    refused before a key was known). Rows are by cost, highest first, except
    ``by_day``, newest first.
    """
    since = _aware(since)
    until = _aware(until) if until is not None else utcnow()
    where = [_T.created_at >= since, _T.created_at < until]
    if endpoint is not None:
        where.append(_T.endpoint == endpoint)
    keys = ApiKey.__table__.c
    day = _day(db, _T.created_at)
    with db.engine.connect() as conn:
        steps = [*where, _T.kind != "flow"]  # a flow's record repeats its steps' (see the module docstring)
        totals = conn.execute(select(*_sums()).where(*steps)).mappings().one()
        by_endpoint = conn.execute(select(_T.endpoint.label("endpoint"), *_sums()).where(*where)
                                   .group_by(_T.endpoint).order_by(func.sum(_T.cost_usd).desc(), _T.endpoint)).mappings().all()
        by_key = conn.execute(
            select(_T.key_id.label("key_id"), keys.name.label("key_name"), keys.prefix.label("key_prefix"),
                   keys.endpoint_name.label("key_endpoint"), keys.is_admin.label("is_admin"), *_sums())
            .select_from(UsageRecord.__table__.outerjoin(ApiKey.__table__, and_(keys.id == _T.key_id)))
            .where(*steps).group_by(_T.key_id, keys.name, keys.prefix, keys.endpoint_name, keys.is_admin)
            .order_by(func.sum(_T.cost_usd).desc(), _T.key_id)).mappings().all()
        by_day = conn.execute(select(day.label("day"), *_sums()).where(*steps).group_by(day)
                              .order_by(day.desc())).mappings().all()
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "endpoint": endpoint,
        "totals": _row(totals),
        "by_endpoint": [_row(r) for r in by_endpoint],
        "by_key": [_row(r) | {"is_admin": bool(r["is_admin"]) if r["is_admin"] is not None else None}
                   for r in by_key],
        "by_day": [_row(r) for r in by_day],
    }


def decision_series(db: Database, *, endpoint: str, since: datetime, until: datetime | None = None,
                    bucket_s: int = 60, deployment: str | None = None) -> dict[str, Any]:
    """Cache and router decisions per time bucket, for charts (mirrored calls left out).

    Buckets start at whole multiples of ``bucket_s`` (as in `store.metrics`). Each point::

        {"t": "...", "requests": 40,
         "cache": {"hit": 12, "miss": 20},          # records by their cache decision ("off" is none)
         "cache_hit_rate": 0.375,                   # hit / all decisions, None without any
         "routed": 28, "tiers": {"small": 22, "large": 6},  # routed answers by the deployment that answered
         "escalations": 6,                          # routed answers escalated or corrected by a stronger tier
         "saved_usd": 0.0031}

    ``has_cache`` / ``has_router`` say whether any record in the window had a
    cache decision / was routed, so a chart can be left out when not.
    """
    since = _aware(since)
    until = _aware(until) if until is not None else utcnow()
    first = math.floor(since.timestamp() / bucket_s)
    count = max(1, math.ceil(until.timestamp() / bucket_s) - first)
    query = (select(_T.created_at, _T.deployment, _T.cache, _T.tiers, _T.route, _T.saved_usd)
             .where(_T.endpoint == endpoint, _T.created_at >= since, _T.created_at < until))
    if deployment is not None:
        query = query.where(_T.deployment == deployment)
    points: list[dict[str, Any]] = [
        {"t": datetime.fromtimestamp((first + i) * bucket_s, timezone.utc).isoformat(), "requests": 0, "cache": {},
         "routed": 0, "tiers": {}, "escalations": 0, "saved_usd": 0.0} for i in range(count)]
    has_cache = has_router = False
    with db.engine.connect() as conn:
        for created_at, dep, cache, tiers, route, saved in conn.execute(query):
            if route and route.startswith("mirror:"):
                continue
            index = math.floor(_aware(created_at).timestamp() / bucket_s) - first
            if not 0 <= index < count:
                continue
            point = points[index]
            point["requests"] += 1
            point["saved_usd"] += float(saved or 0.0)
            if cache and cache not in NO_CACHE:
                has_cache = True
                point["cache"][cache] = point["cache"].get(cache, 0) + 1
            if tiers:
                has_router = True
                point["routed"] += 1
                answered = dep or (tiers[-1].get("deployment") if isinstance(tiers[-1], dict) else None) or "?"
                point["tiers"][answered] = point["tiers"].get(answered, 0) + 1
                point["escalations"] += any(isinstance(t, dict) and t.get("outcome") in ("escalated", "corrected")
                                            for t in tiers)
    for point in points:
        decided = sum(point["cache"].values())
        point["cache_hit_rate"] = (point["cache"].get("hit", 0) + point["cache"].get("semantic-hit", 0)) / decided if decided else None
        point["saved_usd"] = round(point["saved_usd"], 10)
    return {"endpoint": endpoint, "deployment": deployment, "bucket_s": bucket_s, "since": since.isoformat(),
            "until": until.isoformat(), "has_cache": has_cache, "has_router": has_router, "series": points}


def spent_since(db: Database, endpoint: str, key_id: int | None, since: datetime) -> float:
    """USD the usage records say ``endpoint`` (or one key on it) spent since ``since``: where a budget counter
    shared by several gateways (`store.spend_counters`) starts. Flow records repeat their steps' cost and are
    left out, as budgets do."""
    where = [_T.endpoint == endpoint, _T.created_at >= _aware(since), _T.cost_usd > 0, _T.kind != "flow"]
    if key_id is not None:
        where.append(_T.key_id == key_id)
    with db.engine.connect() as conn:
        return float(conn.execute(select(func.coalesce(func.sum(_T.cost_usd), 0.0)).where(*where)).scalar_one())
