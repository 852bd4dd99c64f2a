"""`modelyard finetune …` against a real gateway (whose training process is the fake worker)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from modelyard.cli import app
from tests.finetune.ft_helpers import BASE, create, rows, wait_job, write_jsonl


def cli(srv, *args: str):
    return CliRunner().invoke(app, ["finetune", *args], env={**srv.env(), "COLUMNS": "220"})


def ok(srv, *args: str) -> str:
    result = cli(srv, *args)
    assert result.exit_code == 0, f"modelyard finetune {' '.join(args)}:\n{result.output}"
    return result.output


def test_create_waits_for_the_tuned_model_and_the_other_commands_show_it(gw, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows(16))
    val = write_jsonl(tmp_path / "val.jsonl", rows(4))
    output = ok(gw, "create", "--model", BASE, "--data", str(train), "--validation", str(val), "--epochs", "2",
                "--batch-size", "4", "--suffix", "cli", "--seed", "3", "--wait")
    job_id = re.search(r"(ftjob-[0-9a-f]+)", output).group(1)
    name = re.search(r"(tiny-chat:ft-cli-[0-9a-f]{6})", output).group(1)
    assert "succeeded" in output and "800 trained tokens" in output  # 2 epochs × 4 steps × 100 tokens
    assert "Files validated: 16 training examples" in output and "8/8" in output

    job = gw.openai().fine_tuning.jobs.retrieve(job_id)
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size, job.seed) == (2, 4, 3)
    assert job.fine_tuned_model == name and job.validation_file is not None

    listed = ok(gw, "list")
    assert job_id in listed and name in listed and "succeeded" in listed
    shown = ok(gw, "get", job_id)
    assert name in shown and "n_epochs 2" in shown and "batch_size 4" in shown and "lora_rank 8" in shown
    events = ok(gw, "events", job_id, "--limit", "100")
    assert events.index("Validating training file") < events.index("Step 8/8: training loss=0.2500")
    assert "The job has successfully completed." in events
    points = ok(gw, "checkpoints", job_id)
    assert f"{name}:ckpt-step-6" in points and "0.3333" in points


def test_create_without_wait_then_cancel_and_errors_exit_1(gw, tmp_path):
    client = gw.openai()
    slow = create(client, tmp_path, 40, "delay=0.3", hyperparameters={"batch_size": 1})
    wait_job(client, slow.id, {"running"})
    assert "cancelled" in ok(gw, "cancel", slow.id)
    again = cli(gw, "cancel", slow.id)
    assert again.exit_code == 1 and "409" in again.output and "already cancelled" in again.output

    train = write_jsonl(tmp_path / "t.jsonl", rows(12))
    started = ok(gw, "create", "--model", BASE, "--data", str(train), "--no-wait")
    assert "created on tiny-chat" in started and "modelyard finetune events" in started

    hosted = cli(gw, "create", "--model", "hosted-chat", "--data", str(train))
    assert hosted.exit_code == 1 and "400" in hosted.output and "not supported locally" in hosted.output
    few = write_jsonl(tmp_path / "few.jsonl", rows(2))
    failed = cli(gw, "create", "--model", BASE, "--data", str(few), "--wait")
    assert failed.exit_code == 1 and "failed" in failed.output and "too_few_examples" in failed.output
