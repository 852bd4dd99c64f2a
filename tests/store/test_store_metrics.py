"""Monitoring numbers from usage records: buckets, status classes, percentiles, mirrored calls.

Rows with known values are written straight into a fresh database (SQLite,
and Postgres where MODELYARD_TEST_POSTGRES_URL names one), spread over five
minutes; every number the console and the rollout controller read is
checked against values worked out by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert

from modelyard.store import Database, normalize_record
from modelyard.store.metrics import (
    parse_window,
    percentile,
    timeseries,
    timeseries_by_deployment,
    window_stats,
)
from modelyard.store.models import UsageRecord

T0 = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)
UNTIL = T0 + timedelta(minutes=5)


def _at(minute: int, second: float = 0.0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


def _row(created_at: datetime, **fields) -> dict:
    return {"endpoint": "chat", "deployment": "blue", "kind": "chat", "status": 200, "route": "split:blue",
            "created_at": created_at, **fields}


def _insert(db: Database, rows: list[dict]) -> None:
    with db.engine.begin() as connection:
        connection.execute(insert(UsageRecord.__table__), [normalize_record(r) for r in rows])


#: minute 0: four good calls; minute 1: nothing; minute 2: one of each failure; minute 3: shadow calls,
#: an embedding and a cache hit; minute 4: the last moment inside the window.
ROWS = [
    *[_row(_at(0, 10 * i), latency_ms=100.0 * (i + 1), ttft_ms=10.0 * (i + 1), prompt_tokens=10,
           completion_tokens=20, cost_usd=0.001, stream=i % 2 == 0) for i in range(4)],
    _row(_at(2, 1), status=200, latency_ms=1000.0, prompt_tokens=5, completion_tokens=50, cost_usd=0.002),
    _row(_at(2, 2), status=400, latency_ms=5.0, error_code="unsupported_value"),
    _row(_at(2, 3), status=499, latency_ms=50.0, completion_tokens=3, error_code="client_closed"),
    _row(_at(2, 4), status=429, latency_ms=1.0, error_code="deployment_at_capacity"),
    _row(_at(2, 5), status=503, latency_ms=2.0, error_code="deployment_unavailable"),
    _row(_at(3, 1), deployment="green", route="mirror:blue", latency_ms=700.0, completion_tokens=10, cost_usd=0.01),
    _row(_at(3, 2), deployment="green", route="mirror:blue", latency_ms=900.0, completion_tokens=10, cost_usd=0.01),
    _row(_at(3, 3), kind="embedding", latency_ms=50.0, prompt_tokens=7),
    _row(_at(3, 4), latency_ms=1.0, completion_tokens=20, cache="hit"),
    _row(_at(4, 59.999), latency_ms=10.0),
    # Outside the window, or another endpoint: never counted.
    _row(_at(0, -1), latency_ms=99999.0),
    _row(UNTIL, latency_ms=99999.0),
    _row(_at(1, 30), endpoint="other", latency_ms=99999.0),
]


@pytest.fixture
def usage_db(any_db) -> Database:
    _insert(any_db, ROWS)
    return any_db


def test_percentiles_are_nearest_rank_observed_values():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 95, 99, 100)] == [50, 90, 95, 99, 100]
    assert percentile([10, 20, 30, 40], 50) == 20
    assert percentile([10, 20, 30, 40], 90) == 40
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None


def test_every_minute_of_the_window_is_a_bucket_empty_ones_zero_filled(usage_db):
    data = timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL)
    assert (data["endpoint"], data["deployment"], data["bucket_s"]) == ("chat", None, 60)
    assert [p["t"] for p in data["series"]] == [_at(m).isoformat() for m in range(5)]
    assert [p["requests"] for p in data["series"]] == [4, 0, 5, 2, 1]
    empty = data["series"][1]
    assert empty["by_status"] == {"2xx": 0, "4xx": 0, "5xx": 0}
    assert empty["latency_ms"] == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert empty["ttft_ms"] is None and empty["tokens_per_s"] is None and empty["error_rate"] is None
    assert (empty["prompt_tokens"], empty["completion_tokens"], empty["cost_usd"]) == (0, 0, 0.0)


def test_a_bucket_has_latency_and_ttft_percentiles_tokens_and_cost(usage_db):
    first = timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL)["series"][0]
    assert first["latency_ms"] == {"p50": 200.0, "p90": 400.0, "p95": 400.0, "p99": 400.0}
    assert first["ttft_ms"] == {"p50": 20.0, "p95": 40.0}
    assert (first["prompt_tokens"], first["completion_tokens"]) == (40, 80)
    assert first["tokens_per_s"] == pytest.approx(80 / 1.0)  # 80 tokens over 0.1+0.2+0.3+0.4 s
    assert first["cost_usd"] == pytest.approx(0.004)
    assert first["requests_per_min"] == 4


def test_status_classes_and_error_rate_count_5xx_408_and_429_as_errors(usage_db):
    failures = timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL)["series"][2]
    assert failures["by_status"] == {"2xx": 1, "4xx": 3, "5xx": 1}  # 400, 429 and 499 (client closed) are 4xx
    assert failures["errors"] == 2  # 429 and 503; the caller's 400 and a client hanging up are not
    assert failures["error_rate"] == pytest.approx(0.4)
    # tokens/s only from the successful call: 50 tokens in 1 s.
    assert failures["tokens_per_s"] == pytest.approx(50.0)
    assert failures["completion_tokens"] == 53


def test_tokens_per_s_ignores_embeddings_and_cache_hits(usage_db):
    minute3 = timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL)["series"][3]
    assert minute3["requests"] == 2  # the embedding and the cache hit; the mirrored calls are apart
    assert minute3["tokens_per_s"] is None
    assert minute3["mirrored"] == 2


def test_totals_cover_the_window_and_leave_mirrored_calls_out(usage_db):
    totals = timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL)["totals"]
    assert totals["requests"] == 12 and totals["mirrored"] == 2
    assert totals["by_status"] == {"2xx": 8, "4xx": 3, "5xx": 1}
    assert totals["errors"] == 2 and totals["error_rate"] == pytest.approx(2 / 12)
    assert totals["requests_per_min"] == pytest.approx(12 / 5)
    assert totals["prompt_tokens"] == 40 + 5 + 7
    assert totals["completion_tokens"] == 80 + 50 + 3 + 20
    assert totals["cost_usd"] == pytest.approx(0.006)
    assert totals["latency_ms"]["p99"] == 1000.0  # nothing from outside the window (99999 ms)
    assert totals["tokens_per_s"] == pytest.approx((80 + 50) / (1.0 + 1.0 + 0.010))


def test_include_mirrored_counts_the_shadow_calls_too(usage_db):
    totals = timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL, include_mirrored=True)["totals"]
    assert totals["requests"] == 14 and totals["mirrored"] == 2
    assert totals["cost_usd"] == pytest.approx(0.026)


def test_a_mirrored_deployments_own_numbers_come_from_its_mirrored_calls(usage_db):
    live_only = timeseries(usage_db, endpoint="chat", deployment="green", since=T0, until=UNTIL)
    assert live_only["totals"]["requests"] == 0 and live_only["totals"]["mirrored"] == 2
    shadow = timeseries(usage_db, endpoint="chat", deployment="green", since=T0, until=UNTIL, include_mirrored=True)
    assert shadow["totals"]["requests"] == 2
    assert shadow["totals"]["latency_ms"]["p50"] == 700.0 and shadow["totals"]["latency_ms"]["p99"] == 900.0
    assert shadow["totals"]["tokens_per_s"] == pytest.approx(20 / 1.6)


def test_by_deployment_splits_one_query_and_includes_shadow_calls_of_a_shadow_deployment(usage_db):
    whole, per = timeseries_by_deployment(usage_db, endpoint="chat", since=T0, until=UNTIL,
                                          deployments=["blue", "green", "idle"])
    assert whole["totals"]["requests"] == 12
    assert sorted(per) == ["blue", "green", "idle"]
    assert per["blue"]["totals"]["requests"] == 12 and not per["blue"]["include_mirrored"]
    assert per["green"]["include_mirrored"] and per["green"]["totals"]["requests"] == 2
    assert per["idle"]["totals"]["requests"] == 0 and len(per["idle"]["series"]) == 5


def test_partial_buckets_report_rates_over_the_part_they_cover(usage_db):
    data = timeseries(usage_db, endpoint="chat", since=_at(0, 30), until=_at(2, 30))
    assert [p["t"] for p in data["series"]] == [_at(m).isoformat() for m in range(3)]
    first, _, last = data["series"]
    assert first["requests"] == 1 and first["requests_per_min"] == pytest.approx(2.0)  # 1 call in 30 s
    assert last["requests"] == 5 and last["requests_per_min"] == pytest.approx(10.0)


def test_larger_buckets_and_naive_datetimes_as_utc(usage_db):
    naive = T0.replace(tzinfo=None)
    data = timeseries(usage_db, endpoint="chat", since=naive, until=naive + timedelta(minutes=5), bucket_s=300)
    assert len(data["series"]) == 1 and data["series"][0]["requests"] == 12


def test_bad_windows_are_refused(usage_db):
    with pytest.raises(ValueError, match="bucket_s"):
        timeseries(usage_db, endpoint="chat", since=T0, until=UNTIL, bucket_s=0)
    with pytest.raises(ValueError, match="later"):
        timeseries(usage_db, endpoint="chat", since=UNTIL, until=T0)
    with pytest.raises(ValueError, match="buckets"):
        timeseries(usage_db, endpoint="chat", since=T0 - timedelta(days=7), until=UNTIL, bucket_s=1)


def test_window_stats_judges_a_deployment_over_an_interval(usage_db):
    blue = window_stats(usage_db, endpoint="chat", deployment="blue", since=T0, until=UNTIL)
    assert (blue["requests"], blue["errors"], blue["mirrored"]) == (12, 2, 0)
    assert blue["error_rate"] == pytest.approx(2 / 12)
    assert blue["by_status"] == {"2xx": 8, "4xx": 3, "5xx": 1}
    assert set(blue["latency_ms"]) == {"p50", "p95", "p99"} and blue["latency_ms"]["p99"] == 1000.0
    since_minute_2 = window_stats(usage_db, endpoint="chat", deployment="blue", since=_at(2), until=_at(3))
    assert since_minute_2["requests"] == 5 and since_minute_2["error_rate"] == pytest.approx(0.4)
    green = window_stats(usage_db, endpoint="chat", deployment="green", since=T0, include_mirrored=True)
    assert green["requests"] == 2 and green["error_rate"] == 0.0
    nothing = window_stats(usage_db, endpoint="chat", deployment="blue", since=UNTIL + timedelta(hours=1))
    assert nothing["requests"] == 0 and nothing["error_rate"] is None and nothing["latency_ms"]["p50"] is None


def test_timeseries_until_defaults_to_now(any_db):
    now = datetime.now(timezone.utc)
    _insert(any_db, [_row(now - timedelta(seconds=30), latency_ms=42.0)])
    data = timeseries(any_db, endpoint="chat", since=now - timedelta(minutes=10))
    assert data["totals"]["requests"] == 1 and data["totals"]["latency_ms"]["p50"] == 42.0
    assert 10 <= len(data["series"]) <= 12


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800), ("90s", 90)])
def test_parse_window(text, seconds):
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "0m", "-1h", "1w", "1.5h", "abc"])
def test_parse_window_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="window"):
        parse_window(text)
