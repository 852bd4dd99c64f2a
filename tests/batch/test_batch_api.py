"""The OpenAI Batch and Files APIs against a real gateway, through the official `openai` client.

The deployments are hosted cards on a scripted stub (see conftest.py), so
results, retries and failures are fast and deterministic.
"""

from __future__ import annotations

import sqlite3
import time

import httpx
import openai
import pytest

from tests.batch.batch_helpers import chat_line, read_jsonl, submit, wait_batch, write_jsonl

LINE_COST = (10 * 1.0 + 20 * 2.0) / 1e6  # the stub's usage at stub-chat's price


def usage_rows(gw, batch_id: str) -> list[dict]:
    time.sleep(0.3)  # nothing to flush: batch usage is committed with its lines; give WAL readers a moment
    with sqlite3.connect(gw.home / "modelyard.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM usage_records WHERE batch_id = ? ORDER BY id", (batch_id,))]


def test_chat_batch_runs_every_line_and_writes_openai_output_lines(gw, tmp_path):
    client = gw.openai()
    lines = [chat_line(f"q{i}") for i in range(12)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.id.startswith("file-")
    assert uploaded.bytes == path.stat().st_size and uploaded.filename == "in.jsonl"

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"project": "docs"})
    assert batch.object == "batch" and batch.id.startswith("batch_") and batch.status == "validating"
    assert batch.input_file_id == uploaded.id and batch.completion_window == "24h"
    assert batch.expires_at - batch.created_at == 24 * 3600

    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 12 and done.request_counts.completed == 12 and done.request_counts.failed == 0
    assert done.error_file_id is None and done.errors is None and done.metadata == {"project": "docs"}
    assert done.model == "chat"
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.usage.input_tokens == 12 * 10 and done.usage.output_tokens == 12 * 20

    out = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"q{i}" for i in range(12)]  # input order
    first = out[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["id"].startswith("batch_req_")
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"].startswith("req-")
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["choices"][0]["message"]["content"].startswith("tok")
    assert len({o["id"] for o in out}) == 12

    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.filename == f"{batch.id}_output.jsonl"

    # Usage records, tagged with the job, cost and tokens as for live traffic.
    rows = usage_rows(gw, batch.id)
    assert len(rows) == 12 and {r["status"] for r in rows} == {200}
    assert {r["request_id"] for r in rows} == {o["response"]["request_id"] for o in out}
    assert {(r["endpoint"], r["deployment"], r["route"]) for r in rows} == {("chat", "blue", "split:blue")}
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(12 * LINE_COST)
    extra = done.model_extra["modelyard"]
    assert extra["cost_usd"] == pytest.approx(12 * LINE_COST) and extra["requests"] == 12


def test_embeddings_batch(gw, tmp_path):
    client = gw.openai()
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "embed", "input": [f"text {i}", "more"]}} for i in range(4)]
    batch = submit(client, write_jsonl(tmp_path / "emb.jsonl", lines), endpoint="/v1/embeddings")
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 4
    out = read_jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == ["e0", "e1", "e2", "e3"]
    body = out[0]["response"]["body"]
    assert body["object"] == "list" and len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 8
    assert {r["kind"] for r in usage_rows(gw, batch.id)} == {"embedding"}


