"""Spend and savings by endpoint, key and day, and cache/router decisions over time (`store.spend`).

Rows with known costs and savings go straight into a fresh database (SQLite, and
Postgres where MODELYARD_TEST_POSTGRES_URL names one); the console's Usage &
cost page and its monitoring charts read exactly these numbers.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert

from modelyard.store import Database, normalize_record
from modelyard.store.keys import KeyStore
from modelyard.store.models import UsageRecord
from modelyard.store.spend import decision_series, spend_report

DAY1 = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(days=1)
TIERS = [{"deployment": "small", "outcome": "escalated"}, {"deployment": "large", "outcome": "answered"}]
KEPT = [{"deployment": "small", "outcome": "answered"}]


def _row(created_at: datetime, **fields) -> dict:
    return {"endpoint": "chat", "deployment": "small", "kind": "chat", "status": 200, "route": "split:small",
            "created_at": created_at, **fields}


def _insert(db: Database, rows: list[dict]) -> None:
    with db.engine.begin() as connection:
        connection.execute(insert(UsageRecord.__table__), [normalize_record(r) for r in rows])


@pytest.fixture
def filled(any_db: Database) -> tuple[Database, int, int]:
    keys = KeyStore(any_db)
    _, primary = keys.create("primary", "chat")
    _, other = keys.create("ci", None)
    _insert(any_db, [
        _row(DAY1, key_id=primary.id, cost_usd=0.010, prompt_tokens=100, completion_tokens=20),
        _row(DAY1 + timedelta(minutes=1), key_id=primary.id, cache="hit", cost_usd=0.0, saved_usd=0.010, saved_tokens=120),
        _row(DAY1 + timedelta(minutes=2), key_id=primary.id, cache="miss", cost_usd=0.004, route="router:cascade",
             deployment="large", tiers=TIERS, saved_usd=0.016),
        _row(DAY2, key_id=other.id, cost_usd=0.002, route="cascade:small", tiers=KEPT, saved_usd=0.008),
        _row(DAY2 + timedelta(minutes=1), key_id=other.id, cost_usd=0.001, batch_id="batch_1"),
        _row(DAY2 + timedelta(minutes=2), key_id=None, status=401, cost_usd=0.0),
        _row(DAY2, endpoint="embed", deployment="minilm", kind="embedding", key_id=other.id, cost_usd=0.0005),
        _row(DAY2, deployment="large", route="mirror:small", cost_usd=0.003, key_id=primary.id),
    ])
    return any_db, primary.id, other.id


def test_totals_split_savings_into_cache_and_router(filled):
    db, _, _ = filled
    report = spend_report(db, since=DAY1 - timedelta(hours=1), until=DAY2 + timedelta(hours=1))
    t = report["totals"]
    assert t["requests"] == 8 and t["errors"] == 1
    assert t["cost_usd"] == pytest.approx(0.0205)
    assert t["saved_usd"] == pytest.approx(0.034)
    assert t["cache_saved_usd"] == pytest.approx(0.010) and t["cache_hits"] == 1
    assert t["router_saved_usd"] == pytest.approx(0.024) and t["routed"] == 2
    assert t["baseline_usd"] == pytest.approx(0.0545)
    assert t["batch_requests"] == 1 and t["batch_cost_usd"] == pytest.approx(0.001)
    assert t["saved_tokens"] == 120


def test_by_endpoint_key_and_day(filled):
    db, primary, other = filled
    report = spend_report(db, since=DAY1 - timedelta(hours=1), until=DAY2 + timedelta(hours=1))
    assert [(r["endpoint"], round(r["cost_usd"], 6)) for r in report["by_endpoint"]] == [("chat", 0.02), ("embed", 0.0005)]
    keys = {r["key_id"]: r for r in report["by_key"]}
    assert keys[primary]["key_name"] == "primary" and keys[primary]["key_endpoint"] == "chat"
    assert keys[primary]["cost_usd"] == pytest.approx(0.017) and keys[primary]["cache_saved_usd"] == pytest.approx(0.01)
    assert keys[other]["requests"] == 3 and keys[other]["is_admin"] is False
    assert keys[None]["requests"] == 1 and keys[None]["key_name"] is None
    assert [r["day"] for r in report["by_day"]] == ["2025-03-02", "2025-03-01"]
    assert report["by_day"][1]["saved_usd"] == pytest.approx(0.026)


def test_window_and_endpoint_filter(filled):
    db, _, _ = filled
    day1 = spend_report(db, since=DAY1 - timedelta(hours=1), until=DAY1 + timedelta(hours=1))
    assert day1["totals"]["requests"] == 3
    embed = spend_report(db, since=DAY1, until=DAY2 + timedelta(hours=1), endpoint="embed")
    assert embed["totals"]["requests"] == 1 and embed["by_endpoint"][0]["endpoint"] == "embed"
    empty = spend_report(db, since=DAY2 + timedelta(days=5), until=DAY2 + timedelta(days=6))
    assert empty["totals"]["requests"] == 0 and empty["totals"]["cost_usd"] == 0.0 and empty["by_day"] == []


def test_decisions_per_bucket_cache_rate_tiers_and_escalations(filled):
    db, _, _ = filled
    out = decision_series(db, endpoint="chat", since=DAY1, until=DAY1 + timedelta(minutes=3), bucket_s=60)
    assert out["has_cache"] and out["has_router"]
    first, second, third = out["series"]
    assert first["requests"] == 1 and first["cache"] == {} and first["cache_hit_rate"] is None
    assert second["cache"] == {"hit": 1} and second["cache_hit_rate"] == 1.0
    assert third["cache_hit_rate"] == 0.0 and third["tiers"] == {"large": 1} and third["escalations"] == 1
    assert third["saved_usd"] == pytest.approx(0.016)
    later = decision_series(db, endpoint="chat", since=DAY2, until=DAY2 + timedelta(minutes=3), bucket_s=60)
    assert later["has_cache"] is False  # "off" and no cache value are not decisions
    assert later["series"][0]["tiers"] == {"small": 1} and later["series"][0]["escalations"] == 0
    assert sum(p["requests"] for p in later["series"]) == 3  # the mirrored copy is left out
