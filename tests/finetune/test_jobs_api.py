"""The OpenAI fine-tuning API on a real gateway, driven by the official `openai` client.

The training process is `fake_worker.py`, which follows the worker's contract (metrics, checkpoints, done or
error on stdout, resume from its newest checkpoint) without training anything; the real worker is tested in
its own tests. Everything else is real: the gateway, the database, the files, the publish step, the catalog.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import sqlite3
import time

import httpx
import openai
import pytest
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from tests.finetune.ft_helpers import (BASE, all_events, create, rows, start_gateway, upload, wait_for, wait_job,
                                       write_jsonl)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has exited
    except OSError:
        return False


def _starts(home, job_id: str) -> list[tuple[int, int, int]]:
    """(step it started from, pid, niceness) of each training process the job's folder saw."""
    path = home / "fine_tuning" / job_id / "starts.txt"
    if not path.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in path.read_text().splitlines()]


def test_a_job_trains_publishes_the_tuned_model_and_reports_events_and_checkpoints(gw, tmp_path):
    client = gw.openai()
    job = create(client, tmp_path, 24, validation=3, suffix="tickets", seed=7,
                 method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "lora_rank": 4}}},
                 metadata={"team": "support"})
    assert job.status == "validating_files" and job.fine_tuned_model is None and job.model == BASE
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"

    done = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert re.fullmatch(r"tiny-chat:ft-tickets-[0-9a-f]{6}", done.fine_tuned_model)
    # 24 examples, batch_size auto → 8: 3 steps an epoch, 2 epochs; the fake counts 100 tokens a step
    assert done.trained_tokens == 600 and done.seed == 7 and done.metadata == {"team": "support"}
    assert (done.hyperparameters.n_epochs, done.hyperparameters.batch_size,
            done.hyperparameters.learning_rate_multiplier) == (2, 8, 1.0)
    assert done.hyperparameters.model_extra["lora_rank"] == 4
    assert done.finished_at >= done.created_at and done.estimated_finish is None and done.error is None

    # every object validates against the openai package's own types, not only parses
    raw = gw.api("GET", f"/v1/fine_tuning/jobs/{job.id}").json()
    FineTuningJob.model_validate(raw)
    events = all_events(client, job.id)
    for event in events:
        FineTuningJobEvent.model_validate(event.model_dump())
    messages = [e.message for e in events]
    assert messages[0].startswith("Validating training file: file-")
    assert messages[-2:] == [f"New fine-tuned model created: {done.fine_tuned_model}",
                             "The job has successfully completed."]
    metrics = [e for e in events if e.type == "metrics"]
    assert [m.data["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert metrics[-1].message == "Step 6/6: training loss=0.3333, validation loss=0.3667"
    assert all(m.data["total_steps"] == 6 and m.data["valid_loss"] is not None for m in metrics)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    for ckpt in checkpoints:
        FineTuningJobCheckpoint.model_validate(ckpt.model_dump())
    assert [c.step_number for c in checkpoints] == [4, 2]  # latest first; step 6 is the final adapter
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-4"
    assert checkpoints[0].metrics.train_loss == 0.5 and checkpoints[0].metrics.valid_loss == 0.55
    assert checkpoints[0].fine_tuning_job_id == job.id

    # the results file: one CSV row per step
    [results] = done.result_files
    table = list(csv.DictReader(io.StringIO(client.files.content(results).text)))
    assert [int(r["step"]) for r in table] == [1, 2, 3, 4, 5, 6] and float(table[0]["train_loss"]) == 2.0
    assert client.files.retrieve(results).purpose == "fine-tune-results"

    # the tuned model is in the catalog, with its lineage
    card = gw.api("GET", f"/api/catalog/{done.fine_tuned_model}")
    assert card.status_code == 200, card.text
    lineage = card.json()["adapter"]["lineage"]
    assert lineage["job_id"] == job.id and lineage["base_model"] == BASE
    assert lineage["files"]["training_file"]["id"] == done.training_file
    assert len(lineage["files"]["validation_file"]["sha256"]) == 64
    assert lineage["hyperparameters"]["batch_size"] == 8 and lineage["trained_tokens"] == 600

    # what the training process was given, and how
    spec = json.loads((gw.home / "fine_tuning" / job.id / "spec.json").read_text())
    assert spec["base_model"] == BASE and spec["base_gguf"] == str(gw.home / "models" / "tiny.gguf")
    assert spec["chat_template"] == "dialogue" and spec["stop"] == ["\nUser:"] and spec["seed"] == 7
    assert spec["hyperparameters"] == {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0,
                                       "lora_rank": 4, "lora_alpha": 16, "max_length": 512}
    assert spec["checkpoint_every"] == 2 and spec["validation_file"].endswith("/validation.jsonl")
    [(start_step, _pid, niceness)] = _starts(gw.home, job.id)
    assert start_step == 0 and niceness >= 10  # lower priority than the gateway: live traffic first

    listed = client.fine_tuning.jobs.list(limit=100)
    assert job.id in [j.id for j in listed.data]


def test_events_page_newest_first_with_after(gw, tmp_path):
    client = gw.openai()
    job = create(client, tmp_path, 16, hyperparameters={"n_epochs": 1, "batch_size": 2})
    assert wait_job(client, job.id).status == "succeeded"
    everything = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    first = client.fine_tuning.jobs.list_events(job.id, limit=5)
    assert [e.id for e in first.data] == everything[:5] and first.has_more
    second = client.fine_tuning.jobs.list_events(job.id, limit=5, after=first.data[-1].id)
    assert [e.id for e in second.data] == everything[5:10]
    paged = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=4)]
    assert paged == everything  # the client walks every page, each event once
    ids = [int(e.removeprefix("ftevent-")) for e in everything]
    assert ids == sorted(ids, reverse=True)