def test_a_line_is_retried_up_to_max_retries_on_retryable_errors(gw, stub, tmp_path):
    client = gw.openai()
    lines = [
        chat_line("flaky", user="stub:status=503,fail_times=2,key=flaky-1"),  # fails twice, then answers
        chat_line("down", user="stub:status=500"),  # always fails
        chat_line("refused", user="stub:status=400"),  # a client error is not retried
        chat_line("fine"),
    ]
    batch = submit(client, write_jsonl(tmp_path / "retry.jsonl", lines), extra_body={"max_retries": 3})
    done = wait_batch(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert [o["custom_id"] for o in read_jsonl(client, done.output_file_id)] == ["flaky", "fine"]
    errors = {o["custom_id"]: o for o in read_jsonl(client, done.error_file_id)}
    assert list(errors) == ["down", "refused"]
    assert errors["down"]["response"]["status_code"] >= 500 and errors["down"]["error"] is None
    assert errors["down"]["response"]["body"]["error"]["message"]
    assert errors["refused"]["response"]["status_code"] == 400

    attempts: dict[str, int] = {}
    for body in stub.bodies:
        content = body.get("messages", [{}])[0].get("content", "")
        for name in ("flaky", "down", "refused"):
            if content == f"question {name}":
                attempts[name] = attempts.get(name, 0) + 1
    assert attempts == {"flaky": 3, "down": 3, "refused": 1}
    statuses = sorted(r["status"] for r in usage_rows(gw, batch.id))
    assert len(statuses) == 3 + 3 + 1 + 1 and statuses.count(200) == 2  # every attempt is a usage record


def test_more_failed_lines_than_the_error_threshold_fail_the_job(gw, tmp_path):
    client = gw.openai()
    lines = [chat_line(f"bad{i}", user="stub:status=500") for i in range(4)] + [chat_line(f"ok{i}") for i in range(8)]
    batch = submit(client, write_jsonl(tmp_path / "threshold.jsonl", lines),
                   # one worker (a quarter of blue's 4 slots), so mini-batches run one after the other
                   extra_body={"error_threshold": 2, "max_retries": 1, "mini_batch_size": 2, "max_share": 0.25},
                   metadata={"deployment": "blue"})
    done = wait_batch(client, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    # The job stops once a committed mini-batch takes it past the threshold: after the second.
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 4)
    [summary] = done.errors.data
    assert summary.code == "error_threshold_exceeded" and "error_threshold=2" in summary.message
    assert "line 1 (bad0)" in summary.message and "8 requests not run" in summary.message
    errors = read_jsonl(client, done.error_file_id)
    ran = [o["custom_id"] for o in errors if o["response"]]
    not_run = [o for o in errors if o["response"] is None]
    assert ran == ["bad0", "bad1", "bad2", "bad3"]
    assert len(not_run) == 8 and {o["error"]["code"] for o in not_run} == {"batch_failed"}
    seen = [o["custom_id"] for o in errors + read_jsonl(client, done.output_file_id)]
    assert sorted(seen) == sorted(line["custom_id"] for line in lines)  # every line exactly once


def test_unlimited_error_threshold_runs_everything(gw, tmp_path):
    client = gw.openai()
    lines = [chat_line(f"bad{i}", user="stub:status=500") for i in range(3)] + [chat_line("ok")]
    batch = submit(client, write_jsonl(tmp_path / "t.jsonl", lines),
                   extra_body={"error_threshold": -1, "max_retries": 1, "mini_batch_size": 1})
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 3)


def test_summary_only_counts_without_output_files(gw, tmp_path):
    client = gw.openai()
    lines = [chat_line("a"), chat_line("b", user="stub:status=400")]
    batch = submit(client, write_jsonl(tmp_path / "s.jsonl", lines), metadata={"output_action": "summary_only"})
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    assert done.output_file_id is None and done.error_file_id is None
    assert done.model_extra["modelyard"]["output_action"] == "summary_only"


def test_a_job_targets_one_deployment(gw, tmp_path):
    client = gw.openai()
    batch = submit(client, write_jsonl(tmp_path / "t.jsonl", [chat_line("g1"), chat_line("g2")]),
                   metadata={"deployment": "green"})
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.model_extra["modelyard"]["deployment"] == "green"
    assert {(r["deployment"], r["route"]) for r in usage_rows(gw, batch.id)} == {("green", "target:green")}


def test_model_setting_sends_every_line_to_that_endpoint(gw, tmp_path):
    client = gw.openai()
    lines = [chat_line("x", model="whatever"), {**chat_line("y"), "body": {"messages": [{"role": "user", "content": "hi"}]}}]
    batch = submit(client, write_jsonl(tmp_path / "m.jsonl", lines), extra_body={"model": "chat"})
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 2 and done.model == "chat"


def test_cancelling_a_running_job_keeps_finished_lines(gw, tmp_path):
    client = gw.openai()
    lines = [chat_line(f"slow{i}", user="stub:delay_ms=150") for i in range(60)]
    batch = submit(client, write_jsonl(tmp_path / "slow.jsonl", lines), extra_body={"mini_batch_size": 2})
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    finished = read_jsonl(client, done.output_file_id)
    assert len(finished) == done.request_counts.completed >= 4
    assert done.request_counts.completed < 60
    not_run = read_jsonl(client, done.error_file_id)
    assert {o["error"]["code"] for o in not_run} == {"batch_cancelled"}
    assert sorted(o["custom_id"] for o in finished + not_run) == sorted(f"slow{i}" for i in range(60))

    with pytest.raises(openai.ConflictError) as exc:
        client.batches.cancel(batch.id)
    assert exc.value.body["code"] == "batch_not_cancellable"


