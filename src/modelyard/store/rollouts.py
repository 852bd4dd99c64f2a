"""Rollouts, kept in the database so that a gateway restarting mid-rollout knows about it.

`RolloutStore` is the persistence half of `serving.rollout`: it saves and
reads `RolloutRecord` values, plain dataclasses that the controller changes
and saves again after every event::

    store = RolloutStore(db)
    record = store.create(RolloutRecord(endpoint="chat", deployment="green", steps=[10, 50, 100],
                                        interval_s=60, max_error_rate=0.02, max_p95_ms=3000,
                                        from_traffic={"blue": 100}))
    store.active("chat")          # the running rollout of `chat`, or None
    store.list("chat")            # every rollout of `chat`, newest first

It knows nothing about traffic; deciding what a rollout does is the
controller's job.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .db import Database
from .models import Rollout, utcnow

log = logging.getLogger(__name__)

#: Every state a rollout can be in; only ``running`` is not final.
ROLLOUT_STATES = ("running", "succeeded", "rolled_back", "cancelled", "reverted")


@dataclass
class RolloutRecord:
    """One rollout as stored: its plan, its limits, where it is and what happened so far."""

    endpoint: str
    deployment: str
    steps: list[int]
    interval_s: float
    max_error_rate: float
    max_p95_ms: float
    from_traffic: dict[str, int]
    from_mirror: dict[str, int] = field(default_factory=dict)
    min_requests: int = 1
    current_step: int = -1
    step_started_at: datetime | None = None
    state: str = "running"
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def percent(self) -> int | None:
        """The new deployment's share at the current step, or None before the first."""
        return self.steps[self.current_step] if 0 <= self.current_step < len(self.steps) else None

    def describe(self) -> dict[str, Any]:
        """The record as JSON-ready data (datetimes as ISO 8601 strings)."""
        out = asdict(self)
        for name in ("step_started_at", "created_at", "updated_at", "finished_at"):
            value = out[name]
            out[name] = value.isoformat() if value is not None else None
        out["percent"] = self.percent
        return out


_COLUMNS = tuple(f.name for f in fields(RolloutRecord) if f.name != "id")


def _record(row: Rollout) -> RolloutRecord:
    return RolloutRecord(id=row.id, **{name: getattr(row, name) for name in _COLUMNS})


class RolloutStore:
    """Create, save and read rollouts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, record: RolloutRecord) -> RolloutRecord:
        """Insert a new rollout; returns it with ``id`` and timestamps filled in."""
        now = utcnow()
        record.created_at = record.created_at or now
        record.updated_at = now
        values = {name: _json_copy(getattr(record, name)) for name in _COLUMNS}
        with self.db.session() as session:
            row = Rollout(**values)
            session.add(row)
            session.flush()
            record.id = row.id
        log.info("rollout %s created: %s/%s steps %s", record.id, record.endpoint, record.deployment, record.steps)
        return record

    def save(self, record: RolloutRecord) -> RolloutRecord:
        """Write every field of an existing rollout (``updated_at`` becomes now)."""
        if record.id is None:
            raise ValueError("save() needs a rollout that was created first")
        record.updated_at = utcnow()
        with self.db.session() as session:
            row = session.get(Rollout, record.id)
            if row is None:
                raise KeyError(f"rollout {record.id} does not exist")
            for name in _COLUMNS:
                setattr(row, name, _json_copy(getattr(record, name)))
        return record

    def get(self, rollout_id: int) -> RolloutRecord | None:
        with self.db.session() as session:
            row = session.get(Rollout, rollout_id)
            return None if row is None else _record(row)

    def list(self, endpoint: str | None = None, *, limit: int = 100) -> list[RolloutRecord]:
        """Rollouts (of one endpoint, or all), newest first."""
        query = select(Rollout).order_by(Rollout.created_at.desc(), Rollout.id.desc()).limit(max(0, int(limit)))
        if endpoint is not None:
            query = query.where(Rollout.endpoint == endpoint)
        with self.db.session() as session:
            return [_record(row) for row in session.scalars(query)]

    def active(self, endpoint: str) -> RolloutRecord | None:
        """The endpoint's running rollout, or None (there is at most one)."""
        query = (select(Rollout).where(Rollout.endpoint == endpoint, Rollout.state == "running")
                 .order_by(Rollout.id.desc()))
        with self.db.session() as session:
            row = session.scalars(query).first()
            return None if row is None else _record(row)

    def running(self) -> list[RolloutRecord]:
        """Every running rollout, oldest first (what a starting gateway resumes)."""
        query = select(Rollout).where(Rollout.state == "running").order_by(Rollout.id)
        with self.db.session() as session:
            return [_record(row) for row in session.scalars(query)]


def _json_copy(value: Any) -> Any:
    """A fresh copy of JSON-ish values, so SQLAlchemy sees a changed list/dict as changed."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value
