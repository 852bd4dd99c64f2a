"""Monitoring numbers read back from the usage records: time series and window stats.

The console, ``modelyard endpoint metrics`` and a rollout controller all ask
the same questions of ``usage_records``: per endpoint (or one deployment),
how many requests by status class, how fast, how many tokens, what cost —
per time bucket over a window, or for one interval at once.

**How it is computed.** One narrow SELECT per call, filtered in SQL by
endpoint (and deployment) and time — the table's ``(endpoint, created_at)``
index serves it — and the bucketing and percentiles done in Python. That is
the same code on SQLite and Postgres, and cheap enough for a self-hosted
gateway (a few hundred thousand rows a second).

**Definitions**, the same everywhere in this module:

- *buckets* start at whole multiples of ``bucket_s`` since the Unix epoch
  (UTC), so charts polled at different moments line up. The query window is
  ``[since, until)``; the first and last buckets may cover only part of it,
  and their ``requests_per_min`` is computed over the covered part only. Every
  bucket between is present, empty ones with zero counts and ``None``
  percentiles, so a chart has a continuous x axis.
- *status classes*: ``"5xx"`` is status >= 500, ``"4xx"`` is 400–499
  (including 499, a client that closed the connection), ``"2xx"`` anything
  lower.
- *errors* (and ``error_rate`` = errors / requests): status >= 500, or 408
  (timeout) or 429 (at capacity / rate limited). Those are the failures the
  service is to blame for; other 4xx are the caller's mistakes.
  ``error_rate`` is ``None`` when there were no requests.
- *percentiles* are nearest-rank on the sorted values: the p-th percentile of
  n values is the ``ceil(p/100 * n)``-th smallest (an actual observed value,
  never interpolated). Latency percentiles cover every request, errors
  included; TTFT percentiles cover the requests that reported one.
- *tokens_per_s*: completion tokens ÷ summed latency seconds, over successful
  (2xx) chat and completion calls that were not cache hits — the generation
  speed callers saw. ``None`` when there were no such calls.
- *mirrored calls* (``route`` starting with ``"mirror:"``) are shadow copies
  of live requests: their answers never reach a client. They are left out of
  every number unless ``include_mirrored``, and always counted on their own
  in ``mirrored``. A mirrored deployment's own numbers are its mirrored
  calls: pass ``include_mirrored=True`` for it, or use
  `timeseries_by_deployment`, which does that for a deployment that received
  only mirrored calls in the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from sqlalchemy import select

from .. import durations
from .db import Database
from .models import UsageRecord, utcnow

_TABLE = UsageRecord.__table__

#: Routes of mirrored (shadow) calls start with this.
MIRROR_PREFIX = "mirror:"
#: Statuses counted as errors besides every 5xx: request timeout and too many requests.
ERROR_STATUSES = frozenset({408, 429})
#: The most buckets one series may have (a guard against ``bucket_s=1`` over a week).
MAX_BUCKETS = 10_000

_LATENCY_PERCENTILES = (50, 90, 95, 99)
_TTFT_PERCENTILES = (50, 95)
_GENERATING_KINDS = frozenset({"chat", "completion"})


class _Row(NamedTuple):
    """The columns a metrics query reads, in SELECT order."""

    created_at: datetime
    deployment: str | None
    status: int
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    route: str | None
    kind: str
    cache: str | None


_COLUMNS = [_TABLE.c[name] for name in _Row._fields]


# -- small pure helpers -----------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``sorted_values`` (ascending), or None if empty.

    >>> percentile([10, 20, 30, 40], 50), percentile([10, 20, 30, 40], 95)
    (20, 40)
    """
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100 * n))
    return sorted_values[min(rank, n) - 1]


def status_class(status: int) -> str:
    """``"2xx"``, ``"4xx"`` or ``"5xx"`` (499, client closed, is a ``"4xx"``)."""
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    return "2xx"


def is_error(status: int) -> bool:
    """Whether a status counts towards ``error_rate``: any 5xx, 408 or 429."""
    return status >= 500 or status in ERROR_STATUSES


def is_mirrored(route: str | None) -> bool:
    """Whether a usage record's ``route`` marks a mirrored (shadow) call."""
    return bool(route) and route.startswith(MIRROR_PREFIX)  # type: ignore[union-attr]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


# -- aggregation ------------------------------------------------------------