def test_files_and_batches_list_retrieve_delete(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "l.jsonl", [chat_line("l1")])
    ids = []
    for _ in range(3):
        with open(path, "rb") as f:
            ids.append(client.files.create(file=f, purpose="batch").id)
    listed = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in listed.data] == ids[::-1][:2] and listed.has_more
    assert ids[0] in [f.id for f in client.files.list(purpose="batch")]  # auto-paging finds the rest
    assert client.files.retrieve(ids[0]).bytes == path.stat().st_size
    assert client.files.content(ids[0]).text == path.read_text()

    deleted = client.files.delete(ids[0])
    assert deleted.deleted and deleted.id == ids[0]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])

    b1 = client.batches.create(input_file_id=ids[1], endpoint="/v1/chat/completions", completion_window="24h")
    b2 = client.batches.create(input_file_id=ids[2], endpoint="/v1/chat/completions", completion_window="24h")
    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [b2.id] and page.has_more
    assert [b.id for b in client.batches.list(limit=1, after=b2.id).data] == [b1.id]
    wait_batch(client, b1.id)
    wait_batch(client, b2.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_an_endpoint_key_sees_only_its_own_files_and_may_only_call_its_endpoint(gw, tmp_path):
    admin = gw.openai()
    r = gw.api("POST", "/api/keys", json={"name": "embed-only", "endpoint": "embed"})
    assert r.status_code in (200, 201), r.text
    user = gw.openai(r.json()["key"])
    path = write_jsonl(tmp_path / "k.jsonl", [chat_line("k1")])
    with open(path, "rb") as f:
        mine = user.files.create(file=f, purpose="batch")
    with open(path, "rb") as f:
        theirs = admin.files.create(file=f, purpose="batch")
    assert mine.id in [f.id for f in admin.files.list()]  # the admin sees everything
    assert [f.id for f in user.files.list()] == [mine.id]
    with pytest.raises(openai.NotFoundError):
        user.files.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        user.batches.create(input_file_id=theirs.id, endpoint="/v1/chat/completions", completion_window="24h")

    batch = user.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(user, batch.id)
    assert done.status == "failed" and done.errors.data[0].code == "endpoint_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        user.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h",
                            extra_body={"model": "chat"})
    with pytest.raises(openai.AuthenticationError):
        gw.openai("my-not-a-key").batches.list()


def test_upload_errors_are_openai_shaped(gw, tmp_path):
    headers = {"Authorization": f"Bearer {gw.admin_key}"}
    r = httpx.post(gw.base_url + "/files", headers=headers, files={"file": ("a.jsonl", b"{}\n")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = httpx.post(gw.base_url + "/files", headers=headers, data={"purpose": "assistants"},
                   files={"file": ("a.jsonl", b"{}\n")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = httpx.post(gw.base_url + "/files", headers=headers, data={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(gw.base_url + "/files", headers=headers, json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
    r = httpx.post(gw.base_url + "/batches", headers=headers, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_file_expiry_and_a_file_in_use_cannot_be_deleted(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "e.jsonl", [chat_line(f"e{i}", user="stub:delay_ms=200") for i in range(8)])
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600})
    assert uploaded.expires_at == uploaded.created_at + 3600
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body={"max_share": 0.25})
    with pytest.raises(openai.ConflictError) as exc:
        client.files.delete(uploaded.id)
    assert exc.value.body["code"] == "file_in_use" and batch.id in exc.value.body["message"]
    assert wait_batch(client, batch.id).status == "completed"
    assert client.files.delete(uploaded.id).deleted


def test_revoking_the_key_that_created_a_running_job_stops_its_requests(gw, stub, tmp_path):
    created = gw.api("POST", "/api/keys", json={"name": "batcher", "endpoint": "chat"}).json()
    client = openai.OpenAI(base_url=gw.base_url, api_key=created["key"], max_retries=0)
    lines = [chat_line(f"r{i}", user="stub:delay_ms=150") for i in range(60)]
    batch = submit(client, write_jsonl(tmp_path / "revoked.jsonl", lines), extra_body={"mini_batch_size": 2})
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gw.api("DELETE", f"/api/keys/{created['id']}").status_code == 200

    done = wait_batch(gw.openai(), batch.id)  # the admin key still sees it
    assert done.status == "failed"
    assert done.errors.data[0].code == "key_revoked"
    assert 4 <= done.request_counts.completed < 60
    sent = stub.seen
    time.sleep(1.0)
    assert stub.seen == sent  # nothing more is sent on the revoked key's behalf


def test_output_expires_after_sets_when_the_output_files_expire(gw, tmp_path):
    client = gw.openai()
    path = write_jsonl(tmp_path / "expiring.jsonl", [chat_line("a"), chat_line("b")])
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 7200}})
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at - output.created_at == 7200
    # without it, outputs are kept until deleted
    kept = wait_batch(client, client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h").id)
    assert client.files.retrieve(kept.output_file_id).expires_at is None

    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                              extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 60}})
    assert "output_expires_after" in str(refused.value) and "seconds" in str(refused.value)
