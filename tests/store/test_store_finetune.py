"""FineTuneStore on SQLite and PostgreSQL: jobs, their status changes, events and checkpoints."""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelyard.store.finetune import FineTuneStore, JobRecord
from modelyard.store.models import utcnow


def _job(job_id: str, **fields) -> JobRecord:
    return JobRecord(id=job_id, model="gemma-3-270m", fine_tuned_model=f"gemma-3-270m:ft-{job_id[-6:]}",
                     training_file="file-train", hyperparameters={"n_epochs": "auto", "lora_rank": 8}, seed=42,
                     **fields)


def test_a_job_is_stored_with_its_first_event_and_read_back(any_db):
    store = FineTuneStore(any_db)
    store.create_job(_job("ftjob-000001", suffix="tickets", meta={"team": "support"}, validation_file="file-v",
                          owner_key_id=3), event="Validating training file: file-train")
    job = store.get_job("ftjob-000001")
    assert (job.status, job.suffix, job.meta, job.validation_file, job.owner_key_id) == (
        "validating_files", "tickets", {"team": "support"}, "file-v", 3)
    assert job.hyperparameters == {"n_epochs": "auto", "lora_rank": 8} and job.created_at.tzinfo is not None
    assert job.attempts == 0 and not job.final
    events, more = store.events("ftjob-000001")
    assert [e.message for e in events] == ["Validating training file: file-train"] and not more
    assert store.get_job("ftjob-missing") is None


def test_status_changes_are_conditional_and_stamp_times_and_events(any_db):
    store = FineTuneStore(any_db)
    store.create_job(_job("ftjob-000002"))
    job = store.set_status("ftjob-000002", "queued", when=("validating_files",), event="queued",
                           hyperparameters={"n_epochs": 3, "batch_size": 8}, training_examples=40)
    assert job.status == "queued" and job.training_examples == 40 and job.hyperparameters["batch_size"] == 8
    job, moved = store.update_job("ftjob-000002", when=("queued",), status="running", event="started")
    assert moved and job.started_at is not None and job.finished_at is None

    # cancelled meanwhile: a late "succeeded" does not move it, and its event is not written
    store.set_status("ftjob-000002", "cancelled", when=("validating_files", "queued", "running"), event="cancelled")
    job, moved = store.update_job("ftjob-000002", when=("running",), status="succeeded", event="done")
    assert not moved and job.status == "cancelled" and job.final and job.finished_at is not None
    assert [e.message for e in store.events("ftjob-000002")[0]] == ["cancelled", "started", "queued"]

    with pytest.raises(ValueError):
        store.set_status("ftjob-000002", "paused")
    with pytest.raises(KeyError):
        store.set_status("ftjob-nope", "failed")


def test_a_failed_job_keeps_its_error_and_a_final_one_has_no_estimate(any_db):
    store = FineTuneStore(any_db)
    store.create_job(_job("ftjob-000003", status="running"))
    soon = utcnow() + timedelta(minutes=5)
    job, _ = store.update_job("ftjob-000003", when=("running",), estimated_finish=soon)
    assert abs((job.estimated_finish - soon).total_seconds()) < 1
    error = {"code": "out_of_disk", "message": "the disk is full", "param": None}
    job = store.set_status("ftjob-000003", "failed", when=("running",), error=error, event="the disk is full",
                           level="error")
    assert job.error == error and job.estimated_finish is None
    [event] = store.events("ftjob-000003")[0]
    assert (event.level, event.type) == ("error", "message")


def test_attempts_count_each_training_process(any_db):
    store = FineTuneStore(any_db)
    store.create_job(_job("ftjob-000004"))
    assert [store.count_attempt("ftjob-000004") for _ in range(3)] == [1, 2, 3]
    assert store.get_job("ftjob-000004").attempts == 3


def test_jobs_list_newest_first_with_after_and_by_status_oldest_first(any_db):
    store = FineTuneStore(any_db)
    base = utcnow()
    for i in range(5):
        store.create_job(_job(f"ftjob-00001{i}", created_at=base + timedelta(seconds=i), owner_key_id=i % 2,
                              status="queued" if i % 2 else "running"))
    page, more = store.list_jobs(limit=2)
    assert [j.id for j in page] == ["ftjob-000014", "ftjob-000013"] and more
    page, more = store.list_jobs(limit=10, after="ftjob-000013")
    assert [j.id for j in page] == ["ftjob-000012", "ftjob-000011", "ftjob-000010"] and not more
    assert [j.id for j in store.list_jobs(owner_key_id=1)[0]] == ["ftjob-000013", "ftjob-000011"]
    assert [j.id for j in store.jobs_in("queued")] == ["ftjob-000011", "ftjob-000013"]
    assert len(store.jobs_in("queued", "running")) == 5 and store.jobs_in("succeeded") == []


def test_events_page_newest_first_and_metrics_read_oldest_first(any_db):
    store = FineTuneStore(any_db)
    store.create_job(_job("ftjob-000020"))
    store.create_job(_job("ftjob-000021"))
    store.add_event("ftjob-000021", "other job")
    for step in range(1, 6):
        store.add_event("ftjob-000020", f"Step {step}/5", type="metrics", data={"step": step, "train_loss": 1 / step})
    store.add_event("ftjob-000020", "careful", level="warn")
    page, more = store.events("ftjob-000020", limit=4)
    assert [e.message for e in page] == ["careful", "Step 5/5", "Step 4/5", "Step 3/5"] and more
    rest, more = store.events("ftjob-000020", after=page[-1].id, limit=4)
    assert [e.message for e in rest] == ["Step 2/5", "Step 1/5"] and not more
    assert [m["step"] for m in store.metrics("ftjob-000020")] == [1, 2, 3, 4, 5]
    assert page[1].data == {"step": 5, "train_loss": 0.2}
    with pytest.raises(ValueError):
        store.add_event("ftjob-000020", "x", level="debug")


def test_a_checkpoint_written_again_at_the_same_step_replaces_the_first(any_db):
    store = FineTuneStore(any_db)
    store.create_job(_job("ftjob-000030"))
    for step in (10, 20, 30):
        store.add_checkpoint("ftjob-000030", step=step, metrics={"step": float(step), "train_loss": 1.0},
                             path=f"/ckpt/step-{step}", name=f"m:ckpt-step-{step}")
    again = store.add_checkpoint("ftjob-000030", step=20, metrics={"step": 20.0, "train_loss": 0.5},
                                 path="/ckpt/step-20b", name="m:ckpt-step-20")
    assert store.checkpoint_count("ftjob-000030") == 3
    page, more = store.checkpoints("ftjob-000030", limit=2)
    assert [c.step for c in page] == [30, 20] and more
    assert page[1].id == again.id and page[1].path == "/ckpt/step-20b" and page[1].metrics["train_loss"] == 0.5
    rest, more = store.checkpoints("ftjob-000030", after=page[-1].id)
    assert [c.step for c in rest] == [10] and not more
    assert store.checkpoints("ftjob-other")[0] == []
