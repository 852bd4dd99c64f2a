"""Usage records: written in batches by a background task, never on the request path.

Every request the gateway answers becomes one row of ``usage_records``. The
request must not wait for that row, so writing is split in two halves:

1. **Submit** (the request path). `UsageWriter.submit()` checks and completes
   the record (defaults, ``created_at`` in UTC, strings cut to their column
   width) and appends it to an in-memory `collections.deque`. That is all: no
   I/O, no lock, no await. It may be called from any thread.
2. **Write** (a background asyncio task started by `UsageWriter.start()`). The
   task wakes every ``flush_interval`` seconds, or as soon as ``batch_size``
   records are waiting, takes up to ``batch_size`` records off the queue and
   writes them with one bulk ``INSERT`` in a worker thread
   (`asyncio.to_thread`), so a slow disk or a busy database never blocks the
   event loop.

**Retry, not loss.** When a write fails because the database is unavailable
(SQLite busy past its timeout, Postgres restarting, a full disk), the batch
goes back to the front of the queue in its original order, a warning is
logged, and the next wake-up tries again. Records that arrive meanwhile queue
up behind it, up to ``max_pending``; past that, new records are dropped and
counted (``dropped``) rather than holding the gateway's memory hostage to a
database that does not come back.

**One bad row never blocks the others.** Records are checked and cleaned when
submitted (NUL characters, which PostgreSQL refuses in text and JSON, become
U+FFFD; strings are cut to their column). If a batch is still refused for
its content (the database rejects a value: a ``DataError``, ``IntegrityError``
and the like, not a lost connection), it is written again row by row and the
rows the database refuses are *quarantined*: counted (``quarantined``),
logged with their request id and the reason, and kept in `quarantine` (the
last 100) for inspection — never put back at the front of the queue, where
they would fail forever and hold every later record behind them.

**Flush on shutdown.** `UsageWriter.close()` stops the task and writes
everything still queued, retrying for a while if the database is briefly
unavailable, so a clean shutdown loses nothing. `UsageWriter.flush()` writes
the queue now (tests and the ``usage`` command use it to see fresh numbers).

Reading happens in the two functions at the end: `usage_summary()` (requests,
errors, tokens and cost per endpoint and day, aggregated in SQL) and
`recent_usage()` (the latest rows, for the UI and ``modelyard usage --tail``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, String, case, cast, func, insert, literal_column, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError

from .db import Database
from .models import USAGE_COLUMNS, USAGE_KINDS, UsageRecord, utcnow

log = logging.getLogger(__name__)

_TABLE = UsageRecord.__table__

#: Values used for columns a submitted record leaves out.
_DEFAULTS: dict[str, Any] = {
    "deployment": None,
    "model": None,
    "key_id": None,
    "stream": False,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cost_usd": 0.0,
    "latency_ms": 0.0,
    "ttft_ms": None,
    "status": 200,
    "error_code": None,
    "cache": None,
    "route": None,
    "batch_id": None,
    "saved_tokens": 0,
    "saved_usd": 0.0,
    "tiers": None,
    "parent_request_id": None,
    "trace": None,
}
_COLUMN_SET = frozenset(USAGE_COLUMNS)
#: Columns that may not be NULL: None given for one of them means "use the default".
_NOT_NULL_DEFAULTS = tuple(name for name in _DEFAULTS if not _TABLE.c[name].nullable)
_INTS = ("key_id", "prompt_tokens", "completion_tokens", "status", "saved_tokens")
_FLOATS = ("cost_usd", "latency_ms", "ttft_ms", "saved_usd")
#: String columns and their widths: longer values are cut so Postgres never rejects a batch.
_WIDTHS: dict[str, int] = {
    c.name: c.type.length for c in _TABLE.columns if isinstance(c.type, String) and c.type.length
}


def normalize_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check one usage record and fill in what it leaves out.

    ``endpoint`` (the endpoint name, or the requested model name when no
    endpoint matched) and ``kind`` (one of ``chat``, ``completion``,
    ``embedding``) are required. Every other column has a default:
    ``request_id`` a fresh uuid, ``created_at`` now in UTC, ``status`` 200,
    counters 0. Strings longer than their column are cut. Unknown keys and
    values of the wrong type raise `ValueError` (or `TypeError`) here, at the
    caller, rather than later in the background writer.
    """
    unknown = record.keys() - _COLUMN_SET
    if unknown:
        raise ValueError(f"unknown usage record fields: {', '.join(sorted(unknown))}")
    if record.get("endpoint") is None:  # "" is allowed: a request for a model name that was empty
        raise ValueError("usage record needs 'endpoint'")
    if record.get("kind") not in USAGE_KINDS:
        raise ValueError(f"usage record kind must be one of {', '.join(USAGE_KINDS)}, got {record.get('kind')!r}")

    row = {**_DEFAULTS, **record}
    for name in _INTS:
        if row[name] is not None:
            row[name] = int(row[name])
    for name in _FLOATS:
        if row[name] is not None:
            row[name] = float(row[name])
    for name in _NOT_NULL_DEFAULTS:
        if row[name] is None:  # e.g. a backend that reported no usage
            row[name] = _DEFAULTS[name]
    row["stream"] = bool(row["stream"])
    if not row.get("request_id"):
        row["request_id"] = uuid.uuid4().hex
    created_at = row.get("created_at")
    if created_at is None:
        row["created_at"] = utcnow()
    elif not isinstance(created_at, datetime):
        raise TypeError(f"usage record created_at must be a datetime, got {type(created_at).__name__}")
    for name, width in _WIDTHS.items():
        value = row[name]
        if value is not None:
            row[name] = _clean(str(value))[:width]
    for name in ("tiers", "trace"):
        if row[name] is not None:
            row[name] = _clean(row[name])
    return row


