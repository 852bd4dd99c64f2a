"""Flow engine overhead: what running a DAG costs beyond its model calls.

Two figures, each against its baseline measured in the same run:

- **CPU per node**: a 5-node flow (rewrite → embed → retrieve → prompt →
  answer) whose steps answer at once, 1,000 runs (engine built per call,
  and one engine per flow), ÷ the CPU of awaiting the same five steps
  directly. Target: ≤ 0.3 ms of engine CPU per node beyond the calls.
- **Concurrency**: two independent llm nodes whose steps take 200 ms each;
  flow latency ÷ 200 ms. Target ≤ 1.1 (the sum would be 2.0).

    python bench/flow_engine.py [--runs 1000] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelyard.flows import parse_flow  # noqa: E402
from modelyard.flows.engine import FlowEngine  # noqa: E402
from modelyard.flows.steps import StepResult  # noqa: E402

FIVE_NODES = """
inputs:
  question: {type: string, is_chat_input: true}
  chat_history: {type: list, is_chat_history: true, default: []}
outputs:
  answer: {type: string, reference: "${answer.output}", is_chat_output: true}
nodes:
- name: rewrite
  type: llm
  source: {type: inline, content: "system:\\nRewrite the question.\\nuser:\\n{{question}}"}
  inputs: {endpoint: small, question: "${inputs.question}", max_tokens: 64, temperature: 0}
- name: embed
  type: embed
  inputs: {endpoint: embeddings, input: "${rewrite.output}"}
- name: search
  type: retrieve
  inputs: {index: handbook, query: "${embed.output}", top_k: 3}
- name: context
  type: prompt
  source: {type: inline, content: "{% for h in hits %}- {{h.text}}\\n{% endfor %}"}
  inputs: {hits: "${search.output}"}
- name: answer
  type: llm
  source: {type: inline, content: "system:\\nAnswer from:\\n{{context}}\\nuser:\\n{{question}}"}
  inputs: {endpoint: strong, context: "${context.output}", question: "${inputs.question}", max_tokens: 256}
"""

ONE_PYTHON = """
inputs:
  text: {type: string}
outputs:
  out: {type: string, reference: "${shout.output}"}
nodes:
- name: shout
  type: python
  source: {type: code, path: tools.py, function: shout}
  inputs: {text: "${inputs.text}"}
"""


PARALLEL = """
inputs:
  topic: {type: string}
outputs:
  joined: {type: string, reference: "${join.output}"}
nodes:
- name: left
  type: llm
  source: {type: inline, content: "user:\\n{{topic}} from the left"}
  inputs: {endpoint: slow, topic: "${inputs.topic}"}
- name: right
  type: llm
  source: {type: inline, content: "user:\\n{{topic}} from the right"}
  inputs: {endpoint: slow, topic: "${inputs.topic}"}
- name: join
  type: prompt
  source: {type: inline, content: "{{a}} | {{b}}"}
  inputs: {a: "${left.output}", b: "${right.output}"}
"""


class ZeroSteps:
    """Steps that answer at once with a ready result: what is measured is the engine alone."""

    chat_result = StepResult(value="How many days of leave?", endpoint="small", prompt_tokens=10,
                             completion_tokens=5, cost_usd=0.001)
    embed_result = StepResult(value=[[0.1] * 384], endpoint="embeddings", prompt_tokens=6)
    hits = StepResult(value=[{"text": f"hit {i}", "score": 0.9, "metadata": {}} for i in range(3)])

    async def chat(self, endpoint, messages, params):  # noqa: ANN001, ANN201
        return self.chat_result

    async def complete(self, endpoint, prompt, params):  # noqa: ANN001, ANN201
        return self.chat_result

    async def embed(self, endpoint, texts):  # noqa: ANN001, ANN201
        return self.embed_result

    async def retrieve(self, index, query, top_k, filter):  # noqa: ANN001, ANN201
        return self.hits



class SlowSteps(ZeroSteps):
    async def chat(self, endpoint, messages, params):  # noqa: ANN001, ANN201
        await asyncio.sleep(0.2)
        return self.chat_result


async def cpu_per_node(runs: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    flow = parse_flow(FIVE_NODES, folder)
    steps, inputs, nodes = ZeroSteps(), {"question": "How much leave do I get?"}, len(flow.nodes)
    shared = FlowEngine(flow)

    async def direct() -> None:  # the baseline: the same five steps awaited one after the other
        await steps.chat("small", [], {})
        await steps.embed("embeddings", ["q"])
        await steps.retrieve("handbook", [0.1], 3, None)
        await steps.chat("strong", [], {})

    for _ in range(100):
        await FlowEngine(flow, steps).run(inputs)
        await shared.run(inputs, steps=steps)
        await direct()
    result = {}
    for label, once in (("baseline_direct_steps", direct), ("engine_per_call", lambda: FlowEngine(flow, steps).run(inputs)),
                        ("engine_per_flow", lambda: shared.run(inputs, steps=steps))):
        best = None
        for _ in range(3):
            cpu = time.process_time()
            for _ in range(runs):
                await once()
            per_node = (time.process_time() - cpu) / (runs * nodes) * 1000
            best = per_node if best is None else min(best, per_node)
        result[label] = best
    for label in ("engine_per_call", "engine_per_flow"):
        result[label + "_beyond_calls"] = result[label] - result["baseline_direct_steps"]
    return result


async def concurrency() -> dict:
    flow = parse_flow(PARALLEL, Path(tempfile.mkdtemp(prefix="flow-bench-")))
    engine = FlowEngine(flow, SlowSteps())
    await engine.run({"topic": "warm-up"})
    took = []
    for _ in range(5):
        started = time.perf_counter()
        await engine.run({"topic": "rivers"})
        took.append(time.perf_counter() - started)
    took.sort()
    return {"latency_ms_p50": took[2] * 1000, "ratio_to_one_node": took[2] / 0.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--out")
    args = parser.parse_args()
    cpu = asyncio.run(cpu_per_node(args.runs))
    both = asyncio.run(concurrency())
    print(f"CPU per node (ms): direct steps {cpu['baseline_direct_steps']:.4f}; engine built per call "
          f"{cpu['engine_per_call']:.4f} (+{cpu['engine_per_call_beyond_calls']:.4f}), one engine per flow "
          f"{cpu['engine_per_flow']:.4f} (+{cpu['engine_per_flow_beyond_calls']:.4f}); target +0.3 ms: "
          f"{'met' if cpu['engine_per_call_beyond_calls'] <= 0.3 else 'NOT MET'}")
    print(f"two independent 200 ms llm nodes: {both['latency_ms_p50']:.1f} ms p50 = "
          f"{both['ratio_to_one_node']:.3f} x one node (target <= 1.1: "
          f"{'met' if both['ratio_to_one_node'] <= 1.1 else 'NOT MET'})")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu_per_node_ms": cpu, "concurrency": both}, indent=2))


if __name__ == "__main__":
    main()