@pytest.mark.parametrize("mode, code, param, words", [
    ("error", "out_of_disk", None, "the disk is full"),
    ("bad-line", "invalid_format", "training_file", "line 3"),
    ("crash", "training_failed", None, "exited with status 1"),
    ("silent-exit", "training_failed", None, "exited without reporting a result"),
])
def test_a_failing_training_process_fails_the_job_with_its_error(gw, tmp_path, mode, code, param, words):
    client = gw.openai()
    job = create(client, tmp_path, 12, mode)
    done = wait_job(client, job.id)
    assert done.status == "failed" and done.fine_tuned_model is None and done.trained_tokens is None
    assert (done.error.code, done.error.param) == (code, param) and words in done.error.message
    if mode == "crash":  # the log's last lines say why
        assert "RuntimeError: fake crash in step 2" in done.error.message
    last = client.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert last.level == "error" and last.message == done.error.message


def test_lines_that_are_not_reports_go_to_the_log(gw, tmp_path):
    client = gw.openai()
    job = create(client, tmp_path, 12, "noise")
    assert wait_job(client, job.id).status == "succeeded"
    log = (gw.home / "fine_tuning" / job.id / "worker.log").read_text()
    assert "loading weights... not JSON" in log and '{"no_type": true}' in log
    assert not any("not JSON" in e.message for e in all_events(client, job.id))


