"""The log of routed answers holds bounded memory whatever clients send, and stores what it keeps."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.routing import responses
from modelyard.routing.responses import ResponseLog, kept_request
from modelyard.store.responses import ResponseStore
from modelyard.wire import ChatCompletionRequest
from tests.store.conftest import db, sqlite_url  # noqa: F401 - fixtures


def chat(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "routed", "messages": [{"role": "user", "content": text}]})


def answer(log: ResponseLog, ident: str, text: str, content: str = "ok") -> None:
    log.answered(ident, endpoint="routed", key_id=1, request=chat(text), kind="chat", tier="small", tier_index=0,
                 text=content, checking=False)


def test_a_request_too_large_to_keep_is_logged_without_its_body_and_cannot_be_asked_again(db):
    async def scenario():
        log = ResponseLog(ResponseStore(db))
        answer(log, "small", "What is the capital of France?")
        answer(log, "huge", "x" * (responses.MAX_KEPT_REQUEST_BYTES + 10))
        await log.flush()
        return log

    log = asyncio.run(scenario())
    small, huge = ResponseStore(db).get("small"), ResponseStore(db).get("huge")
    assert kept_request(small) and small["request"]["messages"][0]["content"] == "What is the capital of France?"
    assert not kept_request(huge)
    assert huge["request"]["_omitted_bytes"] > responses.MAX_KEPT_REQUEST_BYTES
    assert len(huge["prompt"]) == responses.MAX_KEPT_PROMPT_CHARS and huge["content"] == "ok"
    assert asyncio.run(log.get("huge"))["request"] == huge["request"]


def test_the_answers_kept_in_memory_are_bounded_by_their_size(db, monkeypatch):
    monkeypatch.setattr(responses, "RECENT_BYTES", 50_000)

    async def scenario():
        log = ResponseLog(ResponseStore(db))
        for i in range(40):
            answer(log, f"r{i}", "q" * 2_000, content="a" * 3_000)
        await log.flush()
        return log

    log = asyncio.run(scenario())
    assert log._recent_bytes <= 50_000 and len(log._recent) < 40
    assert "r39" in log._recent and "r0" not in log._recent
    # what left memory is still read back from the database
    assert asyncio.run(log.get("r0"))["content"] == "a" * 3_000


def test_while_the_database_is_down_the_queue_is_bounded_and_drops_are_counted(db, monkeypatch):
    monkeypatch.setattr(responses, "MAX_QUEUED", 10)

    class Down(ResponseStore):
        def save_many(self, rows):
            raise OSError("database unavailable")

    async def scenario():
        log = ResponseLog(Down(db))
        for i in range(15):
            answer(log, f"r{i}", "hello")
        await log.flush()  # fails: the rows stay queued
        return log

    log = asyncio.run(scenario())
    assert len(log._queue) == 10 and log.dropped == 5
