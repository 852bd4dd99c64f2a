"""Evaluations kept with a job (``/api/fine_tuning/jobs/{id}/evaluations``): only for a succeeded job, checked
field by field, listed newest first and shown among the job's events."""

from __future__ import annotations

from tests.finetune.ft_helpers import all_events, create, wait_job

SCORE = {"model": "m", "score": 0.5, "examples": 4, "completion_tokens": 40, "seconds": 2.0, "tokens_per_s": 20.0}
BODY = {"data": "test.jsonl", "data_sha256": "a" * 64, "metric": "exact_match",
        "base": SCORE | {"model": "tiny-chat", "score": 0.0}, "tuned": SCORE | {"score": 1.0}}


def test_an_evaluation_is_kept_with_a_succeeded_job_and_refused_otherwise(gw, tmp_path):
    client = gw.openai()
    job = create(client, tmp_path, name="evaluated")
    done = wait_job(client, job.id)
    assert done.status == "succeeded"
    path = f"/api/fine_tuning/jobs/{job.id}/evaluations"
    r = gw.api("POST", path, json=BODY)
    assert r.status_code == 201, r.text
    listed = gw.api("GET", path).json()["data"]
    assert [e["evaluation"]["tuned"]["score"] for e in listed] == [1.0]
    assert any("base 0.000, tuned 1.000" in e.message for e in all_events(client, job.id))

    bad = gw.api("POST", path, json=BODY | {"tuned": SCORE | {"examples": 0}})
    assert bad.status_code == 400 and "tuned.examples" in bad.json()["error"]["param"]
    bad = gw.api("POST", path, json=BODY | {"data_sha256": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "data_sha256"

    running = create(client, tmp_path, mode="ok,delay=5", name="not-done")
    r = gw.api("POST", f"/api/fine_tuning/jobs/{running.id}/evaluations", json=BODY)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_succeeded"
    client.fine_tuning.jobs.cancel(running.id)
    assert gw.api("GET", "/api/fine_tuning/jobs/ftjob-nope/evaluations").status_code == 404
