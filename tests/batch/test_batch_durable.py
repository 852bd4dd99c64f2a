"""Durability: kill the gateway (SIGKILL) in the middle of a job, start it again, and the job
finishes where it stopped — every input line in the output exactly once, in input order, and one
successful usage record per line."""

from __future__ import annotations

import signal
import sqlite3
import time

from tests.batch.batch_helpers import GATEWAY_ENV, chat_line, make_endpoint, read_jsonl, stub_catalog, submit, wait_batch, write_jsonl
from tests.live_gateway import start_server

LINES = 40


def _asked(stub, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for body in list(stub.bodies):
        content = (body.get("messages") or [{}])[0].get("content", "")
        if content.startswith(f"question {prefix}"):
            key = content.removeprefix("question ")
            counts[key] = counts.get(key, 0) + 1
    return counts


def _restart_after(stop: str, stub, tmp_path) -> None:
    home = tmp_path / "home"
    stub_catalog(home, stub.root)
    first = start_server(home, "--no-defaults", extra_env=GATEWAY_ENV)
    second = None
    try:
        make_endpoint(first, "chat", ("blue", "stub-chat"), concurrency=2)
        client = first.openai()
        lines = [chat_line(f"{stop}{i:02d}", user="stub:delay_ms=150") for i in range(LINES)]
        batch = submit(client, write_jsonl(tmp_path / "in.jsonl", lines), extra_body={"mini_batch_size": 3})
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch.id).request_counts.completed < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        if stop == "kill":
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
        else:
            assert first.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
        with sqlite3.connect(home / "modelyard.db") as db:
            status, done_before = db.execute("SELECT status, completed FROM batch_jobs WHERE id = ?",
                                             (batch.id,)).fetchone()
        assert status == "in_progress" and 6 <= done_before < LINES

        second = start_server(home, "--no-defaults", extra_env=GATEWAY_ENV)
        client = second.openai()
        done = wait_batch(client, batch.id, timeout=120)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (LINES, LINES, 0)
        out = read_jsonl(client, done.output_file_id)
        assert [o["custom_id"] for o in out] == [f"{stop}{i:02d}" for i in range(LINES)]  # each once, in order
        assert len({o["id"] for o in out}) == LINES and done.error_file_id is None

        with sqlite3.connect(home / "modelyard.db") as db:
            ok = db.execute("SELECT request_id FROM usage_records WHERE batch_id = ? AND status = 200",
                            (batch.id,)).fetchall()
        assert sorted(r[0] for r in ok) == sorted(o["response"]["request_id"] for o in out)  # exactly once
        asked = _asked(stub, stop)
        assert set(asked) == {f"{stop}{i:02d}" for i in range(LINES)}
        assert sum(asked.values()) >= LINES  # lines in flight at the stop ran again
    finally:
        if second is not None:
            second.stop()
        if first.process.poll() is None:
            first.stop()


def test_a_killed_gateway_resumes_the_job_with_every_line_exactly_once(stub, tmp_path):
    _restart_after("kill", stub, tmp_path)


def test_a_stopped_gateway_resumes_the_job(stub, tmp_path):
    _restart_after("term", stub, tmp_path)


def test_a_job_past_its_completion_window_expires_keeping_finished_lines(stub, tmp_path):
    home = tmp_path / "home"
    stub_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults", extra_env={**GATEWAY_ENV, "MODELYARD_BATCH_COMPLETION_WINDOW_S": "3"})
    try:
        make_endpoint(srv, "chat", ("blue", "stub-chat"), concurrency=1)
        client = srv.openai()
        lines = [chat_line(f"x{i:02d}", user="stub:delay_ms=250") for i in range(30)]  # ~7.5 s on one slot
        batch = submit(client, write_jsonl(tmp_path / "in.jsonl", lines), extra_body={"mini_batch_size": 2})
        assert batch.expires_at - batch.created_at == 3
        done = wait_batch(client, batch.id, timeout=60)
        assert done.status == "expired" and done.expired_at is not None
        finished = read_jsonl(client, done.output_file_id)
        expired = read_jsonl(client, done.error_file_id)
        assert 0 < len(finished) == done.request_counts.completed < 30
        assert {o["error"]["code"] for o in expired} == {"batch_expired"}
        assert sorted(o["custom_id"] for o in finished + expired) == [f"x{i:02d}" for i in range(30)]
    finally:
        srv.stop()
