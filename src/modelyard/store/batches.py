"""Batch jobs in the database: files, jobs and the state of every input line.

`BatchStore` is the persistence half of `modelyard.batch`. Everything a job
needs to resume after a crash is here:

- ``batch_files`` rows describe stored files (the bytes are on disk, see
  `batch.files.FileStore`);
- a ``batch_jobs`` row holds the OpenAI Batch object's fields, the Azure-ML
  settings and the line counters;
- one ``batch_lines`` row per input line holds its request and, once it ran,
  its result.

The one write that matters for durability is `commit_results()`: the results
of a mini-batch of lines, their usage records and the job's counters change
in **one transaction**. A line is therefore either pending (it runs again
after a restart) or finished with its usage recorded, never both, never
twice::

    store = BatchStore(db)
    job = store.create_job(JobRecord(id="batch_1", endpoint="/v1/chat/completions", input_file_id="file-1", ...))
    store.start_job(job.id, lines)            # validated lines, status in_progress
    for line in store.pending_lines(job.id, after=0, limit=16): ...
    store.commit_results(job.id, results, usage_rows)

Strings from clients reach fixed-width columns (``filename`` 255, ids and names 64): the API checks them
against `WIDTHS` and `storable()` before they get here, since SQLite would keep a longer value and PostgreSQL
refuse it. What comes from an upstream (a line's ``error_code``) is cut to fit instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from .db import Database
from .models import BatchFile, BatchJob, BatchLine, UsageRecord, utcnow

log = logging.getLogger(__name__)

#: Every status a job can have, as OpenAI names them.
JOB_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled")
#: Statuses a job never leaves.
FINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
#: The moments a job records (``<event>_at``).
EVENTS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
#: The widths of the string columns a client's values reach, by ``table.column``.
WIDTHS = {f"{table.name}.{c.name}": c.type.length for table in (BatchFile.__table__, BatchJob.__table__)
          for c in table.columns if getattr(c.type, "length", None)}
#: file and batch ids (``batch_files.id``, ``batch_jobs.id``)
ID_WIDTH = WIDTHS["batch_files.id"]


def storable(text: str, width: int) -> bool:
    """Whether a column of ``width`` characters holds ``text`` on every database: PostgreSQL refuses a longer
    value and any NUL character (SQLite would keep both)."""
    return len(text) <= width and "\x00" not in text


@dataclass
class FileRecord:
    """A stored file's row."""

    id: str
    filename: str
    purpose: str
    bytes: int
    owner_key_id: int | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass
