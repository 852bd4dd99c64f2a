"""UsageWriter: records are queued on the request path and written in batches, none lost."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from modelyard.store import Database, UsageWriter, normalize_record, recent_usage, usage_summary
from modelyard.store.models import UsageRecord


def _count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(UsageRecord))


def _record(i: int = 0, **fields) -> dict:
    return {
        "request_id": f"req-{i}",
        "endpoint": "chat",
        "deployment": "blue",
        "model": "gemma-3-270m",
        "kind": "chat",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost_usd": 0.001,
        "latency_ms": 100.0,
        "status": 200,
        **fields,
    }


async def _wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_thousand_records_are_all_written_by_close(any_db):
    async def scenario():
        writer = UsageWriter(any_db, flush_interval=0.05, batch_size=128)
        await writer.start()
        for i in range(1000):
            writer.submit(_record(i))
        await writer.close()
        return writer

    writer = asyncio.run(scenario())

    assert _count(any_db) == 1000
    assert writer.written == 1000 and writer.pending == 0
    with any_db.session() as session:
        ids = session.scalars(select(UsageRecord.request_id)).all()
    assert len(set(ids)) == 1000


def test_submit_only_queues_and_never_touches_the_database(db):
    writer = UsageWriter(db)
    for i in range(10):
        writer.submit(_record(i))

    assert writer.pending == 10
    assert _count(db) == 0

    async def scenario():
        await writer.start()  # records queued before start are written too
        await writer.close()

    asyncio.run(scenario())
    assert _count(db) == 10


def test_the_background_task_writes_without_being_asked(db):
    async def scenario():
        writer = UsageWriter(db, flush_interval=0.02)
        await writer.start()
        writer.submit(_record())
        await _wait_until(lambda: writer.written == 1)
        assert _count(db) == 1
        await writer.close()

    asyncio.run(scenario())


def test_a_full_batch_is_written_before_the_interval_ends(db):
    async def scenario():
        writer = UsageWriter(db, flush_interval=60, batch_size=50)
        await writer.start()
        for i in range(50):
            writer.submit(_record(i))
        await _wait_until(lambda: writer.written == 50, timeout=5)
        await writer.close()

    asyncio.run(scenario())
    assert _count(db) == 50


def test_batches_are_written_off_the_event_loop_thread(db, monkeypatch):
    writer = UsageWriter(db)
    threads: list[int] = []
    original = writer._write_batch

    def spying_write(rows):
        threads.append(threading.get_ident())
        original(rows)

    monkeypatch.setattr(writer, "_write_batch", spying_write)

    async def scenario():
        await writer.start()
        writer.submit(_record())
        await writer.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert threads and loop_thread not in threads


def test_a_failed_batch_is_retried_and_nothing_is_lost(db, monkeypatch, caplog):
    writer = UsageWriter(db, flush_interval=0.02, batch_size=100)
    original = writer._write_batch
    attempts: list[int] = []

    def locked_once(rows):
        attempts.append(len(rows))
        if len(attempts) == 1:
            raise OperationalError("INSERT INTO usage_records", {}, Exception("database is locked"))
        original(rows)

    monkeypatch.setattr(writer, "_write_batch", locked_once)

    async def scenario():
        await writer.start()
        for i in range(250):
            writer.submit(_record(i))
        await _wait_until(lambda: writer.written == 250)
        await writer.close()

    with caplog.at_level(logging.WARNING, logger="modelyard.store.usage"):
        asyncio.run(scenario())

    assert writer.failed_writes == 1
    assert "database is locked" in caplog.text
    with db.session() as session:
        ids = session.scalars(select(UsageRecord.request_id).order_by(UsageRecord.id)).all()
    assert ids == [f"req-{i}" for i in range(250)]  # each once, in submission order


def test_flush_reports_a_failure_and_keeps_the_records(db, monkeypatch):
    writer = UsageWriter(db)
    writer.submit(_record())
    monkeypatch.setattr(writer, "_write_batch", lambda rows: (_ for _ in ()).throw(OSError("disk full")))

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(writer.flush())
    assert writer.pending == 1

    monkeypatch.undo()
    assert asyncio.run(writer.flush()) == 1
    assert _count(db) == 1


def test_close_waits_out_a_briefly_unavailable_database(db, monkeypatch):
    writer = UsageWriter(db, flush_interval=0.02)
    original = writer._write_batch
    failures = iter([True, True, False])

    def flaky(rows):
        if next(failures, False):
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        original(rows)

    async def scenario():
        await writer.start()
        writer.submit(_record())
        monkeypatch.setattr(writer, "_write_batch", flaky)
        await writer.close(timeout=5)

    asyncio.run(scenario())
    assert _count(db) == 1 and writer.pending == 0


def test_records_are_checked_and_completed_when_submitted():
    row = normalize_record({"endpoint": "chat", "kind": "embedding", "prompt_tokens": "7", "completion_tokens": None,
                            "status": None, "error_code": "x" * 500})
    assert row["prompt_tokens"] == 7 and row["completion_tokens"] == 0
    assert row["status"] == 200 and row["stream"] is False
    assert len(row["request_id"]) == 32
    assert row["created_at"].tzinfo is timezone.utc
    assert len(row["error_code"]) == 64  # cut to the column width

    with pytest.raises(ValueError, match="unknown usage record fields: tokens"):
        normalize_record({"endpoint": "chat", "kind": "chat", "tokens": 3})
    with pytest.raises(ValueError, match="endpoint"):
        normalize_record({"kind": "chat"})
    with pytest.raises(ValueError, match="kind"):
        normalize_record({"endpoint": "chat", "kind": "image"})
    with pytest.raises(ValueError, match="kind"):
        normalize_record({"endpoint": "chat"})
    # A request for an empty model name still gets its line.
    assert normalize_record({"endpoint": "", "kind": "chat"})["endpoint"] == ""


def _seed(db: Database) -> datetime:
    """Two endpoints over two days; returns the later day's noon (UTC)."""
    day2 = datetime(2025, 3, 2, 12, 0, tzinfo=timezone.utc)
    day1 = day2 - timedelta(days=1)
    records = [
        _record(1, created_at=day1, prompt_tokens=1, completion_tokens=2, cost_usd=0.25, latency_ms=100),
        _record(2, created_at=day1 + timedelta(hours=11), prompt_tokens=3, completion_tokens=4, cost_usd=0.5,
                latency_ms=300, status=500, error_code="backend_crashed"),
        _record(3, created_at=day2, prompt_tokens=5, completion_tokens=6, cost_usd=1.0, latency_ms=50, cache="hit"),
        _record(4, endpoint="embed", kind="embedding", created_at=day2 + timedelta(hours=1), prompt_tokens=100,
                completion_tokens=0, cost_usd=0.0, latency_ms=10),
        # 23:30 in UTC-05:00 is already the next day in UTC.
        _record(5, endpoint="embed", kind="embedding", created_at=datetime(2025, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
                prompt_tokens=50, completion_tokens=0, cost_usd=0.0, latency_ms=30, status=429),
    ]
    writer = UsageWriter(db)
    for record in records:
        writer.submit(record)
    asyncio.run(writer.flush())
    return day2


def test_usage_summary_groups_by_endpoint_and_day(any_db):
    _seed(any_db)

    rows = usage_summary(any_db)

    assert [(r["day"], r["endpoint"]) for r in rows] == [
        ("2025-03-02", "chat"),
        ("2025-03-02", "embed"),
        ("2025-03-01", "chat"),
    ]
    assert rows[0] == pytest.approx({
        "endpoint": "chat", "day": "2025-03-02", "requests": 1, "errors": 0, "prompt_tokens": 5,
        "completion_tokens": 6, "cost_usd": 1.0, "avg_latency_ms": 50.0, "cache_hits": 1,
    })
    assert rows[1] == pytest.approx({
        "endpoint": "embed", "day": "2025-03-02", "requests": 2, "errors": 1, "prompt_tokens": 150,
        "completion_tokens": 0, "cost_usd": 0.0, "avg_latency_ms": 20.0, "cache_hits": 0,
    })
    assert rows[2] == pytest.approx({
        "endpoint": "chat", "day": "2025-03-01", "requests": 2, "errors": 1, "prompt_tokens": 4,
        "completion_tokens": 6, "cost_usd": 0.75, "avg_latency_ms": 200.0, "cache_hits": 0,
    })


def test_usage_summary_filters_and_totals_per_endpoint(any_db):
    day2 = _seed(any_db)
    midnight = day2.replace(hour=0)

    assert [(r["day"], r["endpoint"]) for r in usage_summary(any_db, since=midnight)] == [
        ("2025-03-02", "chat"),
        ("2025-03-02", "embed"),
    ]
    assert [r["requests"] for r in usage_summary(any_db, endpoint="chat")] == [1, 2]

    totals = usage_summary(any_db, group_by="endpoint")
    assert [(r["endpoint"], r["requests"], r["errors"]) for r in totals] == [("chat", 3, 1), ("embed", 2, 1)]
    assert totals[0]["cost_usd"] == pytest.approx(1.75)
    assert "day" not in totals[0]

    with pytest.raises(ValueError):
        usage_summary(any_db, group_by="week")


def test_recent_usage_is_newest_first_and_filterable(any_db):
    _seed(any_db)

    latest = recent_usage(any_db, limit=2)
    assert [r["request_id"] for r in latest] == ["req-4", "req-3"]
    assert latest[0]["created_at"] == datetime(2025, 3, 2, 13, 0, tzinfo=timezone.utc)
    assert latest[0]["kind"] == "embedding" and latest[0]["stream"] is False

    assert [r["request_id"] for r in recent_usage(any_db, endpoint="embed")] == ["req-4", "req-5"]
    assert recent_usage(any_db, endpoint="nobody") == []


# -- a record the database cannot store never blocks the others -----------------------------------


def test_nul_characters_are_stored_as_replacement_characters(any_db):
    """PostgreSQL refuses NUL in text and JSON; a model name sent as "x\\u0000" must not poison the writer."""
    writer = UsageWriter(any_db)
    writer.submit(_record(0, endpoint="x\x00", model="m\x00odel",
                          tiers=[{"deployment": "d\x00", "outcome": "answered", "n\x00": ["\x00"]}]))
    writer.submit(_record(1))
    assert asyncio.run(writer.flush()) == 2
    with any_db.session() as session:
        rows = session.scalars(select(UsageRecord).order_by(UsageRecord.id)).all()
        stored = [(r.endpoint, r.model, r.tiers) for r in rows]
    assert stored[0] == ("x\ufffd", "m\ufffdodel", [{"deployment": "d\ufffd", "outcome": "answered", "n\ufffd": ["\ufffd"]}])
    assert stored[1][0] == "chat"
    assert writer.quarantined == 0 and writer.pending == 0


def _refuse_endpoint(db: Database, name: str) -> None:
    """Make the database itself refuse rows for endpoint ``name`` (a trigger), as it would a value it cannot store."""
    from sqlalchemy import text

    with db.engine.begin() as connection:
        if db.engine.dialect.name == "sqlite":
            connection.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON usage_records "
                f"WHEN NEW.endpoint = '{name}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
        else:
            connection.execute(text(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.endpoint = '{name}' THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22000'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            connection.execute(text(
                "CREATE TRIGGER refuse BEFORE INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION refuse()"))


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_are_written(any_db, caplog):
    _refuse_endpoint(any_db, "poison")
    writer = UsageWriter(any_db, flush_interval=0.02, batch_size=10)

    async def scenario():
        await writer.start()
        for i in range(25):
            writer.submit(_record(i, endpoint="poison" if i in (3, 17) else "chat"))
        await _wait_until(lambda: writer.written == 23 and writer.quarantined == 2)
        writer.submit(_record(99))  # the writer keeps going afterwards
        await writer.close()

    with caplog.at_level(logging.ERROR, logger="modelyard.store.usage"):
        asyncio.run(scenario())

    with any_db.session() as session:
        ids = session.scalars(select(UsageRecord.request_id).order_by(UsageRecord.id)).all()
    assert ids == [f"req-{i}" for i in range(25) if i not in (3, 17)] + ["req-99"]
    assert writer.pending == 0 and writer.quarantined == 2
    assert [row["request_id"] for row, _ in writer.quarantine] == ["req-3", "req-17"]
    assert all("refused by the test" in reason for _, reason in writer.quarantine)
    assert "req-3" in caplog.text and "quarantined" in caplog.text


def test_an_outage_during_the_row_by_row_retry_puts_the_rest_back_in_order(db, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    writer = UsageWriter(db, batch_size=10)
    original = writer._write_batch
    outage = iter([True])

    def database(rows):
        if len(rows) > 1 and any(r["endpoint"] == "poison" for r in rows):
            raise IntegrityError("INSERT", {}, Exception("refused"))
        if rows[0]["endpoint"] == "poison":
            raise IntegrityError("INSERT", {}, Exception("refused"))
        if rows[0]["request_id"] == "req-5" and next(outage, False):
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        original(rows)

    monkeypatch.setattr(writer, "_write_batch", database)
    for i in range(8):
        writer.submit(_record(i, endpoint="poison" if i == 2 else "chat"))

    with pytest.raises(OperationalError):
        asyncio.run(writer.flush())
    assert writer.pending == 3  # req-5, 6, 7 wait; req-2 is quarantined, not queued
    assert writer.quarantined == 1
    assert asyncio.run(writer.flush()) == 3
    with db.session() as session:
        ids = session.scalars(select(UsageRecord.request_id).order_by(UsageRecord.id)).all()
    assert ids == [f"req-{i}" for i in (0, 1, 3, 4, 5, 6, 7)]


def test_a_database_that_stays_down_drops_records_past_the_bound_and_counts_them(db, monkeypatch):
    writer = UsageWriter(db, batch_size=10, max_pending=50)
    monkeypatch.setattr(writer, "_write_batch",
                        lambda rows: (_ for _ in ()).throw(OperationalError("INSERT", {}, Exception("down"))))
    for i in range(60):
        writer.submit(_record(i))
    assert writer.pending == 50 and writer.dropped == 10
    monkeypatch.undo()
    assert asyncio.run(writer.flush()) == 50
    assert _count(db) == 50
