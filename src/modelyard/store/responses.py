"""Routed answers and their feedback, kept so answers can be rated, improved and learned from.

`ResponseStore` is plain persistence: the router's `ResponseLog` decides
when to write. Feedback rows become training data for the learned router
(`outcomes`): a rated answer says whether its tier was good enough.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from .db import Database
from .models import Feedback, RoutedResponse, utcnow

_FIELDS = ("id", "endpoint", "key_id", "kind", "request", "prompt", "tier", "tier_index", "content", "status",
           "latest_tier", "latest_content", "similarity", "created_at", "updated_at")


#: statuses of work under way, and what they become when that work was interrupted
UNFINISHED = {"checking": "check_failed", "improving": "improve_failed"}


def _row(r: RoutedResponse) -> dict[str, Any]:
    return {name: getattr(r, name) for name in _FIELDS}


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save_many(self, rows: list[dict[str, Any]]) -> None:
        with self.db.session() as s:
            for row in rows:
                s.merge(RoutedResponse(**row))

    def get(self, response_id: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            r = s.get(RoutedResponse, response_id)
            return _row(r) if r is not None else None

    def update(self, response_id: str, **values: Any) -> None:
        values["updated_at"] = utcnow()
        with self.db.session() as s:
            s.execute(update(RoutedResponse).where(RoutedResponse.id == response_id).values(**values))

    def fail_unfinished(self, older_than: timedelta) -> int:
        """Mark answers whose check or escalation was left running by a gateway that died (not updated for
        ``older_than``) as failed; how many. ``checking`` becomes ``check_failed``, ``improving``
        ``improve_failed``."""
        cutoff = utcnow() - older_than
        changed = 0
        with self.db.session() as s:
            for status, failed in UNFINISHED.items():
                result = s.execute(update(RoutedResponse)
                                   .where(RoutedResponse.status == status, RoutedResponse.updated_at < cutoff)
                                   .values(status=failed, updated_at=utcnow()))
                changed += result.rowcount or 0
        return changed

    def recent_prompts(self, endpoint: str, limit: int = 1000) -> list[str]:
        """The prompts of the endpoint's latest routed answers, newest first (for `router calibrate`)."""
        with self.db.session() as s:
            rows = s.execute(select(RoutedResponse.prompt).where(RoutedResponse.endpoint == endpoint)
                             .order_by(RoutedResponse.created_at.desc()).limit(limit)).scalars().all()
        return [p for p in rows if p]

    def add_feedback(self, *, response_id: str, endpoint: str, tier: str, rating: int, comment: str | None,
                     key_id: int | None) -> dict[str, Any]:
        with self.db.session() as s:
            fb = Feedback(response_id=response_id, endpoint=endpoint, tier=tier, rating=rating, comment=comment,
                          key_id=key_id, created_at=utcnow())
            s.add(fb)
            s.flush()
            return {"id": fb.id, "created_at": fb.created_at}

    def ratings(self, endpoint: str, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Ratings per tier: ``{tier: {"up": n, "down": n}}``."""
        q = select(Feedback.tier, Feedback.rating, func.count()).where(Feedback.endpoint == endpoint)
        if since is not None:
            q = q.where(Feedback.created_at >= since)
        out: dict[str, dict[str, int]] = {}
        with self.db.session() as s:
            for tier, rating, n in s.execute(q.group_by(Feedback.tier, Feedback.rating)):
                out.setdefault(tier, {"up": 0, "down": 0})["up" if rating > 0 else "down"] += n
        return out

    def outcomes(self, endpoint: str) -> list[dict[str, Any]]:
        """Training rows from feedback: ``prompt``, ``weak_correct``, ``strong_correct``.

        A rating of the cheapest tier's answer says whether the weak tier was
        right; a stronger tier's answer that was kept (rated up, or the
        improvement a down-rating asked for and that was not rated down) is
        taken as right. The latest rating of an answer counts.
        """
        with self.db.session() as s:
            q = (select(RoutedResponse.id, RoutedResponse.prompt, RoutedResponse.tier_index, Feedback.tier, Feedback.rating)
                 .join(Feedback, Feedback.response_id == RoutedResponse.id)
                 .where(RoutedResponse.endpoint == endpoint).order_by(Feedback.id))
            latest: dict[str, tuple[str, int, str, int]] = {}
            for rid, prompt, tier_index, tier, rating in s.execute(q):
                latest[rid] = (prompt, tier_index, tier, rating)
        rows = []
        for prompt, tier_index, _tier, rating in latest.values():
            if not prompt:
                continue
            if tier_index == 0:
                rows.append({"prompt": prompt, "weak_correct": rating > 0, "strong_correct": True})
            elif rating > 0:  # a stronger tier was needed and did well: the weak one is taken as not enough
                rows.append({"prompt": prompt, "weak_correct": False, "strong_correct": True})
        return rows
