"""Helpers for the fine-tuning job tests: a real gateway (`modelyard up` in a subprocess) whose training
process is `fake_worker.py` (MODELYARD_FINETUNE_WORKER), a small local GGUF card to tune, and data files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.cards import hosted_card
from tests.live_gateway import Server, start_server, write_catalog

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
TERMINAL = {"succeeded", "failed", "cancelled"}
#: the local model the tests tune: a GGUF card whose file the fake worker never reads
BASE = "tiny-chat"

#: a fast gateway: the fake worker, checkpoints every 2 steps, a short cancel grace, quick polling
GATEWAY_ENV = {"MODELYARD_FINETUNE_WORKER": f"{sys.executable} {FAKE_WORKER}", "MODELYARD_FINETUNE_POLL_S": "0.2",
               "MODELYARD_FINETUNE_CHECKPOINT_EVERY": "2", "MODELYARD_FINETUNE_CANCEL_GRACE_S": "3",
               "MODELYARD_FINETUNE_NICE": "10", "MODELYARD_USAGE_FLUSH_S": "0.1"}


def catalog(home: Path) -> Path:
    """Cards: `tiny-chat` (local GGUF chat), `tiny-embed` (local GGUF embeddings), `hosted-chat` (hosted),
    `hub-chat` (a Hub GGUF that was never pulled), `bare-chat` (no chat template), `tiny-chat:ft-old-abc123` (a tuned
    model). Returns the GGUF file's path."""
    gguf = home / "models" / "tiny.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(b"GGUF not a real model")
    local = (f"- id: {BASE}\n  family: test\n  task: chat\n  format: gguf\n  license: mit\n  context_length: 2048\n"
             f"  chat_template: dialogue\n  stop: [\"\\nUser:\"]\n  source: {{type: local, path: {gguf}}}\n"
             f"- id: tiny-embed\n  family: test\n  task: embedding\n  format: gguf\n  license: mit\n"
             f"  context_length: 512\n  source: {{type: local, path: {gguf}}}\n"
             "- id: hub-chat\n  family: test\n  task: chat\n  format: gguf\n  license: mit\n  context_length: 2048\n"
             "  source: {type: hub, repo: nobody/nothing-GGUF, file: nothing.gguf}\n"
             f"- id: bare-chat\n  family: test\n  task: chat\n  format: gguf\n  license: mit\n  context_length: 2048\n"
             f"  source: {{type: local, path: {gguf}}}\n"
             f"- id: \"{BASE}:ft-old-abc123\"\n  family: test\n  task: chat\n  format: gguf\n  license: mit\n"
             f"  context_length: 2048\n  chat_template: dialogue\n  source: {{type: local, path: {gguf}}}\n"
             f"  adapter: {{path: {gguf}, base: {BASE}}}\n")
    write_catalog(home, local + hosted_card("hosted-chat", "http://127.0.0.1:9/v1"))
    return gguf


def start_gateway(home: Path, **env: str) -> Server:
    catalog(home)
    return start_server(home, "--no-defaults", extra_env={**GATEWAY_ENV, **env})


def rows(n: int, mode: str = "") -> list[dict[str, Any]]:
    """``n`` chat examples; the first user message tells the fake worker what to do (``fake:<mode>``)."""
    out = []
    for i in range(n):
        question = f"fake:{mode} what is code {i}?" if (i == 0 and mode) else f"what is code {i}?"
        out.append({"messages": [{"role": "system", "content": "Answer with the product code."},
                                 {"role": "user", "content": question},
                                 {"role": "assistant", "content": f"PC-{i:04d}"}]})
    return out


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def upload(client: Any, path: Path, purpose: str = "fine-tune") -> Any:
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose=purpose)


def create(client: Any, tmp_path: Path, n: int = 24, mode: str = "", *, validation: int = 0, name: str = "train",
           **params: Any) -> Any:
    """Upload ``n`` examples (and ``validation`` more) and create a job on `BASE` with ``params``."""
    train = upload(client, write_jsonl(tmp_path / f"{name}.jsonl", rows(n, mode)))
    if validation:
        params["validation_file"] = upload(client, write_jsonl(tmp_path / f"{name}-v.jsonl", rows(validation))).id
    params.setdefault("model", BASE)
    return client.fine_tuning.jobs.create(training_file=train.id, **params)


def wait_job(client: Any, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout}s: {job}")
        time.sleep(0.1)


def all_events(client: Any, job_id: str) -> list[Any]:
    """Every event of a job, oldest first (the API lists them newest first)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100).data)))


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