def test_jobs_run_one_at_a_time_and_cancel_stops_the_training_process(gw, tmp_path):
    client = gw.openai()
    first = create(client, tmp_path, 40, "delay=0.3", name="slow", hyperparameters={"batch_size": 1, "n_epochs": 1})
    second = create(client, tmp_path, 12, name="waiting")
    wait_job(client, first.id, {"running"})
    wait_for(lambda: len([e for e in all_events(client, first.id) if e.type == "metrics"]) >= 3, what="3 steps")
    assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"  # behind the running job
    # 40 steps of ~0.3 s, a few done: the estimate is the rest at the pace so far
    running = client.fine_tuning.jobs.retrieve(first.id)
    assert time.time() + 3 < running.estimated_finish < time.time() + 120
    [(_, pid, _)] = _starts(gw.home, first.id)
    assert _alive(pid)

    cancelled = client.fine_tuning.jobs.cancel(first.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    wait_for(lambda: not _alive(pid), timeout=10, what="the training process to stop")
    steps = len([e for e in all_events(client, first.id) if e.type == "metrics"])
    assert wait_job(client, second.id).status == "succeeded"  # the queue moves on
    assert client.fine_tuning.jobs.retrieve(first.id).status == "cancelled"
    assert len([e for e in all_events(client, first.id) if e.type == "metrics"]) == steps  # no step after
    assert all_events(client, first.id)[-1].message == "Fine-tuning job cancelled."

    with pytest.raises(openai.ConflictError) as exc:
        client.fine_tuning.jobs.cancel(first.id)
    assert exc.value.body["code"] == "job_not_cancellable"


def test_a_queued_job_can_be_cancelled_before_it_runs(gw, tmp_path):
    client = gw.openai()
    blocker = create(client, tmp_path, 30, "delay=0.2", name="blocker", hyperparameters={"batch_size": 1})
    queued = create(client, tmp_path, 12, name="queued")
    wait_job(client, queued.id, {"queued"})
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    client.fine_tuning.jobs.cancel(blocker.id)
    time.sleep(1)
    assert client.fine_tuning.jobs.retrieve(queued.id).status == "cancelled"
    assert not (gw.home / "fine_tuning" / queued.id / "starts.txt").exists()  # it never trained


@pytest.mark.parametrize("stop", ["kill", "term"])
def test_a_stopped_or_killed_gateway_resumes_the_job_from_its_checkpoint(tmp_path, stop):
    home = tmp_path / "home"
    first = start_gateway(home)
    second = None
    try:
        client = first.openai()
        job = create(client, tmp_path, 12, "delay=0.25", hyperparameters={"n_epochs": 1, "batch_size": 1})
        wait_for(lambda: [c for c in client.fine_tuning.jobs.checkpoints.list(job.id).data if c.step_number >= 4],
                 what="a checkpoint at step 4")
        [(_, pid, _)] = _starts(home, job.id)
        if stop == "kill":
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(10) == -signal.SIGKILL
        else:  # a clean stop ends the training process too, and leaves the job to resume
            assert first.stop() in (0, -signal.SIGTERM)
        wait_for(lambda: not _alive(pid), timeout=10, what="the training process to end with its gateway")
        with sqlite3.connect(home / "modelyard.db") as db:
            (status,) = db.execute("SELECT status FROM fine_tuning_jobs WHERE id = ?", (job.id,)).fetchone()
        assert status == "running"

        second = start_gateway(home)
        client = second.openai()
        done = wait_job(client, job.id)
        assert done.status == "succeeded", done.error
        starts = _starts(home, job.id)
        assert len(starts) == 2 and starts[1][0] >= 4  # the second process went on from a checkpoint
        events = all_events(client, job.id)
        assert any(e.message.startswith("Fine-tuning job resumed after a gateway restart") for e in events)
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert steps[-1] == 12 and set(steps) == set(range(1, 13))
        assert second.api("GET", f"/api/catalog/{done.fine_tuned_model}").status_code == 200
    finally:
        if second is not None:
            second.stop()
        if first.process.poll() is None:
            first.stop()


def test_a_gateway_with_fine_tuning_off_keeps_jobs_for_one_that_runs_them(tmp_path):
    home = tmp_path / "home"
    off = start_gateway(home, MODELYARD_FINETUNE_ENABLED="false")
    on = None
    try:
        client = off.openai()
        job = create(client, tmp_path, 12)
        time.sleep(1.5)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
        assert "MODELYARD_FINETUNE_ENABLED=false" in all_events(client, job.id)[-1].message
        assert not (home / "fine_tuning" / job.id).exists()
        off.stop()
        on = start_gateway(home)
        assert wait_job(on.openai(), job.id).status == "succeeded"
    finally:
        for srv in (off, on):
            if srv is not None and srv.process.poll() is None:
                srv.stop()


# --- bad input ----------------------------------------------------------------------------------


def _error(exc: pytest.ExceptionInfo) -> dict:
    return exc.value.body


def test_files_must_exist_and_be_uploaded_for_fine_tuning(gw, tmp_path):
    client = gw.openai()
    batch_file = upload(client, write_jsonl(tmp_path / "b.jsonl", rows(12)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model=BASE, training_file=batch_file.id)
    assert _error(exc)["param"] == "training_file" and _error(exc)["code"] == "invalid_file_purpose"
    assert "purpose 'batch'" in _error(exc)["message"]
    with pytest.raises(openai.NotFoundError) as exc:
        client.fine_tuning.jobs.create(model=BASE, training_file="file-doesnotexist")
    assert _error(exc)["param"] == "training_file" and _error(exc)["code"] == "file_not_found"
    good = upload(client, write_jsonl(tmp_path / "t.jsonl", rows(12)))
    with pytest.raises(openai.NotFoundError) as exc:
        client.fine_tuning.jobs.create(model=BASE, training_file=good.id, validation_file="file-nope")
    assert _error(exc)["param"] == "validation_file"


def test_a_training_file_in_the_wrong_format_fails_naming_the_line_and_field(gw, tmp_path):
    client = gw.openai()
    lines = rows(12)
    lines[4] = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    job = client.fine_tuning.jobs.create(model=BASE, training_file=upload(
        client, write_jsonl(tmp_path / "bad.jsonl", lines)).id)
    done = wait_job(client, job.id)
    assert done.status == "failed" and done.error.param == "training_file"
    assert "line 5" in done.error.message and "messages[1].role" in done.error.message
    assert not (gw.home / "fine_tuning" / job.id / "starts.txt").exists()  # no training was started

    not_json = upload(client, write_jsonl(tmp_path / "nj.jsonl", [*rows(11), "{not json"]))
    done = wait_job(client, client.fine_tuning.jobs.create(model=BASE, training_file=not_json.id).id)
    assert done.status == "failed" and "line 12" in done.error.message

    bad_validation = upload(client, write_jsonl(tmp_path / "bv.jsonl", [{"messages": []}]))
    job = client.fine_tuning.jobs.create(model=BASE, training_file=upload(
        client, write_jsonl(tmp_path / "ok.jsonl", rows(12))).id, validation_file=bad_validation.id)
    done = wait_job(client, job.id)
    assert done.status == "failed" and done.error.param == "validation_file" and "line 1" in done.error.message


def test_too_few_examples_fail_the_job(gw, tmp_path):
    client = gw.openai()
    job = create(client, tmp_path, 3)
    done = wait_job(client, job.id)
    assert done.status == "failed" and done.error.code == "too_few_examples"
    assert done.error.param == "training_file" and "3 example" in done.error.message


@pytest.mark.parametrize("model, status, code, words", [
    ("hosted-chat", 400, "model_not_supported", "not supported locally"),
    ("tiny-embed", 400, "model_not_supported", "only local GGUF chat models"),
    ("hub-chat", 400, "model_not_pulled", "modelyard catalog pull hub-chat"),
    ("no-such-model", 404, "model_not_found", "not in the catalog"),
    ("bare-chat", 400, "model_not_supported", "no chat_template"),
    ("tiny-chat:ft-old-abc123", 400, "model_not_supported", "itself a fine-tuned model"),
])
def test_only_local_chat_models_that_are_here_can_be_tuned(gw, tmp_path, model, status, code, words):
    client = gw.openai()
    train = upload(client, write_jsonl(tmp_path / "t.jsonl", rows(12)))
    with pytest.raises(openai.APIStatusError) as exc:
        client.fine_tuning.jobs.create(model=model, training_file=train.id)
    assert exc.value.status_code == status
    assert (_error(exc)["param"], _error(exc)["code"]) == ("model", code) and words in _error(exc)["message"]


@pytest.mark.parametrize("params, param, words", [
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "from 1 to 50"),
    ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs", "not True"),
    ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size", "'auto' or a whole number"),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier", "above 0"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "Unrecognized"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 0}}}},
     "method.supervised.hyperparameters.lora_rank", "from 1 to 256"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"max_length": 4096}}}},
     "hyperparameters.max_length", "context of 2048 tokens"),
    ({"method": {"type": "dpo"}}, "method.type", "only 'supervised'"),
    ({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3}}}}, "method.supervised.hyperparameters.n_epochs", "disagree"),
    ({"suffix": "x" * 65}, "suffix", "maximum length 64"),
    ({"suffix": "my model"}, "suffix", "letters, digits"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"metadata": {"k" * 65: "v"}}, "metadata", "at most 64 characters"),
])
def test_bad_parameters_are_400s_naming_the_field(gw, tmp_path, params, param, words):
    client = gw.openai()
    train = upload(client, write_jsonl(tmp_path / "t.jsonl", rows(12)))
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model=BASE, training_file=train.id, **params)
    assert _error(exc)["param"] == param and words in _error(exc)["message"], _error(exc)