def _clean(value: Any) -> Any:
    """``value`` with NUL characters (refused by PostgreSQL's text and JSON types) replaced by U+FFFD,
    in strings and, recursively, in the keys and values of JSON lists and objects."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    return value


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or written right now (a lost or refused connection,
    a lock held too long, a full disk), as opposed to a bug or a value it refuses."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def refused_for_content(exc: BaseException) -> bool:
    """Whether the database refused a write because of what was written (a value it cannot store),
    as opposed to being unavailable (a lost or refused connection, a lock, a full disk), which passes."""
    return isinstance(exc, StatementError) and not database_unavailable(exc)


class UsageWriter:
    """Queue usage records in memory and write them to the database in batches.

    Use it from one event loop::

        writer = UsageWriter(db)
        await writer.start()
        writer.submit({"endpoint": "chat", "kind": "chat", "prompt_tokens": 12, ...})
        ...
        await writer.close()      # writes everything still queued

    ``written`` counts the records stored so far and ``failed_writes`` the
    batch writes that had to be retried; `pending` is the queue length;
    ``quarantined`` counts the records the database refused for their content
    (the last ones are in ``quarantine``) and ``dropped`` those that arrived
    while ``max_pending`` records already waited.
    """

    #: how many quarantined records are kept for inspection
    QUARANTINE_KEPT = 100

    def __init__(self, db: Database, *, flush_interval: float = 0.5, batch_size: int = 500,
                 max_pending: int = 200_000) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_pending < batch_size:
            raise ValueError("max_pending must be at least batch_size")
        self.db = db
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.written = 0
        self.failed_writes = 0
        self.quarantined = 0
        self.dropped = 0
        self.quarantine: deque[tuple[dict[str, Any], str]] = deque(maxlen=self.QUARANTINE_KEPT)
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._last_outage: BaseException | None = None

    @property
    def pending(self) -> int:
        """How many records wait to be written."""
        return len(self._pending)

    # -- the request path ---------------------------------------------------

    def submit(self, record: Mapping[str, Any]) -> None:
        """Queue one record (keys are ``usage_records`` columns); never blocks.

        Raises `ValueError` for a malformed record. Records submitted before
        `start()` are kept and written once the writer runs.
        """
        row = normalize_record(record)
        if self._closed:
            log.warning("usage record %s submitted after the writer closed; it will not be written", row["request_id"])
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage queue full (%d records wait for the database): %d records dropped so far",
                          len(self._pending), self.dropped)
            return
        self._pending.append(row)
        if len(self._pending) >= self.batch_size:
            self._poke()

    def _poke(self) -> None:
        """Wake the background task early (a full batch is waiting, or we are stopping)."""
        if self._wake is None or self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start the background writer on the running event loop (a second call does nothing)."""
        if self._task is not None and not self._task.done():
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._task = asyncio.create_task(self._run(), name="modelyard-usage-writer")
        log.debug("usage writer started (every %.2fs, batches of %d)", self.flush_interval, self.batch_size)

    async def flush(self) -> int:
        """Write every queued record now; return how many were written.

        If a write fails the exception propagates and the records stay queued.
        """
        return await self._write_pending(raise_errors=True)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the background task and write everything left, retrying for up to ``timeout`` seconds."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            self._poke()
            await task
        deadline = time.monotonic() + timeout
        delay = min(self.flush_interval, 0.5)
        while self._pending:
            await self._write_pending(raise_errors=False)
            if not self._pending or time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
        self._closed = True
        if self._pending:
            log.error("usage writer closed with %d records it could not write", len(self._pending))
        else:
            log.debug("usage writer closed; %d records written", self.written)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                break  # close() writes what is left
            try:
                await self._write_pending(raise_errors=False)
            except Exception:  # a bug, not a database error: keep the writer alive
                log.exception("usage writer loop failed; continuing")

    # -- writing ------------------------------------------------------------

    async def _write_pending(self, *, raise_errors: bool) -> int:
        """Write the queue in batches until it is empty or a write fails."""
        written = 0
        async with self._lock:
            while self._pending:
                count = min(self.batch_size, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
                try:
                    await asyncio.to_thread(self._write_batch, batch)
                except Exception as exc:
                    if refused_for_content(exc):
                        stored, rest = await asyncio.to_thread(self._write_rows, batch)
                        written += stored
                        self.written += stored
                        if not rest:
                            continue
                        batch, count = rest, len(rest)
                        exc = self._last_outage or exc
                    self._pending.extendleft(reversed(batch))
                    self.failed_writes += 1
                    if raise_errors:
                        raise exc
                    log.warning(
                        "could not write %d usage records (%s: %s); %d queued, retrying in %.1fs",
                        count, type(exc).__name__, exc, len(self._pending), self.flush_interval,
                    )
                    break
                written += count
                self.written += count
        return written

    def _write_batch(self, rows: list[dict[str, Any]]) -> None:
        """One bulk INSERT of ``rows`` in one transaction (runs in a worker thread)."""
        with self.db.engine.begin() as connection:
            connection.execute(insert(_TABLE), rows)

    def _write_rows(self, rows: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        """Write a batch the database refused row by row (in a worker thread), quarantining the rows it
        refuses for their content. Returns how many were stored and the rows left when the database
        became unavailable meanwhile (to go back to the queue)."""
        stored = 0
        self._last_outage = None
        for i, row in enumerate(rows):
            try:
                self._write_batch([row])
            except Exception as exc:
                if not refused_for_content(exc):
                    self._last_outage = exc
                    return stored, rows[i:]
                reason = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".splitlines()[0][:500]
                self.quarantined += 1
                self.quarantine.append((row, reason))
                log.error("usage record %s (endpoint %r) quarantined: the database refused it (%s)",
                          row.get("request_id"), row.get("endpoint"), reason)
                continue
            stored += 1
        return stored, []


# -- reading ----------------------------------------------------------------


def _day(db: Database, column: Any) -> ColumnElement[str]:
    """SQL for the UTC calendar day of ``column`` as 'YYYY-MM-DD'.

    Literals rather than bound parameters, so the same expression in SELECT and
    GROUP BY is recognised as one by Postgres.
    """
    if db.dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        return func.to_char(utc, literal_column("'YYYY-MM-DD'"))
    if db.dialect == "sqlite":
        return func.date(column)  # stored as naive UTC text
    return func.substr(cast(column, String), 1, 10)


def usage_summary(
    db: Database,
    *,
    since: datetime | None = None,
    group_by: str = "day",
    endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """Requests, errors, tokens and cost per endpoint, aggregated in SQL.

    ``group_by="day"`` (the default) gives one row per endpoint and UTC day,
    newest day first, then by endpoint::

        {"endpoint": "chat", "day": "2025-01-31", "requests": 120, "errors": 2,
         "prompt_tokens": 5400, "completion_tokens": 9100, "cost_usd": 0.0123,
         "avg_latency_ms": 812.5, "cache_hits": 30}

    ``group_by="endpoint"`` gives one row per endpoint (no ``day``), by name.
    A flow's row (``kind`` ``flow``) sums the tokens and cost of its steps, whose
    own rows are under their endpoints: add rows across endpoints with that in mind.
    An error is a record whose status is 400 or more; a cache hit is
    ``cache`` is ``hit`` or ``semantic-hit``. ``since`` and ``endpoint`` filter the records.
    """
    if group_by not in ("day", "endpoint"):
        raise ValueError("group_by must be 'day' or 'endpoint'")
    t = _TABLE.c
    columns: list[Any] = [t.endpoint.label("endpoint")]
    keys: list[Any] = [t.endpoint]
    day = _day(db, t.created_at)
    if group_by == "day":
        columns.append(day.label("day"))
        keys.append(day)
    columns += [
        func.count().label("requests"),
        func.sum(case((t.status >= 400, 1), else_=0)).label("errors"),
        func.sum(t.prompt_tokens).label("prompt_tokens"),
        func.sum(t.completion_tokens).label("completion_tokens"),
        func.sum(t.cost_usd).label("cost_usd"),
        func.avg(t.latency_ms).label("avg_latency_ms"),
        func.sum(case((t.cache.in_(("hit", "semantic-hit")), 1), else_=0)).label("cache_hits"),
    ]
    query = select(*columns).group_by(*keys)
    query = query.order_by(day.desc(), t.endpoint) if group_by == "day" else query.order_by(t.endpoint)
    if since is not None:
        query = query.where(t.created_at >= since)
    if endpoint is not None:
        query = query.where(t.endpoint == endpoint)
    with db.engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [_summary_row(row) for row in rows]


def _summary_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "cache_hits"):
        out[name] = int(out[name] or 0)
    out["cost_usd"] = float(out["cost_usd"] or 0.0)
    out["avg_latency_ms"] = float(out["avg_latency_ms"] or 0.0)
    return out


def recent_usage(db: Database, limit: int = 100, endpoint: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` usage records (all columns, ``created_at`` aware UTC), newest first."""
    query = select(_TABLE).order_by(_TABLE.c.created_at.desc(), _TABLE.c.id.desc()).limit(max(0, int(limit)))
    if endpoint is not None:
        query = query.where(_TABLE.c.endpoint == endpoint)
    with db.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings().all()]
