"""Ray runtime dispatch: a Serve replica through the HTTP proxy vs through a DeploymentHandle, vs a local instance.

The gateway can reach a Ray Serve replica two ways (`modelyard.runtime.ray`):
the Serve HTTP proxy (the replica serves the instance wire format, the gateway
uses the same OpenAI-compatible client as for a local instance) or a
`DeploymentHandle` called from the gateway's process (Ray's own RPC). This
runs both against the same replica, and a local instance (`LocalRuntime`, the
worker process) as the baseline, in the same process and the same rounds:

- one replica of gemma-3-270m (1 CPU, 1 llama.cpp thread) in a Ray started
  here, deployed by `RayRuntime`; one local instance of the same card with the
  same thread count;
- each round sends one request each way, in a rotating order, sequentially
  (the machine has few cores; nothing else of ours runs meanwhile);
- requests: a short chat, temperature 0, ``max_tokens`` M (default 8), both
  non-streaming (latency) and streaming (time to first chunk, total);
- the client objects are exactly what `serving.Deployment` uses: the runtime's
  ``client(inst, timeout)`` (proxy or handle) and `OpenAICompatBackend` with
  the instance token for the local instance.

Prints medians and p90 per way and the ratios handle/proxy, proxy/local and
handle/local of the medians, and the CPU time this process (standing for the
gateway) spends per request each way.

    .venv/bin/python bench/ray_dispatch.py --rounds 30
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from modelyard.backends.openai_compat import OpenAICompatBackend
from modelyard.catalog.registry import Catalog
from modelyard.runtime.local import InstanceSpec, LocalRuntime
from modelyard.settings import Settings
from modelyard.wire import ChatCompletionRequest


def _request(stream: bool, max_tokens: int) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({
        "model": "bench", "messages": [{"role": "user", "content": "Name one colour."}],
        "temperature": 0, "max_tokens": max_tokens, "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {})})


async def _one(client, stream: bool, max_tokens: int) -> tuple[float, float, float]:
    """(time to first chunk, total, this process's CPU time) in ms."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    first = None
    async for chunk in client.generate("chat", _request(stream, max_tokens)):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000, (time.process_time() - c0) * 1000


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(values):7.1f} ms  p90 {p90:7.1f} ms"


async def main(args: argparse.Namespace) -> None:
    from modelyard.runtime.ray import HandleClient, RayRuntime, app_name  # noqa: PLC0415 (needs the ray extra)

    home = Path(tempfile.mkdtemp(prefix="ray-dispatch-"))
    settings = Settings(home=home)
    card = Catalog.load(settings).get(args.model)
    spec = InstanceSpec(key="bench/ray", card=card, options={"threads": 1})
    local = LocalRuntime(home / "logs")
    ray_rt = RayRuntime(None)
    t0 = time.perf_counter()
    [inst] = await local.scale(InstanceSpec(key="bench/local", card=card, options={"threads": 1}), 1)
    print(f"local instance ready in {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    replicas = await ray_rt.scale(spec, 1)
    print(f"ray started and the replica ready in {time.perf_counter() - t0:.1f}s", flush=True)
    clients = {
        "local": OpenAICompatBackend(inst.url + "/v1", api_key=inst.token, timeout=60, max_retries=0,
                                     provider="modelyard"),
        "proxy": ray_rt.client(replicas[0], 60),
        "handle": HandleClient(app_name(spec.key), 60),
    }
    try:
        for stream in (False, True):
            for name, client in clients.items():  # warm-up: connections, prompt cache, handle routing
                for _ in range(3):
                    await _one(client, stream, args.max_tokens)
        results: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
        names = list(clients)
        for i in range(args.rounds):
            order = names[i % 3:] + names[:i % 3]
            for stream in (False, True):
                for name in order:
                    results.setdefault((name, stream), []).append(await _one(clients[name], stream, args.max_tokens))
        print(f"\n{args.rounds} rounds, {args.model}, max_tokens={args.max_tokens}, sequential")
        medians: dict[tuple[str, str], float] = {}
        for stream, label in ((False, "non-streaming total"), (True, "streaming first chunk"), (True, "streaming total")):
            print(f"-- {label}")
            for name in names:
                values = [r[0] if label == "streaming first chunk" else r[1] for r in results[(name, stream)]]
                medians[(name, label)] = statistics.median(values)
                print(f"  {name:7s} {_summary(values)}")
            m = {n: medians[(n, label)] for n in names}
            print(f"  ratio handle/proxy {m['handle'] / m['proxy']:.2f}   proxy/local {m['proxy'] / m['local']:.2f}   "
                  f"handle/local {m['handle'] / m['local']:.2f}")
        print("-- CPU time of this (the gateway's) process per request, mean of both kinds")
        cpu = {n: statistics.mean(r[2] for s in (False, True) for r in results[(n, s)]) for n in names}
        for name in names:
            print(f"  {name:7s} {cpu[name]:6.2f} ms")
        print(f"  ratio handle/proxy {cpu['handle'] / cpu['proxy']:.2f}   proxy/local {cpu['proxy'] / cpu['local']:.2f}")
    finally:
        for client in clients.values():
            await client.close()
        await local.close()
        await ray_rt.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--model", default="gemma-3-270m")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(parser.parse_args()))
