"""Batch jobs on Ray Data vs the local engine: generated tokens/s of the same job, in the same run.

One ``modelyard up --no-defaults`` joins a Ray cluster started here (`ray.cluster_utils.Cluster`:
``--nodes`` nodes of ``--cpus`` CPUs each, all on this machine). Endpoint ``chat`` has one gemma-3-270m
deployment of ``--instances`` instances (``resources.num_cpus: 1``), so the local engine runs on
``--instances`` llama.cpp processes and the ray-data engine grows an actor pool of up to ``--instances``
actors (MODELYARD_BATCH_RAY_MAX_ACTORS), each holding its own llama.cpp, one thread each on both sides.

The job: ``--prompts`` short chat prompts (temperature 0, ``--max-tokens``), uploaded once, run as a batch
with ``engine: local`` and with ``engine: ray-data`` (mini-batches of ``--mini-batch-size``), alternating
which goes first, ``--rounds`` times. Tokens/s = the job's output tokens (its usage) / the job's seconds
from ``in_progress`` to its end as the gateway recorded them (``modelyard.elapsed_s``). A ray-data job's
seconds include starting its actors and loading the model in each (every job is a new Dataset); the
gateway's joining Ray happens in an unmeasured warm-up job of each engine first.

On one machine Ray can only add: its actors load the model the local instances already hold, and every
line goes through Ray's object store and the driver. It gains where a cluster adds nodes (more actors
than one machine has cores for); this benchmark shows the price of the detour on one machine.

    .venv/bin/python bench/batch_ray_data.py --prompts 40

Results: a table on stdout and ``bench/results/batch_ray_data.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _up import Gateway, environment, fmt, http, install_signal_handlers, loadavg, table, write_json  # noqa: E402

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello.", "Name a fruit.", "Name an animal.",
           "What is the capital of France?", "Name a planet.", "What is ice made of?"]


def _job_file(path: Path, n: int, max_tokens: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"p{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "chat", "max_tokens": max_tokens, "temperature": 0,
                                         "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]}})
                    + "\n")
    return path


def _run(client: Any, file_id: str, engine: str, mini_batch_size: int, timeout: float = 1800) -> dict[str, Any]:
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body={"engine": engine, "mini_batch_size": mini_batch_size})
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(1.0)  # once a second: polling costs the cores next to nothing
        b = client.batches.retrieve(batch.id)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{engine} job {batch.id} still {b.status}")
    if b.status != "completed" or b.request_counts.failed:
        raise RuntimeError(f"{engine} job {batch.id} ended {b.status}: {b.request_counts}, {b.errors}")
    extra = b.model_extra["modelyard"]
    seconds = extra["elapsed_s"]
    return {"engine": engine, "id": b.id, "lines": b.request_counts.completed, "tokens": b.usage.output_tokens,
            "seconds": seconds, "tokens_per_s": b.usage.output_tokens / seconds if seconds else None,
            "cost_usd": extra["cost_usd"], "load": loadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=4)
    parser.add_argument("--instances", type=int, default=2, help="local instances = most Ray actors")
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes (all on this machine)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each Ray node")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    install_signal_handlers()

    from openai import OpenAI
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus, "include_dashboard": False,
                                                            "object_store_memory": 200 * 1024**2})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus, object_store_memory=200 * 1024**2)
    cluster.wait_for_nodes()
    ray_start_s = time.monotonic() - t0
    gw = Gateway(log_name="ray-data", log_level="info", extra_args=("--no-defaults",),
                 env={"RAY_ADDRESS": cluster.address, "MODELYARD_BATCH_RAY_MAX_ACTORS": str(args.instances)})
    rows: list[dict[str, Any]] = []
    try:
        gw.start()
        gw.wait_ready()
        key = gw.admin_key
        assert http("POST", gw.url + "/api/endpoints", {"name": "chat"}, key=key)[0] == 201
        code, body = http("POST", gw.url + "/api/endpoints/chat/deployments",
                          {"name": "gemma", "model": "gemma-3-270m", "instance_count": args.instances,
                           "resources": {"num_cpus": 1}}, key=key, timeout=300)
        assert code == 201, body
        client = OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)
        with open(_job_file(gw.home / "warm.jsonl", 2, args.max_tokens), "rb") as f:
            warm = client.files.create(file=f, purpose="batch").id
        with open(_job_file(gw.home / "job.jsonl", args.prompts, args.max_tokens), "rb") as f:
            job = client.files.create(file=f, purpose="batch").id
        t = time.monotonic()
        _run(client, warm, "ray-data", 1)  # the gateway joins Ray here
        print(f"Ray cluster start {ray_start_s:.1f} s; warm-up ray-data job (gateway joins Ray) "
              f"{time.monotonic() - t:.1f} s", flush=True)
        _run(client, warm, "local", 1)
        for r in range(args.rounds):
            order = ("local", "ray-data") if r % 2 == 0 else ("ray-data", "local")
            for engine in order:
                row = _run(client, job, engine, args.mini_batch_size)
                row["round"] = r
                rows.append(row)
                print(f"round {r} {engine}: {row['tokens']} tokens in {row['seconds']:.1f} s = "
                      f"{row['tokens_per_s']:.1f} tok/s (load {row['load']:.1f})", flush=True)
    except BaseException:
        print(gw.logs_report(), file=sys.stderr)
        raise
    finally:
        gw.stop()
        cluster.shutdown()
        gw.cleanup_home()

    def med(engine: str, field: str) -> float:
        return statistics.median(r[field] for r in rows if r["engine"] == engine)

    local, ray_ = med("local", "tokens_per_s"), med("ray-data", "tokens_per_s")
    print()
    print(table([[r["round"], r["engine"], r["lines"], r["tokens"], fmt(r["seconds"]), fmt(r["tokens_per_s"]),
                  f"{r['cost_usd']:.6f}", fmt(r["load"])] for r in rows],
                ["round", "engine", "lines", "tokens", "seconds", "tok/s", "cost USD", "load"]))
    print(f"\nray-data / local tokens/s (medians): {ray_ / local:.2f}x "
          f"({ray_:.1f} vs {local:.1f} tok/s; {args.nodes} Ray node(s) of {args.cpus} CPUs, "
          f"{args.instances} instances/actors, all on this machine)")
    path = write_json("batch_ray_data.json", {"args": vars(args), "rows": rows, "ray_start_s": ray_start_s,
                                         "ratio_ray_over_local": ray_ / local, "environment": environment()})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
