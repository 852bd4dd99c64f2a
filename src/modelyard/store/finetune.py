"""Fine-tuning jobs in the database: jobs, their events and their checkpoints.

`FineTuneStore` is the persistence half of `modelyard.finetune`. A job's row
holds the OpenAI FineTuningJob fields and is all a restarted gateway needs to
go on: a ``queued`` job waits for its turn, a ``running`` one is started again
(its training process resumes from its newest checkpoint on disk). Status
changes are conditional (``when=``), so a job cancelled meanwhile is never
moved back to ``running`` or ``succeeded``; the event that tells of a change is
written in the same transaction as the change itself::

    store = FineTuneStore(db)
    store.create_job(JobRecord(id="ftjob-1", model="gemma-3-270m", fine_tuned_model="gemma-3-270m:ft-1a2b3c",
                               training_file="file-1", hyperparameters={"n_epochs": "auto"}, seed=7))
    store.set_status("ftjob-1", "queued", when=("validating_files",), event="Files validated.")
    store.add_event("ftjob-1", "Step 3/24: training loss=1.21", type="metrics", data={"step": 3, ...})
    store.events("ftjob-1", limit=20)            # newest first, as OpenAI lists them

Event and checkpoint ids are integers here and ``ftevent-<n>`` / ``ftckpt-<n>``
on the wire, so that ``after=`` pages by a plain comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .db import Database
from .models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob, utcnow

log = logging.getLogger(__name__)

#: Every status a job can have, as OpenAI names them.
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
#: Statuses a job never leaves.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: Statuses a job can be cancelled in.
ACTIVE_STATUSES = ("validating_files", "queued", "running")
#: The widths of the job's string columns a client's values reach.
WIDTHS = {c.name: c.type.length for c in FineTuningJob.__table__.columns if getattr(c.type, "length", None)}
#: the widest job id
ID_WIDTH = WIDTHS["id"]
EVENT_LEVELS = ("info", "warn", "error")
EVENT_TYPES = ("message", "metrics")


@dataclass
class JobRecord:
    """A job's row; see `models.FineTuningJob` for the meaning of each field."""

    id: str
    model: str
    fine_tuned_model: str
    training_file: str
    hyperparameters: dict[str, Any]
    seed: int
    status: str = "validating_files"
    validation_file: str | None = None
    method: str = "supervised"
    suffix: str | None = None
    meta: dict[str, str] | None = None
    training_examples: int | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    result_files: list[str] | None = None
    attempts: int = 0
    owner_key_id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    estimated_finish: datetime | None = None
    finished_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class EventRecord:
    id: int
    job_id: str
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None


@dataclass
class CheckpointRecord:
    id: int
    job_id: str
    step: int
    metrics: dict[str, Any]
    path: str
    fine_tuned_model_checkpoint: str
    created_at: datetime


_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))
_EVENT_FIELDS = tuple(f.name for f in fields(EventRecord))
_CHECKPOINT_FIELDS = tuple(f.name for f in fields(CheckpointRecord))


def _job(row: FineTuningJob) -> JobRecord:
    return JobRecord(**{name: getattr(row, name) for name in _JOB_FIELDS})


def _event(row: FineTuningEvent) -> EventRecord:
    return EventRecord(**{name: getattr(row, name) for name in _EVENT_FIELDS})


def _checkpoint(row: FineTuningCheckpoint) -> CheckpointRecord:
    return CheckpointRecord(**{name: getattr(row, name) for name in _CHECKPOINT_FIELDS})