class JobRecord:
    """A job's row; see `models.BatchJob` for the meaning of each field."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str = "24h"
    model: str | None = None
    deployment: str | None = None
    status: str = "validating"
    mini_batch_size: int = 10
    max_retries: int = 3
    error_threshold: int = -1
    output_action: str = "append_row"
    max_share: float | None = None
    meta: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    owner_key_id: int | None = None
    output_expires_after_s: int | None = None
    engine: str = "local"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class LineRecord:
    """One input line; ``state`` and the result fields change when it has run."""

    line: int
    custom_id: str
    kind: str
    body: str
    state: str = "pending"
    attempts: int = 0
    status_code: int | None = None
    request_id: str | None = None
    response: str | None = None
    error_code: str | None = None
    finished_at: datetime | None = None
    id: int | None = None


@dataclass
class LineResult:
    """What running one line gave: written by `BatchStore.commit_results`."""

    line_id: int
    state: str  # succeeded | failed
    attempts: int
    status_code: int | None
    request_id: str | None
    response: str | None
    error_code: str | None = None
    #: the usage records of every attempt (normalized, see `store.usage.normalize_record`)
    usage: list[dict[str, Any]] = field(default_factory=list)


_FILE_FIELDS = tuple(f.name for f in fields(FileRecord))
_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))
_LINE_FIELDS = tuple(f.name for f in fields(LineRecord))


def _file(row: BatchFile) -> FileRecord:
    return FileRecord(**{name: getattr(row, name) for name in _FILE_FIELDS})


def _job(row: BatchJob) -> JobRecord:
    return JobRecord(**{name: getattr(row, name) for name in _JOB_FIELDS})


class BatchStore:
    """Create, change and read batch files, jobs and lines."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- files --------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> FileRecord:
        record.created_at = record.created_at or utcnow()
        with self.db.session() as session:
            session.add(BatchFile(**{name: getattr(record, name) for name in _FILE_FIELDS}))
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        with self.db.session() as session:
            row = session.get(BatchFile, file_id)
            return None if row is None else _file(row)

    def list_files(self, *, purpose: str | None = None, owner_key_id: int | None = None, order: str = "desc",
                   limit: int = 10_000, after: str | None = None) -> tuple[list[FileRecord], bool]:
        """Files by creation time (``order`` asc or desc), after the file ``after``; and whether more follow."""
        query = select(BatchFile)
        if purpose is not None:
            query = query.where(BatchFile.purpose == purpose)
        if owner_key_id is not None:
            query = query.where(BatchFile.owner_key_id == owner_key_id)
        descending = order == "desc"
        if after is not None:
            anchor = self.get_file(after)
            if anchor is not None:
                key = (BatchFile.created_at, BatchFile.id)
                query = query.where(_beyond(key, (anchor.created_at, anchor.id), descending))
        keys = (BatchFile.created_at.desc(), BatchFile.id.desc()) if descending else (BatchFile.created_at, BatchFile.id)
        query = query.order_by(*keys).limit(limit + 1)
        with self.db.session() as session:
            rows = [_file(row) for row in session.scalars(query)]
        return rows[:limit], len(rows) > limit

    def delete_file(self, file_id: str, *, expired_by: datetime | None = None) -> bool:
        """Delete a file's row; with ``expired_by``, only if it expired by then and no unfinished job reads it
        (checked in the same statement, so a job that starts meanwhile keeps its input)."""
        query = delete(BatchFile).where(BatchFile.id == file_id)
        if expired_by is not None:
            query = query.where(BatchFile.expires_at <= expired_by, ~_read_by_unfinished_job())
        with self.db.session() as session:
            return session.execute(query).rowcount > 0

    def expired_files(self, now: datetime, *, limit: int = 500) -> list[str]:
        """Files past their ``expires_at`` that no unfinished job reads, oldest expiry first."""
        query = (select(BatchFile.id).where(BatchFile.expires_at <= now, ~_read_by_unfinished_job())
                 .order_by(BatchFile.expires_at, BatchFile.id).limit(limit))
        with self.db.session() as session:
            return list(session.scalars(query))

    def stored_by(self, owner_key_id: int, *, now: datetime | None = None) -> tuple[int, int]:
        """How many files, and how many bytes, key ``owner_key_id`` keeps (inputs and outputs; expired files,
        which the sweeper is about to remove, do not count)."""
        now = now or utcnow()
        query = select(func.count(), func.coalesce(func.sum(BatchFile.bytes), 0)).where(
            BatchFile.owner_key_id == owner_key_id, BatchFile.expires_at.is_(None) | (BatchFile.expires_at > now))
        with self.db.session() as session:
            count, size = session.execute(query).one()
        return int(count), int(size)

    def jobs_using(self, file_id: str) -> list[str]:
        """Unfinished jobs that read ``file_id`` as their input."""
        query = select(BatchJob.id).where(BatchJob.input_file_id == file_id, BatchJob.status.not_in(FINAL_STATUSES))
        with self.db.session() as session:
            return list(session.scalars(query))

    # --- jobs ---------------------------------------------------------------------

    def create_job(self, record: JobRecord) -> JobRecord:
        now = utcnow()
        record.created_at = record.created_at or now
        record.updated_at = now
        with self.db.session() as session:
            session.add(BatchJob(**{name: getattr(record, name) for name in _JOB_FIELDS}))
        log.info("batch %s created: %s, input %s", record.id, record.endpoint, record.input_file_id)
        return record

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.db.session() as session:
            row = session.get(BatchJob, job_id)
            return None if row is None else _job(row)

    def list_jobs(self, *, owner_key_id: int | None = None, limit: int = 20,
                  after: str | None = None) -> tuple[list[JobRecord], bool]:
        """Jobs newest first, after the job ``after``; and whether more follow."""
        query = select(BatchJob)
        if owner_key_id is not None:
            query = query.where(BatchJob.owner_key_id == owner_key_id)
        if after is not None:
            anchor = self.get_job(after)
            if anchor is not None:
                query = query.where(_beyond((BatchJob.created_at, BatchJob.id), (anchor.created_at, anchor.id), True))
        query = query.order_by(BatchJob.created_at.desc(), BatchJob.id.desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = [_job(row) for row in session.scalars(query)]
        return rows[:limit], len(rows) > limit

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs a starting gateway resumes, oldest first."""
        query = select(BatchJob).where(BatchJob.status.not_in(FINAL_STATUSES)).order_by(BatchJob.created_at, BatchJob.id)
        with self.db.session() as session:
            return [_job(row) for row in session.scalars(query)]

    def set_status(self, job_id: str, status: str, *, when: tuple[str, ...] | None = None,
                   files: tuple[FileRecord, ...] = (), **values: Any) -> JobRecord:
        """Move a job to ``status`` (stamping ``<status>_at``) and set other columns, in one transaction.

        With ``when``, only a job whose status is one of those moves (the job is returned as it is
        otherwise). ``files`` (a job's output files) are added in the same transaction, so a job
        never points at a file that does not exist, nor a crash leaves files no job points at.
        """
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown batch status {status!r}")
        now = utcnow()
        changes = {"status": status, "updated_at": now, **values}
        if status in EVENTS:
            changes.setdefault(f"{status}_at", now)
        query = update(BatchJob).where(BatchJob.id == job_id)
        if when is not None:
            query = query.where(BatchJob.status.in_(when))
        with self.db.session() as session:
            moved = session.execute(query.values(**changes)).rowcount
            if moved:
                for record in files:
                    record.created_at = record.created_at or now
                    session.add(BatchFile(**{name: getattr(record, name) for name in _FILE_FIELDS}))
            row = session.get(BatchJob, job_id)
            if row is None:
                raise KeyError(f"batch {job_id} does not exist")
            session.refresh(row)
            return _job(row)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Mark an unfinished job ``cancelling``; a finished one is returned unchanged. None: no such job."""
        now = utcnow()
        with self.db.session() as session:
            session.execute(update(BatchJob)
                            .where(BatchJob.id == job_id, BatchJob.status.in_(("validating", "in_progress")))
                            .values(status="cancelling", cancelling_at=now, updated_at=now))
            row = session.get(BatchJob, job_id)
            if row is None:
                return None
            session.refresh(row)
            return _job(row)

    # --- lines --------------------------------------------------------------------

    def start_job(self, job_id: str, lines: list[LineRecord], *, model: str | None = None) -> JobRecord:
        """Store the validated lines and move a ``validating`` job to ``in_progress``, in one transaction.

        Lines from an earlier, interrupted validation of the same job are replaced. A job that is
        no longer validating (cancelled meanwhile) is returned unchanged.
        """
        now = utcnow()
        table = BatchLine.__table__
        with self.db.session() as session:
            moved = session.execute(update(BatchJob).where(BatchJob.id == job_id, BatchJob.status == "validating").values(
                status="in_progress", in_progress_at=now, updated_at=now, total=len(lines), completed=0, failed=0,
                model=model)).rowcount
            if not moved:
                row = session.get(BatchJob, job_id)
                session.refresh(row)
                return _job(row)
            session.execute(delete(BatchLine).where(BatchLine.batch_id == job_id))
            for start in range(0, len(lines), 1000):
                chunk = lines[start:start + 1000]
                session.execute(insert(table), [
                    {"batch_id": job_id, **{name: getattr(line, name) for name in _LINE_FIELDS if name != "id"}}
                    for line in chunk])
            row = session.get(BatchJob, job_id)
            session.refresh(row)
            return _job(row)

    def pending_lines(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[LineRecord]:
        """The next pending lines after line number ``after``, in input order."""
        query = (select(BatchLine).where(BatchLine.batch_id == job_id, BatchLine.state == "pending",
                                         BatchLine.line > after)
                 .order_by(BatchLine.line).limit(limit))
        with self.db.session() as session:
            return [LineRecord(**{name: getattr(row, name) for name in _LINE_FIELDS}) for row in session.scalars(query)]

    def pending_count(self, job_id: str) -> int:
        query = select(func.count()).select_from(BatchLine).where(BatchLine.batch_id == job_id,
                                                                    BatchLine.state == "pending")
        with self.db.session() as session:
            return int(session.scalar(query) or 0)

    def commit_results(self, job_id: str, results: list[LineResult]) -> JobRecord:
        """Write finished lines, their usage records and the job's counters in one transaction.

        Only lines still pending are changed, so a result can never be counted twice.
        """
        now = utcnow()
        with self.db.session() as session:
            done = failed = 0
            usage: list[dict[str, Any]] = []
            for r in results:
                changed = session.execute(
                    update(BatchLine).where(BatchLine.id == r.line_id, BatchLine.state == "pending").values(
                        state=r.state, attempts=r.attempts, status_code=r.status_code,
                        request_id=_fit(r.request_id, _LINE_WIDTHS["request_id"]), response=r.response,
                        error_code=_fit(r.error_code, _LINE_WIDTHS["error_code"]), finished_at=now)).rowcount
                if not changed:
                    continue
                usage.extend(r.usage)
                if r.state == "succeeded":
                    done += 1
                else:
                    failed += 1
            if usage:
                session.execute(insert(UsageRecord.__table__), usage)
            session.execute(update(BatchJob).where(BatchJob.id == job_id).values(
                completed=BatchJob.completed + done, failed=BatchJob.failed + failed, updated_at=now))
            row = session.get(BatchJob, job_id)
            session.refresh(row)
            return _job(row)

    def lines(self, job_id: str, *, chunk: int = 1000) -> Iterator[LineRecord]:
        """Every line of a job in input order, read ``chunk`` rows at a time."""
        after = 0
        while True:
            query = (select(BatchLine).where(BatchLine.batch_id == job_id, BatchLine.line > after)
                     .order_by(BatchLine.line).limit(chunk))
            with self.db.session() as session:
                rows = [LineRecord(**{name: getattr(row, name) for name in _LINE_FIELDS}) for row in session.scalars(query)]
            if not rows:
                return
            yield from rows
            after = rows[-1].line

    def first_failures(self, job_id: str, limit: int = 3) -> list[LineRecord]:
        query = (select(BatchLine).where(BatchLine.batch_id == job_id, BatchLine.state == "failed")
                 .order_by(BatchLine.line).limit(limit))
        with self.db.session() as session:
            return [LineRecord(**{name: getattr(row, name) for name in _LINE_FIELDS}) for row in session.scalars(query)]

    # --- usage --------------------------------------------------------------------

    def usage(self, job_id: str) -> dict[str, Any]:
        """The job's requests (every attempt), tokens and cost, summed from its usage records."""
        t = UsageRecord.__table__.c
        query = select(func.count(), func.sum(t.prompt_tokens), func.sum(t.completion_tokens),
                       func.sum(t.cost_usd)).where(t.batch_id == job_id)
        with self.db.engine.connect() as connection:
            requests, prompt, completion, cost = connection.execute(query).one()
        return {"requests": int(requests or 0), "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0), "cost_usd": float(cost or 0.0)}


_LINE_WIDTHS = {c.name: c.type.length for c in BatchLine.__table__.columns if getattr(c.type, "length", None)}


def _fit(value: Any, width: int) -> str | None:
    """A value from an upstream (an error code) as a column of ``width`` holds it on any database: a string,
    NUL characters (refused by PostgreSQL) replaced by U+FFFD, cut to the width."""
    if value is None:
        return None
    return str(value).replace("\x00", "\ufffd")[:width]


def _read_by_unfinished_job() -> Any:
    """``EXISTS`` an unfinished job whose input is the ``batch_files`` row at hand."""
    return (select(BatchJob.id).where(BatchJob.input_file_id == BatchFile.id, BatchJob.status.not_in(FINAL_STATUSES))
            .exists())


def _beyond(keys: tuple[Any, Any], anchor: tuple[Any, Any], descending: bool) -> Any:
    """Rows strictly after ``anchor`` in (created_at, id) order (keyset pagination)."""
    (created, ident), (a_created, a_ident) = keys, anchor
    if descending:
        return (created < a_created) | ((created == a_created) & (ident < a_ident))
    return (created > a_created) | ((created == a_created) & (ident > a_ident))
