"""The deployment event log: what happened to a deployment's instances, and when.

One row per event in ``deployment_events``:

| kind | written when | ``from_count`` → ``to_count`` | ``instance`` |
|---|---|---|---|
| ``scale_up`` | instances were added (a start, an autoscaling decision, a cold start, a PATCH) | yes | – |
| ``scale_down`` | instances were removed (drained first) or the deployment stopped | yes | – |
| ``instance_restarted`` | the supervisor restarted an instance whose process died or failed its checks | – | yes |
| ``instance_failed`` | an instance failed its health checks and was killed, or did not come back | – | yes |

The runtimes report through two hooks, ``on_scale(key, before, after,
reason)`` and ``on_instance(key, instance, kind, reason)``; `EventLog.attach`
sets them on a runtime. A hook only queues the event (it may be called on
the event loop, or on another thread by the Ray runtime); a worker thread
writes the queue, and every read writes it first, so a reader sees every
event reported before it asked.

The count of instances over time is read back from the scale events
(`EventLog.instance_series`): it is the metric series of a deployment's
instance count that the console charts, without a sampling table.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import insert, select

from .db import Database
from .models import DeploymentEvent, utcnow

log = logging.getLogger(__name__)

_TABLE = DeploymentEvent.__table__

SCALE_KINDS = ("scale_up", "scale_down")
INSTANCE_KINDS = ("instance_restarted", "instance_failed")
KINDS = SCALE_KINDS + INSTANCE_KINDS
#: events kept in memory while the database cannot take them; older ones are dropped (and logged)
MAX_PENDING = 10_000
#: the most events one read returns
MAX_LIMIT = 1000


def _split(key: str) -> tuple[str, str]:
    endpoint, _, deployment = key.partition("/")
    return endpoint, deployment


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class EventLog:
    """Deployment events, queued by the runtimes' hooks and written by a thread; read back by deployment."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # guards `_pending` only: held for moments, also on the event loop
        self._writing = threading.Lock()  # one writer at a time (a thread), never on the event loop
        self._tasks: set[asyncio.Future[Any]] = set()
        self.dropped = 0

    # -- writing ------------------------------------------------------------

    def attach(self, runtime: Any) -> None:
        """Listen to a runtime: every runtime with an ``on_scale`` (and ``on_instance``) hook reports here."""
        if hasattr(runtime, "on_scale"):
            runtime.on_scale = self.scaled
        if hasattr(runtime, "on_instance"):
            runtime.on_instance = self.instance_event

    def scaled(self, key: str, before: int, after: int, reason: str) -> None:
        """The ``on_scale`` hook: deployment ``endpoint/name`` went from `before` to `after` instances."""
        endpoint, deployment = _split(key)
        self.record(endpoint, deployment, "scale_up" if after > before else "scale_down",
                    from_count=before, to_count=after, reason=reason)

    def instance_event(self, key: str, instance: str, kind: str, reason: str) -> None:
        """The ``on_instance`` hook: `instance` was restarted or given up on."""
        endpoint, deployment = _split(key)
        self.record(endpoint, deployment, kind, instance=instance, reason=reason)

    def record(self, endpoint: str, deployment: str, kind: str, *, from_count: int | None = None,
               to_count: int | None = None, instance: str | None = None, reason: str = "") -> None:
        """Queue one event, stamped now, and have it written soon (on a thread; safe from any thread)."""
        if kind not in KINDS:
            raise ValueError(f"unknown deployment event kind {kind!r}; one of {', '.join(KINDS)}")
        row = {"created_at": utcnow(), "endpoint": endpoint, "deployment": deployment, "kind": kind,
               "from_count": from_count, "to_count": to_count, "instance": instance, "reason": reason}
        log.info("deployment %s/%s: %s%s%s", endpoint, deployment, kind,
                 f" {from_count} -> {to_count}" if from_count is not None else f" {instance}", f" ({reason})" if reason else "")
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(row)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another thread (or no loop at all): write here
            self.flush()
            return
        task = loop.create_task(asyncio.to_thread(self.flush))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def flush(self) -> None:
        """Write the queued events (blocking). A database error keeps them queued for the next try."""
        with self._writing:
            with self._lock:
                rows = list(self._pending)
            if not rows:
                return
            try:
                with self.db.session() as session:
                    session.execute(insert(_TABLE), rows)
            except Exception as exc:
                log.warning("could not write %d deployment event(s) (%s: %s); will try again",
                            len(rows), type(exc).__name__, exc)
                return
            with self._lock:  # the rows written are the oldest queued; a full queue may have dropped some meanwhile
                for row in rows:
                    if self._pending and self._pending[0] is row:
                        self._pending.popleft()

    async def close(self) -> None:
        """Write what is queued (call before the database closes)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.flush)

    # -- reading ------------------------------------------------------------

    def list(self, endpoint: str, deployment: str, *, limit: int = 100, since: datetime | None = None,
             kinds: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The deployment's latest `limit` events (since `since`), oldest first::

            [{"time": "2026-12-07T23:40:02.1+00:00", "endpoint": "chat", "deployment": "blue",
              "kind": "scale_up", "from": 1, "to": 2, "instance": None,
              "reason": "load 7.5 wants 2 (target_in_flight 4) for 10s"}, ...]
        """
        self.flush()
        t = _TABLE.c
        query = select(_TABLE).where(t.endpoint == endpoint, t.deployment == deployment)
        if since is not None:
            query = query.where(t.created_at >= _aware(since))
        if kinds:
            query = query.where(t.kind.in_(kinds))
        query = query.order_by(t.created_at.desc(), t.id.desc()).limit(max(1, min(limit, MAX_LIMIT)))
        with self.db.session() as session:
            rows = [DeploymentEvent(**row._mapping) for row in session.execute(query)]
        return [_describe(row) for row in reversed(rows)]

    def has_events(self, endpoint: str, deployment: str) -> bool:
        self.flush()
        t = _TABLE.c
        query = select(t.id).where(t.endpoint == endpoint, t.deployment == deployment).limit(1)
        with self.db.engine.connect() as connection:
            return connection.execute(query).first() is not None

    def instance_series(self, endpoint: str, *, since: datetime, until: datetime, bucket_s: int,
                        current: dict[str, int]) -> dict[str, list[int | None]]:
        """Each deployment's instance count per bucket: the most instances it had at any moment of the bucket.

        Buckets are those of `modelyard.store.metrics` (whole multiples of ``bucket_s`` since the epoch,
        covering ``[since, until)``). The count comes from the scale events: before a deployment's first
        event in the window it is the ``to`` of its last earlier event (or the ``from`` of its first event
        in the window); a deployment with no event at all has its `current` count throughout. ``None``
        where nothing is known (no instances recorded yet).
        """
        self.flush()
        since, until = _aware(since), _aware(until)
        t = _TABLE.c
        first = math.floor(since.timestamp() / bucket_s)
        count = max(1, math.ceil(until.timestamp() / bucket_s) - first)
        with self.db.engine.connect() as connection:
            window = connection.execute(
                select(t.deployment, t.created_at, t.from_count, t.to_count)
                .where(t.endpoint == endpoint, t.kind.in_(SCALE_KINDS), t.created_at >= since, t.created_at < until)
                .order_by(t.created_at, t.id)).all()
            names = sorted(set(current) | {row.deployment for row in window})
            before: dict[str, int | None] = {}
            for name in names:
                before[name] = connection.execute(
                    select(t.to_count)
                    .where(t.endpoint == endpoint, t.deployment == name, t.kind.in_(SCALE_KINDS), t.created_at < since)
                    .order_by(t.created_at.desc(), t.id.desc()).limit(1)).scalar()
        out: dict[str, list[int | None]] = {}
        for name in names:
            events = [row for row in window if row.deployment == name]
            level = before[name]
            if level is None:
                level = events[0].from_count if events else current.get(name)
            series: list[int | None] = []
            pending = deque(events)
            for i in range(count):
                end = (first + i + 1) * bucket_s
                peak = level
                while pending and _aware(pending[0].created_at).timestamp() < end:
                    level = pending.popleft().to_count
                    peak = level if peak is None else max(peak, level or 0)
                series.append(peak)
            out[name] = series
        return out


def _describe(row: DeploymentEvent) -> dict[str, Any]:
    return {"time": _aware(row.created_at).isoformat(), "endpoint": row.endpoint, "deployment": row.deployment,
            "kind": row.kind, "from": row.from_count, "to": row.to_count, "instance": row.instance,
            "reason": row.reason}
