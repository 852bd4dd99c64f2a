"""The demonstration task end to end, timed: a gateway, a fine-tuning job with default hyperparameters on the
packaged Gemma 3 270M, then base against tuned on the held-out test split.

    .venv/bin/python bench/finetune_demo.py [--train 240 --validation 30 --test 60] [--keep DIR]

Prints the time from `create` to a deployable model (the job's ``succeeded``), the training steps, the last
training and validation loss, and `modelyard finetune eval`'s exact match and decoding speed for the base
and the tuned model on the same prompts (orders with names and phrasings the training split never has).
`make finetune-demo` runs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--validation", type=int, default=30)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--keep", type=Path, help="keep the gateway's home here (default: a temporary folder)")
    args = parser.parse_args()

    from openai import OpenAI

    from modelyard.finetune import demo

    home = args.keep or Path(tempfile.mkdtemp(prefix="modelyard-ft-demo-"))
    data = demo.write(home / "data", train=args.train, validation=args.validation, test=args.test)
    port = free_port()
    env = dict(os.environ, MODELYARD_HOME=str(home / "home"), MODELYARD_URL=f"http://127.0.0.1:{port}")
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "modelyard.cli", "up", "--port", str(port), "--no-defaults"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the gateway did not start; see {home / 'server.log'}")
            time.sleep(0.3)
        key = (home / "home" / "admin.key").read_text().strip()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        began = time.monotonic()
        files = {name: client.files.create(file=open(data[name], "rb"), purpose="fine-tune")
                 for name in ("train", "validation")}
        job = client.fine_tuning.jobs.create(model="gemma-3-270m", training_file=files["train"].id,
                                             validation_file=files["validation"].id, suffix="orders")
        print(f"job {job.id} created; training {args.train} conversations with default hyperparameters")
        seen = 0
        while True:
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data))
            for e in events[seen:]:
                print(f"  {time.monotonic() - began:7.1f} s  {e.message}")
            seen = len(events)
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(5)
        elapsed = time.monotonic() - began
        print(f"job {job.status} after {elapsed:.0f} s ({elapsed / 60:.1f} min) from create to a deployable model: "
              f"{job.fine_tuned_model}, {job.trained_tokens} trained tokens, hyperparameters {job.hyperparameters}")
        if job.status != "succeeded":
            raise SystemExit(1)
        subprocess.run([sys.executable, "-m", "modelyard.cli", "finetune", "eval", job.id, "--data",
                        str(data["test"])], env=env, check=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