class _Stats:
    """Running sums for one bucket (or a whole window); percentiles at the end."""

    __slots__ = ("requests", "by_status", "errors", "mirrored", "latencies", "ttfts", "prompt_tokens",
                 "completion_tokens", "cost", "gen_tokens", "gen_seconds")

    def __init__(self) -> None:
        self.requests = 0
        self.by_status = {"2xx": 0, "4xx": 0, "5xx": 0}
        self.errors = 0
        self.mirrored = 0
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost: list[float] = []
        self.gen_tokens = 0
        self.gen_seconds = 0.0

    def add(self, row: _Row) -> None:
        status = int(row.status)
        self.requests += 1
        self.by_status[status_class(status)] += 1
        if is_error(status):
            self.errors += 1
        latency = float(row.latency_ms or 0.0)
        self.latencies.append(latency)
        if row.ttft_ms is not None:
            self.ttfts.append(float(row.ttft_ms))
        self.prompt_tokens += int(row.prompt_tokens or 0)
        self.completion_tokens += int(row.completion_tokens or 0)
        self.cost.append(float(row.cost_usd or 0.0))
        if status < 300 and row.kind in _GENERATING_KINDS and row.cache not in ("hit", "semantic-hit"):
            self.gen_tokens += int(row.completion_tokens or 0)
            self.gen_seconds += latency / 1000

    def result(self, minutes: float) -> dict[str, Any]:
        self.latencies.sort()
        self.ttfts.sort()
        return {
            "requests": self.requests,
            "requests_per_min": self.requests / minutes if minutes > 0 else None,
            "by_status": dict(self.by_status),
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "mirrored": self.mirrored,
            "latency_ms": {f"p{p}": _ms(percentile(self.latencies, p)) for p in _LATENCY_PERCENTILES},
            "ttft_ms": ({f"p{p}": _ms(percentile(self.ttfts, p)) for p in _TTFT_PERCENTILES}
                        if self.ttfts else None),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": self.gen_tokens / self.gen_seconds if self.gen_seconds > 0 else None,
            "cost_usd": round(math.fsum(self.cost), 10),
        }


def _fetch(db: Database, *, endpoint: str, deployment: str | None, since: datetime,
           until: datetime | None) -> list[_Row]:
    """The narrow SELECT: one endpoint (and deployment), ``since <= created_at < until``."""
    t = _TABLE.c
    # Live traffic only: batch lines wait for spare capacity by design, and would skew latency and error rates.
    query = select(*_COLUMNS).where(t.endpoint == endpoint, t.created_at >= since, t.batch_id.is_(None))
    if until is not None:
        query = query.where(t.created_at < until)
    if deployment is not None:
        query = query.where(t.deployment == deployment)
    with db.engine.connect() as connection:
        return [_Row(*row) for row in connection.execute(query)]


def _window(since: datetime, until: datetime | None, bucket_s: int) -> tuple[datetime, datetime]:
    if bucket_s < 1:
        raise ValueError("bucket_s must be at least 1 second")
    since = _aware(since)
    until = _aware(until) if until is not None else utcnow()
    if until <= since:
        raise ValueError("until must be later than since")
    first = math.floor(since.timestamp() / bucket_s)
    last = math.ceil(until.timestamp() / bucket_s)
    if last - first > MAX_BUCKETS:
        raise ValueError(f"{last - first} buckets of {bucket_s}s is more than {MAX_BUCKETS}; use larger buckets")
    return since, until


def _series(rows: Iterable[_Row], *, endpoint: str, deployment: str | None, since: datetime, until: datetime,
            bucket_s: int, include_mirrored: bool) -> dict[str, Any]:
    """Bucket already-fetched rows (pure: no database)."""
    start_s, end_s = since.timestamp(), until.timestamp()
    first = math.floor(start_s / bucket_s)
    count = max(1, math.ceil(end_s / bucket_s) - first)
    buckets = [_Stats() for _ in range(count)]
    totals = _Stats()
    for row in rows:
        index = math.floor(_aware(row.created_at).timestamp() / bucket_s) - first
        if not 0 <= index < count:
            continue  # outside [since, until): the caller's rows were not filtered as asked
        mirrored = is_mirrored(row.route)
        if mirrored:
            buckets[index].mirrored += 1
            totals.mirrored += 1
            if not include_mirrored:
                continue
        buckets[index].add(row)
        totals.add(row)

    series = []
    for i, stats in enumerate(buckets):
        bucket_start = (first + i) * bucket_s
        covered_s = min(bucket_start + bucket_s, end_s) - max(bucket_start, start_s)
        point = {"t": datetime.fromtimestamp(bucket_start, timezone.utc).isoformat()}
        point.update(stats.result(covered_s / 60))
        series.append(point)
    return {
        "endpoint": endpoint,
        "deployment": deployment,
        "bucket_s": bucket_s,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "include_mirrored": include_mirrored,
        "series": series,
        "totals": totals.result((end_s - start_s) / 60),
    }


# -- the public readers -----------------------------------------------------


