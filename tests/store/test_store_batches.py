"""`BatchStore`: jobs, lines and files on SQLite and Postgres — the writes that make batch jobs durable."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from modelyard.store.batches import BatchStore, FileRecord, JobRecord, LineRecord, LineResult
from modelyard.store.models import UsageRecord, utcnow
from modelyard.store.usage import normalize_record


def _job(store: BatchStore, job_id: str = "batch_1", **values) -> JobRecord:
    return store.create_job(JobRecord(id=job_id, endpoint="/v1/chat/completions", input_file_id="file-1", **values))


def _lines(n: int) -> list[LineRecord]:
    return [LineRecord(line=i + 1, custom_id=f"c{i}", kind="chat", body="{}") for i in range(n)]


def _usage(request_id: str, job_id: str = "batch_1") -> dict:
    return normalize_record({"request_id": request_id, "endpoint": "chat", "kind": "chat", "batch_id": job_id,
                             "prompt_tokens": 3, "completion_tokens": 5, "cost_usd": 0.25})


def test_a_job_starts_with_its_lines_and_commits_each_line_once(any_db):
    store = BatchStore(any_db)
    _job(store)
    job = store.start_job("batch_1", _lines(5), model="chat")
    assert (job.status, job.total, job.model) == ("in_progress", 5, "chat") and job.in_progress_at is not None

    first = store.pending_lines("batch_1", limit=2)
    assert [line.line for line in first] == [1, 2]
    assert [line.line for line in store.pending_lines("batch_1", after=2, limit=10)] == [3, 4, 5]

    results = [LineResult(first[0].id, "succeeded", 1, 200, "req-a", '{"ok": 1}', usage=[_usage("req-a")]),
               LineResult(first[1].id, "failed", 3, 500, "req-b", '{"error": {}}', "boom",
                          usage=[_usage("req-b0"), _usage("req-b")])]
    job = store.commit_results("batch_1", results)
    assert (job.completed, job.failed) == (1, 1)
    # The same results again (a retried commit): nothing changes, no usage row is added twice.
    job = store.commit_results("batch_1", results)
    assert (job.completed, job.failed) == (1, 1)
    with any_db.session() as session:
        assert sorted(session.scalars(select(UsageRecord.request_id))) == ["req-a", "req-b", "req-b0"]
    assert store.usage("batch_1") == {"requests": 3, "prompt_tokens": 9, "completion_tokens": 15, "cost_usd": 0.75}
    assert store.pending_count("batch_1") == 3
    assert [(line.line, line.state) for line in store.lines("batch_1", chunk=2)] == [
        (1, "succeeded"), (2, "failed"), (3, "pending"), (4, "pending"), (5, "pending")]
    assert [line.custom_id for line in store.first_failures("batch_1")] == ["c1"]


def test_validation_again_replaces_the_lines_but_not_a_cancelled_job(any_db):
    store = BatchStore(any_db)
    _job(store)
    store.start_job("batch_1", _lines(3))
    store.set_status("batch_1", "validating")  # as if the gateway died during validation and resumed it
    assert store.start_job("batch_1", _lines(2)).total == 2
    assert len(list(store.lines("batch_1"))) == 2

    _job(store, "batch_2")
    cancelling = store.request_cancel("batch_2")
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    job = store.start_job("batch_2", _lines(4))
    assert job.status == "cancelling" and job.total == 0 and not list(store.lines("batch_2"))


def test_status_changes_are_conditional_and_add_output_files_with_them(any_db):
    store = BatchStore(any_db)
    _job(store)
    store.start_job("batch_1", _lines(1))
    output = FileRecord(id="file-out", filename="batch_1_output.jsonl", purpose="batch_output", bytes=10)
    done = store.set_status("batch_1", "completed", when=("in_progress",), files=(output,), output_file_id="file-out")
    assert done.status == "completed" and done.completed_at is not None and done.final
    assert store.get_file("file-out").bytes == 10
    # A final job does not move again, and the files of a refused change are not added.
    again = store.set_status("batch_1", "cancelled", when=("in_progress", "cancelling"),
                             files=(FileRecord(id="file-x", filename="x", purpose="batch_output", bytes=1),))
    assert again.status == "completed" and store.get_file("file-x") is None
    assert store.request_cancel("batch_1").status == "completed"
    assert store.request_cancel("batch_nope") is None


def test_unfinished_jobs_and_pages(any_db):
    store = BatchStore(any_db)
    now = utcnow()
    for i in range(5):
        _job(store, f"batch_{i}", created_at=now + timedelta(seconds=i), owner_key_id=7 if i % 2 else None)
    store.set_status("batch_0", "failed")
    assert [j.id for j in store.unfinished_jobs()] == ["batch_1", "batch_2", "batch_3", "batch_4"]
    page, more = store.list_jobs(limit=2)
    assert [j.id for j in page] == ["batch_4", "batch_3"] and more
    page, more = store.list_jobs(limit=5, after="batch_3")
    assert [j.id for j in page] == ["batch_2", "batch_1", "batch_0"] and not more
    assert [j.id for j in store.list_jobs(owner_key_id=7)[0]] == ["batch_3", "batch_1"]

    for i in range(3):
        store.add_file(FileRecord(id=f"file-{i}", filename="f", purpose="batch", bytes=i,
                                  created_at=now + timedelta(seconds=i)))
    assert [f.id for f in store.list_files(order="asc", limit=2)[0]] == ["file-0", "file-1"]
    assert [f.id for f in store.list_files(order="asc", after="file-0")[0]] == ["file-1", "file-2"]
    assert [f.id for f in store.list_files(after="file-2")[0]] == ["file-1", "file-0"]
    assert sorted(store.jobs_using("file-1")) == ["batch_1", "batch_2", "batch_3", "batch_4"]  # not the failed one
    assert store.delete_file("file-0") and not store.delete_file("file-0")


def test_expired_files_go_unless_an_unfinished_job_reads_them(any_db):
    store = BatchStore(any_db)
    now = utcnow()
    past, future = now - timedelta(seconds=5), now + timedelta(hours=1)
    for fid, expires in (("file-old", past), ("file-read", past), ("file-done", past), ("file-new", future),
                         ("file-kept", None)):
        store.add_file(FileRecord(id=fid, filename="f", purpose="batch", bytes=1, expires_at=expires))
    store.create_job(JobRecord(id="batch_run", endpoint="/v1/chat/completions", input_file_id="file-read"))
    store.create_job(JobRecord(id="batch_end", endpoint="/v1/chat/completions", input_file_id="file-done"))
    store.set_status("batch_end", "completed")

    assert store.expired_files(now) == ["file-done", "file-old"]  # not file-read: batch_run has not finished
    assert not store.delete_file("file-read", expired_by=now)  # an unfinished job reads it
    assert not store.delete_file("file-new", expired_by=now)   # not expired yet
    assert store.delete_file("file-old", expired_by=now) and store.delete_file("file-done", expired_by=now)
    store.set_status("batch_run", "cancelled")
    assert store.expired_files(now) == ["file-read"] and store.delete_file("file-read", expired_by=now)
    assert sorted(f.id for f in store.list_files()[0]) == ["file-kept", "file-new"]


def test_stored_by_counts_a_keys_files_that_have_not_expired(any_db):
    store = BatchStore(any_db)
    now = utcnow()
    for fid, owner, size, expires in (("a", 7, 100, None), ("b", 7, 50, now + timedelta(hours=1)),
                                      ("c", 7, 1000, now - timedelta(seconds=1)), ("d", 8, 5, None)):
        store.add_file(FileRecord(id=fid, filename="f", purpose="batch", bytes=size, owner_key_id=owner,
                                  expires_at=expires))
    assert store.stored_by(7) == (2, 150)
    assert store.stored_by(8) == (1, 5) and store.stored_by(9) == (0, 0)


def test_an_upstream_error_code_wider_than_its_column_is_cut_not_refused(any_db):
    store = BatchStore(any_db)
    _job(store)
    store.start_job("batch_1", _lines(1))
    [line] = store.pending_lines("batch_1")
    code = "upstream_\x00_" + "x" * 200
    job = store.commit_results("batch_1", [LineResult(line.id, "failed", 1, 502, "req-1", '{"error": {}}', code)])
    assert job.failed == 1
    [stored] = list(store.lines("batch_1"))
    assert stored.error_code == ("upstream_\ufffd_" + "x" * 200)[:64] and stored.state == "failed"