def test_only_the_admin_key_may_fine_tune(gw, tmp_path):
    r = gw.api("POST", "/api/keys", json={"name": "app"})
    user = gw.openai(r.json()["key"])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        user.fine_tuning.jobs.list()
    assert _error(exc)["code"] == "not_admin" and "admin key" in _error(exc)["message"]
    with pytest.raises(openai.PermissionDeniedError):
        user.fine_tuning.jobs.create(model=BASE, training_file="file-x")
    r = httpx.get(gw.base_url + "/fine_tuning/jobs")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_unknown_jobs_and_bad_cursors(gw, tmp_path):
    client = gw.openai()
    job = create(client, tmp_path, 12)
    for call in (lambda: client.fine_tuning.jobs.retrieve("ftjob-nope"),
                 lambda: client.fine_tuning.jobs.cancel("ftjob-nope"),
                 lambda: client.fine_tuning.jobs.list_events("ftjob-nope"),
                 lambda: client.fine_tuning.jobs.checkpoints.list("ftjob-nope")):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert _error(exc)["code"] == "fine_tuning_job_not_found"
    for call in (lambda: client.fine_tuning.jobs.list_events(job.id, after="evt-1"),
                 lambda: client.fine_tuning.jobs.checkpoints.list(job.id, after="ftckpt-x")):
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        assert _error(exc)["param"] == "after"
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.list(limit=0)
    assert _error(exc)["param"] == "limit"
    r = gw.api("POST", "/v1/fine_tuning/jobs", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
