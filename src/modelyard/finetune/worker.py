"""The training process of one fine-tuning job: ``python -m modelyard.finetune.worker JOB_DIR``.

The gateway's job runner (`finetune.jobs`) writes ``JOB_DIR/spec.json``
and starts this process; it reports on stdout, one JSON object per line:
``message``, ``metrics`` (every step), ``checkpoint``, then ``done`` with
the adapter's path, or ``error`` with a code, a message and the field it is
about. It exits 0 after ``done``. Started again after a crash or a
restart, it resumes from the newest checkpoint in ``JOB_DIR/checkpoints``.
Training runs in its own process so that a gateway stays responsive (the
GIL), a cancel is a kill, and its memory (a few GB) goes back when it ends.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("modelyard.finetune.worker")


#: where reports go: the process's stdout as it was started; everything else writing to stdout (a library's
#: print) is sent to stderr, so it can never break into a report line (`main`)
_reports = sys.stdout


def emit(kind: str, **fields: Any) -> None:
    _reports.write(json.dumps({"type": kind} | fields) + "\n")
    _reports.flush()


def run(job_dir: Path) -> int:
    from ..backends.templates import get_template
    from ..errors import ModelyardError
    from .data import encode, load_examples
    from .gguf_adapter import write_adapter
    from .trainer import Checkpoints, Hyperparameters, TrainingError, architecture_of, load_base, train

    spec = json.loads((job_dir / "spec.json").read_text())
    hp = Hyperparameters(**spec["hyperparameters"])
    try:
        import torch

        torch.set_num_threads(int(spec.get("threads") or max(1, os.cpu_count() or 1)))
        template = get_template(spec["chat_template"])
        # the gateway checked the files (and their size against its minimum) before the job was queued
        train_examples = load_examples(Path(spec["training_file"]), param="training_file", min_examples=1)
        valid_examples = (load_examples(Path(spec["validation_file"]), param="validation_file", min_examples=1)
                          if spec.get("validation_file") else [])
        emit("message", level="info", message=f"{len(train_examples)} training and {len(valid_examples)} "
                                              f"validation conversations; loading {spec['base_model']}")
        began = time.perf_counter()
        model, tokenizer = load_base(Path(spec["base_gguf"]))
        device = os.environ.get("MODELYARD_FINETUNE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        emit("message", level="info", message=f"base model loaded in {time.perf_counter() - began:.0f} s; "
                                              f"training on {device}")
        train_set = [e for e in (encode(tokenizer, x, template, hp.max_length) for x in train_examples) if e]
        valid_set = [e for e in (encode(tokenizer, x, template, hp.max_length) for x in valid_examples) if e]
        if not train_set:
            raise TrainingError(f"no training conversation has an answer within max_length={hp.max_length} "
                                "tokens", code="invalid_training_file", param="training_file")
        dropped = len(train_examples) - len(train_set)
        if dropped:
            emit("message", level="warn", message=f"{dropped} conversation(s) had no answer within "
                                                  f"max_length={hp.max_length} tokens and were left out")
        checkpoints = Checkpoints(job_dir / "checkpoints")
        resumed = checkpoints.latest()
        if resumed is not None:
            emit("message", level="info", message=f"resuming from checkpoint {resumed.name}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def on_step(s: Any) -> None:
            emit("metrics", step=s.step, total_steps=s.total_steps, epoch=s.epoch, train_loss=round(s.train_loss, 5),
                 valid_loss=None if s.valid_loss is None else round(s.valid_loss, 5),
                 train_tokens_per_s=round(s.tokens / max(s.seconds, 1e-9), 2))

        def on_checkpoint(s: Any, path: Path) -> None:
            emit("checkpoint", step=s.step, path=str(path), train_loss=round(s.train_loss, 5),
                 valid_loss=None if s.valid_loss is None else round(s.valid_loss, 5))

        result = train(model, train_set, valid_set, hp, seed=int(spec.get("seed", 42)), checkpoints=checkpoints,
                       checkpoint_every=max(1, int(spec.get("checkpoint_every", 10))), pad=pad,
                       on_step=on_step, on_checkpoint=on_checkpoint)
        architecture, heads, kv_heads = architecture_of(Path(spec["base_gguf"]))
        adapter = write_adapter(job_dir / "adapter.gguf", result.state, architecture=architecture,
                                alpha=hp.lora_alpha, n_head=heads, n_head_kv=kv_heads, name=spec.get("job_id", ""))
    except ModelyardError as exc:
        emit("error", code=exc.code or "invalid_file", message=exc.message, param=exc.param)
        return 2
    except TrainingError as exc:
        emit("error", code=exc.code, message=exc.message, param=exc.param)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            emit("error", code="out_of_disk", message=f"the disk is full (or a file size limit was hit) while "
                                                      f"writing {exc.filename or 'a checkpoint'}: {exc.strerror}",
                 param=None)
            return 3
        raise
    emit("done", adapter=str(adapter), trained_tokens=result.trained_tokens,
         metrics={"train_loss": round(result.train_loss, 5),
                  "valid_loss": None if result.valid_loss is None else round(result.valid_loss, 5),
                  "steps": result.steps})
    return 0


def main() -> None:
    global _reports
    _reports = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m modelyard.finetune.worker JOB_DIR\n")
        sys.exit(64)
    sys.exit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
