"""Served flows: the gateway CPU a flow node costs, against the same model call made as a plain request.

A real gateway (``modelyard up``) with one hosted endpoint on the OpenAI stub
(its own process, answering at once), and two flows applied over the API:
``one`` (a single llm node) and ``five`` (five llm nodes in a chain), each
node calling that endpoint. Measured in the same run, in the gateway
process's CPU time (user + system, all threads):

- ``direct``: ``POST /v1/chat/completions`` to the endpoint — one model call
  as a client makes it (HTTP in, pipeline, upstream call, HTTP out);
- ``per node``: (CPU of a ``five`` run − CPU of a ``one`` run) ÷ 4 — what
  one more node costs the gateway: the engine, the template, the step's own
  pass through budget ▶ cache ▶ policy ▶ dispatch and its usage record, and
  the upstream call.

The issue's target is ≤ 0.3 ms of gateway CPU per node beyond the model
calls themselves: ``per node − direct`` (a node pays no inbound HTTP, so it
can come out below a direct request). Also printed: a run of ``five`` ÷ five
direct requests, end to end.

    .venv/bin/python bench/flow_gateway.py [--runs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _http import Connection, build_request  # noqa: E402
from _stub import start_stub, write_stub_cards  # noqa: E402
from _up import Gateway, http  # noqa: E402


def chain(n: int) -> str:
    nodes = []
    previous = "${inputs.question}"
    for i in range(n):
        nodes.append(f"""- name: n{i}
  type: llm
  source: {{type: inline, content: "user:\\n{{{{q}}}} (step {i})"}}
  inputs: {{endpoint: bench, q: "{previous}", max_tokens: 20}}""")
        previous = f"${{n{i}.output}}"
    return f"""inputs:
  question: {{type: string}}
outputs:
  answer: {{type: string, reference: "{previous}"}}
nodes:
""" + "\n".join(nodes) + "\n"


async def measure(port: int, pid: int, path: str, body: dict, key: str, n: int) -> tuple[float, float]:
    """Gateway CPU ms per request, and wall ms per request, over `n` sequential requests (after 30 warm-up)."""
    raw = build_request("127.0.0.1", port, path, json.dumps(body).encode(),
                        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    conn = Connection("127.0.0.1", port)
    await conn.open()
    for _ in range(30):
        r = await conn.request(raw, streaming=False)
        assert r.status == 200, r.body[:300]
    c0, t0 = _procs.cpu_ns(pid), time.perf_counter()
    for _ in range(n):
        r = await conn.request(raw, streaming=False)
        assert r.status == 200, r.body[:300]
    wall = (time.perf_counter() - t0) / n * 1000
    cpu = (_procs.cpu_ns(pid) - c0) / n / 1e6
    conn.close()
    return cpu, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=300, help="requests per measurement")
    p.add_argument("--rounds", type=int, default=3, help="measurements of each, interleaved (the median is kept)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="modelyard-flowbench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        stub = start_stub(Path(tmp))
        write_stub_cards(home, {"bench-stub": (stub.root + "/v1", (1.0, 2.0))})
        gw = Gateway(home, extra_args=("--no-defaults",)).start()
        try:
            gw.wait_ready(120)
            key = gw.admin_key
            for path, body in (("/api/endpoints", {"name": "bench"}),
                               ("/api/endpoints/bench/deployments", {"name": "stub", "model": "bench-stub"})):
                code, answer = http("POST", gw.url + path, body, key=key)
                assert code == 201, answer
            for name, n in (("one", 1), ("five", 5)):
                code, answer = http("PUT", f"{gw.url}/api/flows/{name}", {"yaml": chain(n)}, key=key)
                assert code == 201, answer
            pid = gw.proc.pid  # type: ignore[union-attr]
            ask = {"question": "What is the capital of France?"}
            cases = {
                "direct": ("/v1/chat/completions", {"model": "bench", "max_tokens": 20,
                                                    "messages": [{"role": "user", "content": ask["question"]}]}),
                "one": ("/api/flows/one/run", {"inputs": ask}),
                "five": ("/api/flows/five/run", {"inputs": ask}),
            }
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
            for _ in range(args.rounds):
                for name, (path, body) in cases.items():
                    results[name].append(asyncio.run(measure(gw.port, pid, path, body, key, args.runs)))

            def med(name: str, i: int) -> float:
                values = sorted(r[i] for r in results[name])
                return values[len(values) // 2]

            direct, one, five = med("direct", 0), med("one", 0), med("five", 0)
            per_node = (five - one) / 4
            figures = {
                "direct_cpu_ms": direct, "one_node_run_cpu_ms": one, "five_node_run_cpu_ms": five,
                "per_node_cpu_ms": per_node, "per_node_beyond_direct_ms": per_node - direct,
                "per_node_over_direct": per_node / direct,
                "five_node_wall_ms": med("five", 1), "direct_wall_ms": med("direct", 1),
                "five_node_wall_over_five_direct": med("five", 1) / (5 * med("direct", 1)),
            }
        finally:
            gw.stop()
            _procs.stop_all()
    print(f"gateway CPU per request (ms), median of {args.rounds} rounds of {args.runs} sequential requests")
    print(f"  direct chat request to the endpoint   {direct:8.3f}")
    print(f"  flow run, 1 llm node                  {one:8.3f}")
    print(f"  flow run, 5 llm nodes                 {five:8.3f}")
    print(f"  per node ((5 − 1) ÷ 4)                {per_node:8.3f}   = {figures['per_node_over_direct']:.2f}× a direct "
          f"request; {figures['per_node_beyond_direct_ms']:+.3f} ms beyond it (target ≤ +0.3)")
    print(f"  wall: a 5-node run {figures['five_node_wall_ms']:.2f} ms = "
          f"{figures['five_node_wall_over_five_direct']:.2f}× five direct requests ({figures['direct_wall_ms']:.2f} ms each)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