class FineTuneStore:
    """Create, change and read fine-tuning jobs, events and checkpoints."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- jobs ---------------------------------------------------------------------

    def create_job(self, record: JobRecord, *, event: str | None = None) -> JobRecord:
        """Store a new job (and, with ``event``, its first event)."""
        now = utcnow()
        record.created_at = record.created_at or now
        record.updated_at = now
        with self.db.session() as session:
            session.add(FineTuningJob(**{name: getattr(record, name) for name in _JOB_FIELDS}))
            if event:
                session.add(FineTuningEvent(job_id=record.id, created_at=now, level="info", type="message",
                                            message=event))
        return record

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.db.session() as session:
            row = session.get(FineTuningJob, job_id)
            return None if row is None else _job(row)

    def list_jobs(self, *, owner_key_id: int | None = None, limit: int = 20,
                  after: str | None = None) -> tuple[list[JobRecord], bool]:
        """Jobs newest first, after the job ``after``; and whether more follow."""
        query = select(FineTuningJob)
        if owner_key_id is not None:
            query = query.where(FineTuningJob.owner_key_id == owner_key_id)
        if after is not None:
            anchor = self.get_job(after)
            if anchor is not None:
                created, ident = FineTuningJob.created_at, FineTuningJob.id
                query = query.where((created < anchor.created_at)
                                    | ((created == anchor.created_at) & (ident < anchor.id)))
        query = query.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = [_job(row) for row in session.scalars(query)]
        return rows[:limit], len(rows) > limit

    def jobs_in(self, *statuses: str) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first (the order they run in)."""
        query = (select(FineTuningJob).where(FineTuningJob.status.in_(statuses))
                 .order_by(FineTuningJob.created_at, FineTuningJob.id))
        with self.db.session() as session:
            return [_job(row) for row in session.scalars(query)]

    def update_job(self, job_id: str, *, when: tuple[str, ...] | None = None, event: str | None = None,
                   level: str = "info", **values: Any) -> tuple[JobRecord, bool]:
        """Set columns of a job in one transaction; with ``when``, only if its status is one of those.

        ``event`` (a message at ``level``) is written with the change, and only if it happened. Returns the
        job as it is now and whether it changed. A ``status`` among the values stamps ``started_at``
        (``running``) or ``finished_at`` (a final status) unless given.
        """
        status = values.get("status")
        if status is not None and status not in JOB_STATUSES:
            raise ValueError(f"unknown fine-tuning job status {status!r}")
        now = utcnow()
        if status == "running":
            values.setdefault("started_at", now)
        if status in FINAL_STATUSES:
            values.setdefault("finished_at", now)
            values.setdefault("estimated_finish", None)
        query = update(FineTuningJob).where(FineTuningJob.id == job_id)
        if when is not None:
            query = query.where(FineTuningJob.status.in_(when))
        with self.db.session() as session:
            moved = session.execute(query.values(updated_at=now, **values)).rowcount > 0
            if moved and event:
                session.add(FineTuningEvent(job_id=job_id, created_at=now, level=level, type="message", message=event))
            row = session.get(FineTuningJob, job_id)
            if row is None:
                raise KeyError(f"fine-tuning job {job_id} does not exist")
            session.refresh(row)
            return _job(row), moved

    def set_status(self, job_id: str, status: str, *, when: tuple[str, ...] | None = None, event: str | None = None,
                   level: str = "info", **values: Any) -> JobRecord:
        """Move a job to ``status`` (see `update_job`); the job as it is afterwards."""
        return self.update_job(job_id, when=when, event=event, level=level, status=status, **values)[0]

    def count_attempt(self, job_id: str) -> int:
        """One more training process started for the job; how many so far."""
        with self.db.session() as session:
            session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id)
                            .values(attempts=FineTuningJob.attempts + 1, updated_at=utcnow()))
            return int(session.scalar(select(FineTuningJob.attempts).where(FineTuningJob.id == job_id)) or 0)

    # --- events -------------------------------------------------------------------

    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                  data: dict[str, Any] | None = None) -> EventRecord:
        if level not in EVENT_LEVELS or type not in EVENT_TYPES:
            raise ValueError(f"unknown event level {level!r} or type {type!r}")
        with self.db.session() as session:
            row = FineTuningEvent(job_id=job_id, created_at=utcnow(), level=level, type=type, message=message,
                                  data=data)
            session.add(row)
            session.flush()
            return _event(row)

    def events(self, job_id: str, *, after: int | None = None, limit: int = 20) -> tuple[list[EventRecord], bool]:
        """A job's events newest first, those older than event ``after``; and whether more follow."""
        query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
        if after is not None:
            query = query.where(FineTuningEvent.id < after)
        query = query.order_by(FineTuningEvent.id.desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = [_event(row) for row in session.scalars(query)]
        return rows[:limit], len(rows) > limit

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The data of each step's metrics event, in step order (what a results file and a loss curve show).

        A step reported, lost with a killed process and trained again after the resume is reported twice; its
        newest report counts."""
        query = (select(FineTuningEvent.data).where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
                 .order_by(FineTuningEvent.id))
        with self.db.session() as session:
            rows = [data for data in session.scalars(query) if data]
        by_step: dict[Any, dict[str, Any]] = {}
        for data in rows:
            by_step.pop(data.get("step"), None)
            by_step[data.get("step")] = data
        return sorted(by_step.values(), key=lambda d: d.get("step") if isinstance(d.get("step"), int) else 0)

    # --- checkpoints --------------------------------------------------------------

    def add_checkpoint(self, job_id: str, *, step: int, metrics: dict[str, Any], path: str,
                       name: str) -> CheckpointRecord:
        """Record a checkpoint; one written again at the same step (a resumed run) replaces the first."""
        now = utcnow()
        values = {"metrics": metrics, "path": path, "fine_tuned_model_checkpoint": name, "created_at": now}
        with self.db.session() as session:
            changed = session.execute(update(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step == step).values(**values)).rowcount
            if not changed:
                try:
                    with session.begin_nested():
                        session.add(FineTuningCheckpoint(job_id=job_id, step=step, **values))
                except IntegrityError:  # added meanwhile by another writer: take its place
                    session.execute(update(FineTuningCheckpoint).where(
                        FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step == step).values(**values))
            row = session.scalars(select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step == step)).one()
            return _checkpoint(row)

    def checkpoints(self, job_id: str, *, after: int | None = None,
                    limit: int = 10) -> tuple[list[CheckpointRecord], bool]:
        """A job's checkpoints, latest step first, those listed after checkpoint ``after``; and whether more follow."""
        query = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
        if after is not None:
            anchor = select(FineTuningCheckpoint.step).where(FineTuningCheckpoint.id == after,
                                                             FineTuningCheckpoint.job_id == job_id).scalar_subquery()
            query = query.where(FineTuningCheckpoint.step < anchor)
        query = query.order_by(FineTuningCheckpoint.step.desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = [_checkpoint(row) for row in session.scalars(query)]
        return rows[:limit], len(rows) > limit

    def checkpoint_count(self, job_id: str) -> int:
        query = select(func.count()).select_from(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
        with self.db.session() as session:
            return int(session.scalar(query) or 0)
