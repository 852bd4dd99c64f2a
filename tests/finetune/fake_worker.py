"""A stand-in for ``python -m modelyard.finetune.worker JOB_DIR`` that follows the same contract, fast.

It reads ``JOB_DIR/spec.json``, trains nothing, and reports on stdout as the real worker does: ``message``,
``metrics`` per step, ``checkpoint`` every ``checkpoint_every`` steps (a folder under ``JOB_DIR/checkpoints``
with a ``complete`` marker, written last), then ``done`` with a small adapter file. Started again, it resumes
after its newest complete checkpoint. Each start appends the step it starts from to ``JOB_DIR/starts.txt``.

What it does is chosen by the training file's first user message, ``fake:<mode>[,delay=<s>]``:

- ``ok`` (or no ``fake:`` prefix): every step, then done;
- ``error``: two steps, then an ``error`` line (code ``out_of_disk``) and exit 3;
- ``bad-line``: an ``error`` naming ``training_file`` (as the real worker's data checks would);
- ``crash``: two steps, a traceback on stderr, exit 1 with no error line;
- ``silent-exit``: exit 0 without a ``done`` line;
- ``noise``: ``ok``, with lines on stdout that are not JSON;
- ``delay=<s>``: sleep that long before each step (so a test can cancel, or kill the gateway, mid-job).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path


def emit(kind: str, **fields) -> None:
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def mode_of(train: Path) -> tuple[str, float]:
    first = json.loads(train.read_text().splitlines()[0])
    text = next((m["content"] for m in first["messages"] if m["role"] == "user"), "")
    if not text.startswith("fake:"):
        return "ok", 0.0
    mode, delay = "ok", 0.0
    for part in text.removeprefix("fake:").split()[0].split(","):
        if part.startswith("delay="):
            delay = float(part.removeprefix("delay="))
        elif part:
            mode = part
    return mode, delay


def newest_checkpoint(folder: Path) -> int:
    steps = [int(p.name.removeprefix("step-")) for p in folder.glob("step-*") if (p / "complete").exists()]
    return max(steps, default=0)


def main() -> int:
    job_dir = Path(sys.argv[-1])
    spec = json.loads((job_dir / "spec.json").read_text())
    hp = spec["hyperparameters"]
    train = Path(spec["training_file"])
    n_train = sum(1 for line in train.read_text().splitlines() if line.strip())
    mode, delay = mode_of(train)
    total = hp["n_epochs"] * math.ceil(n_train / hp["batch_size"])
    checkpoints = job_dir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    start = newest_checkpoint(checkpoints)
    with open(job_dir / "starts.txt", "a") as f:
        f.write(f"{start} {os.getpid()} {os.nice(0)}\n")
    emit("message", level="info", message=f"fake worker: {n_train} examples, {total} steps, from step {start}")
    if mode == "bad-line":
        emit("error", code="invalid_format", message="Invalid training file: line 3, field messages: must be a list",
             param="training_file")
        return 2
    if mode == "silent-exit":
        return 0
    if mode == "noise":
        print("loading weights... not JSON")
        print("{\"no_type\": true}")
    for step in range(start + 1, total + 1):
        time.sleep(delay)
        epoch = 1 + (step - 1) * hp["batch_size"] // n_train
        loss = round(2.0 / step, 5)
        valid = round(2.2 / step, 5) if spec["validation_file"] else None
        emit("metrics", step=step, total_steps=total, epoch=epoch, train_loss=loss, valid_loss=valid,
             train_tokens_per_s=50.0)
        if mode in ("error", "crash") and step == 2:
            if mode == "error":
                emit("error", code="out_of_disk", message="the disk is full while writing a checkpoint", param=None)
                return 3
            sys.stderr.write("Traceback (most recent call last):\nRuntimeError: fake crash in step 2\n")
            return 1
        if step % spec["checkpoint_every"] == 0 and step < total:
            path = checkpoints / f"step-{step}"
            path.mkdir(exist_ok=True)
            (path / "adapter.bin").write_bytes(b"weights")
            (path / "complete").write_text("ok")
            emit("checkpoint", step=step, path=str(path), train_loss=loss, valid_loss=valid)
    adapter = job_dir / "adapter.gguf"
    adapter.write_bytes(b"GGUF fake adapter")
    emit("done", adapter=str(adapter), trained_tokens=total * 100,
         metrics={"train_loss": round(2.0 / total, 5), "valid_loss": None, "steps": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
