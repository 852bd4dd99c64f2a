"""Work a gateway leaves running when it stops (speculative checks, feedback escalations, batch commits)
ends in a clear state and within a shutdown's grace."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from modelyard.batch import runner as batch_runner
from modelyard.batch.runner import BatchRunner
from modelyard.routing.responses import ResponseLog
from modelyard.store.models import RoutedResponse, utcnow
from modelyard.store.responses import ResponseStore
from modelyard.wire import ChatCompletionRequest
from tests.store.conftest import db, sqlite_url  # noqa: F401 - fixtures

ASK = ChatCompletionRequest.model_validate({"model": "routed", "messages": [{"role": "user", "content": "hi"}]})


def log_answer(log: ResponseLog, ident: str, *, checking: bool) -> None:
    log.answered(ident, endpoint="routed", key_id=1, request=ASK, kind="chat", tier="small", tier_index=0,
                 text="hello", checking=checking)


def test_a_stopping_gateway_marks_its_interrupted_checks_and_escalations_failed(db):
    store = ResponseStore(db)

    async def scenario():
        log = ResponseLog(store)
        await log.start()
        log_answer(log, "checked", checking=True)
        log_answer(log, "rated", checking=False)
        log_answer(log, "done", checking=False)
        await log.change("rated", status="improving")
        await log.interrupted()
        await log.close()

    asyncio.run(scenario())
    assert store.get("checked")["status"] == "check_failed"
    assert store.get("rated")["status"] == "improve_failed"
    assert store.get("done")["status"] == "answered"


def test_work_left_running_by_a_gateway_that_died_is_marked_failed_at_the_next_start(db):
    store = ResponseStore(db)

    async def before_the_crash():
        log = ResponseLog(store)
        log_answer(log, "old-check", checking=True)
        log_answer(log, "old-improve", checking=False)
        log_answer(log, "fresh-check", checking=True)
        await log.change("old-improve", status="improving")
        await log.flush()

    asyncio.run(before_the_crash())
    with db.session() as s:  # two of them last changed an hour ago
        s.execute(update(RoutedResponse).where(RoutedResponse.id.in_(["old-check", "old-improve"]))
                  .values(updated_at=utcnow() - timedelta(hours=1)))

    async def restart():
        log = ResponseLog(store)
        await log.start()
        await log.close()

    asyncio.run(restart())
    assert store.get("old-check")["status"] == "check_failed"
    assert store.get("old-improve")["status"] == "improve_failed"
    assert store.get("fresh-check")["status"] == "checking"  # another gateway may still be checking it


def test_a_batch_commit_stops_retrying_soon_after_shutdown_begins(monkeypatch):
    class DownStore:
        attempts = 0

        def commit_results(self, job_id, results):
            DownStore.attempts += 1
            raise OperationalError("UPDATE", {}, Exception("database unavailable"))

    monkeypatch.setattr(batch_runner, "SHUTDOWN_COMMIT_RETRY_S", 0.5)
    runner = BatchRunner.__new__(BatchRunner)
    runner.store = DownStore()
    runner._closing, runner._closing_since = True, time.monotonic()
    started = time.monotonic()
    with pytest.raises(OperationalError):
        runner._commit_blocking("batch_1", [])
    assert time.monotonic() - started < 5  # not COMMIT_RETRY_S (60 s)
    assert DownStore.attempts >= 1