def timeseries(
    db: Database,
    *,
    endpoint: str,
    deployment: str | None = None,
    since: datetime,
    until: datetime | None = None,
    bucket_s: int = 60,
    include_mirrored: bool = False,
) -> dict[str, Any]:
    """Per-bucket request counts, latency, TTFT, tokens and cost of one endpoint (or one deployment).

    ``until`` defaults to now; naive datetimes are taken as UTC. Returns::

        {"endpoint": "chat", "deployment": None, "bucket_s": 60,
         "since": "...", "until": "...", "include_mirrored": False,
         "series": [{"t": "2025-01-31T12:00:00+00:00", "requests": 42, "requests_per_min": 42.0,
                     "by_status": {"2xx": 40, "4xx": 1, "5xx": 1}, "errors": 1, "error_rate": 0.0238,
                     "mirrored": 0,
                     "latency_ms": {"p50": 310.2, "p90": 820.0, "p95": 905.1, "p99": 1403.9},
                     "ttft_ms": {"p50": 45.0, "p95": 120.3},   # or None: no call reported one
                     "prompt_tokens": 2100, "completion_tokens": 5300, "tokens_per_s": 61.2,
                     "cost_usd": 0.0042}, ...],
         "totals": {...the same keys, without "t", over the whole window...}}

    The module docstring defines buckets, status classes, errors, percentiles,
    ``tokens_per_s`` and the treatment of mirrored calls. Raises `ValueError`
    for ``bucket_s < 1``, ``until <= since`` or more than `MAX_BUCKETS` buckets.
    """
    since, until = _window(since, until, bucket_s)
    rows = _fetch(db, endpoint=endpoint, deployment=deployment, since=since, until=until)
    return _series(rows, endpoint=endpoint, deployment=deployment, since=since, until=until, bucket_s=bucket_s,
                   include_mirrored=include_mirrored)


def timeseries_by_deployment(
    db: Database,
    *,
    endpoint: str,
    since: datetime,
    until: datetime | None = None,
    bucket_s: int = 60,
    deployments: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The endpoint's series and one series per deployment, from a single query.

    Returns ``(endpoint_series, {deployment: series})``. The endpoint series
    leaves mirrored calls out (it is what clients saw). A deployment's series
    includes its mirrored calls when it received only mirrored calls in the
    window (a shadow deployment's own numbers); otherwise it counts its live
    calls, with mirrored ones in ``mirrored``. Every name in ``deployments``
    (e.g. the ones running now) gets a series, zero-filled if it had no
    calls, besides every deployment that appears in the records. Records
    without a deployment (refused before one was chosen) count only towards
    the endpoint.
    """
    since, until = _window(since, until, bucket_s)
    rows = _fetch(db, endpoint=endpoint, deployment=None, since=since, until=until)
    whole = _series(rows, endpoint=endpoint, deployment=None, since=since, until=until, bucket_s=bucket_s,
                    include_mirrored=False)
    grouped: dict[str, list[_Row]] = {name: [] for name in deployments}
    for row in rows:
        if row.deployment:
            grouped.setdefault(row.deployment, []).append(row)
    per_deployment = {}
    for name in sorted(grouped):
        own = grouped[name]
        shadow_only = bool(own) and all(is_mirrored(row.route) for row in own)
        per_deployment[name] = _series(own, endpoint=endpoint, deployment=name, since=since, until=until,
                                       bucket_s=bucket_s, include_mirrored=shadow_only)
    return whole, per_deployment


def window_stats(
    db: Database,
    *,
    endpoint: str,
    deployment: str | None,
    since: datetime,
    until: datetime | None = None,
    include_mirrored: bool = False,
) -> dict[str, Any]:
    """Requests, errors and latency of one deployment (or the whole endpoint, ``deployment=None``) since a moment.

    What a rollout controller asks before shifting traffic: one query, no buckets::

        {"requests": 120, "errors": 1, "error_rate": 0.00833, "mirrored": 0,
         "by_status": {"2xx": 118, "4xx": 1, "5xx": 1},
         "latency_ms": {"p50": 300.1, "p95": 910.0, "p99": 1200.4}}

    ``error_rate`` and the percentiles are ``None`` when there were no
    requests: an empty interval is no evidence either way. Definitions are
    in the module docstring; pass ``include_mirrored=True`` to judge a
    deployment that only receives mirrored traffic.
    """
    since = _aware(since)
    until = _aware(until) if until is not None else None
    t = _TABLE.c
    query = select(t.status, t.latency_ms, t.route).where(t.endpoint == endpoint, t.created_at >= since)
    if until is not None:
        query = query.where(t.created_at < until)
    if deployment is not None:
        query = query.where(t.deployment == deployment)
    requests = errors = mirrored = 0
    by_status = {"2xx": 0, "4xx": 0, "5xx": 0}
    latencies: list[float] = []
    with db.engine.connect() as connection:
        for status, latency_ms, route in connection.execute(query):
            if is_mirrored(route):
                mirrored += 1
                if not include_mirrored:
                    continue
            requests += 1
            by_status[status_class(status)] += 1
            errors += is_error(status)
            latencies.append(float(latency_ms or 0.0))
    latencies.sort()
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "mirrored": mirrored,
        "by_status": by_status,
        "latency_ms": {f"p{p}": _ms(percentile(latencies, p)) for p in (50, 95, 99)},
    }


def parse_window(text: str) -> timedelta:
    """``"15m"``, ``"1h"``, ``"7d"``… as a `timedelta` (whole numbers; units s, m, h, d); `ValueError` otherwise."""
    try:
        return timedelta(seconds=durations.parse_duration(text, units=("s", "m", "h", "d"), whole=True, bare=None))
    except ValueError as exc:
        raise ValueError(f"window {text!r} is not a duration like 15m, 1h, 6h, 24h or 7d: {exc}") from None
