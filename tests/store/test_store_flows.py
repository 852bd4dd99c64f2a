"""Flows as stored: definitions with versions, and runs read back from their usage records — SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from modelyard.store.flows import FlowStore
from modelyard.store.usage import UsageWriter


def test_a_flow_is_saved_versioned_listed_and_deleted(any_db):
    store = FlowStore(any_db)
    first = store.save("ask", "nodes: []\n", {"prompts/a.jinja2": "user:\n{{q}} \u00e9"}, "first")
    assert (first.name, first.version, first.description) == ("ask", 1, "first")
    second = store.save("ask", "nodes: [] # changed\n", {}, "second")
    assert second.version == 2 and second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert store.get("ask").dag == "nodes: [] # changed\n" and store.get("ask").files == {}
    store.save("beta", "x", {"a.py": "print(1)"})
    assert [f.name for f in store.all()] == ["ask", "beta"]
    assert store.versions() == {"ask": 2, "beta": 1}
    store.touch("beta")
    assert store.versions()["beta"] == 2
    assert store.delete("ask") is True and store.delete("ask") is False
    assert store.get("ask") is None


def test_runs_are_the_flow_calls_usage_records_with_their_traces_and_steps(any_db):
    async def write() -> None:
        writer = UsageWriter(any_db, flush_interval=0.05)
        await writer.start()
        for i in range(3):
            run_id = f"req-run{i}"
            writer.submit({"endpoint": "ask", "kind": "flow", "request_id": run_id, "key_id": 7 if i else 8,
                           "prompt_tokens": 30, "completion_tokens": 12, "cost_usd": 0.002, "status": 200,
                           "trace": {"run_id": run_id, "spans": [{"node": "compose", "output": "nul \x00 byte"}]}})
            for node in ("small", "large"):
                writer.submit({"endpoint": node, "kind": "chat", "parent_request_id": run_id, "key_id": 7,
                               "prompt_tokens": 15, "completion_tokens": 6, "cost_usd": 0.001})
        writer.submit({"endpoint": "ask", "kind": "chat", "request_id": "req-not-a-run"})
        await writer.close()

    asyncio.run(write())
    store = FlowStore(any_db)
    runs = store.runs("ask")
    assert [r["id"] for r in runs] == ["req-run2", "req-run1", "req-run0"]
    assert [r["id"] for r in store.runs("ask", key_id=8)] == ["req-run0"]
    assert len(store.runs("ask", limit=1)) == 1
    one = store.run("ask", "req-run1")
    assert one["trace"]["spans"][0]["output"] == "nul \ufffd byte"  # PostgreSQL refuses NUL: it is replaced
    assert sorted(s["endpoint"] for s in one["steps"]) == ["large", "small"]
    assert one["cost_usd"] == 0.002
    assert store.run("ask", "req-not-a-run") is None and store.run("other", "req-run1") is None
