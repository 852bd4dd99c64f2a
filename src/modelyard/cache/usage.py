"""What an endpoint's cache did, from the usage records.

Every request's usage line carries the cache decision (``cache``: ``hit``,
``semantic-hit``, ``miss``, ``bypass``, ``unavailable``, ``warming``, ``off``) and, for a
hit, what the original answer cost (``saved_tokens``, ``saved_usd``). Hit
rates and savings are summed from those lines, so they survive restarts and
cover every gateway that writes to the same database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from ..store.models import UsageRecord

DECISIONS = ("hit", "semantic-hit", "miss", "bypass", "unavailable", "warming")


def cache_usage(db: Any, endpoint: str, since: datetime | None = None) -> dict[str, Any]:
    """Look-ups by decision, hit rates (of hits plus misses) and what the hits saved."""
    t = UsageRecord.__table__.c
    query = (select(t.cache, func.count().label("n"), func.sum(t.saved_tokens).label("tokens"),
                    func.sum(t.saved_usd).label("usd"))
             .where(t.endpoint == endpoint, t.cache.in_(DECISIONS)).group_by(t.cache))
    if since is not None:
        query = query.where(t.created_at >= since)
    with db.engine.connect() as connection:
        rows = {r.cache: r for r in connection.execute(query)}
    count = {d: int(rows[d].n) if d in rows else 0 for d in DECISIONS}
    looked_up = count["hit"] + count["semantic-hit"] + count["miss"]
    rate = (lambda n: n / looked_up if looked_up else None)
    return {
        "requests": sum(count.values()),
        "hits": count["hit"],
        "semantic_hits": count["semantic-hit"],
        "misses": count["miss"],
        "bypassed": count["bypass"],
        "unavailable": count["unavailable"],
        "warming": count["warming"],
        "hit_rate": rate(count["hit"] + count["semantic-hit"]),
        "exact_hit_rate": rate(count["hit"]),
        "semantic_hit_rate": rate(count["semantic-hit"]),
        "saved_tokens": sum(int(r.tokens or 0) for r in rows.values()),
        "saved_usd": sum(float(r.usd or 0.0) for r in rows.values()),
    }
