"""Streaming a run: the output node's text as it is generated, then the finished run."""

from __future__ import annotations

import time

import pytest

from modelyard.errors import ModelyardError
from modelyard.flows import FlowError, parse_flow
from modelyard.flows.engine import FlowEngine, FlowRunError
from modelyard.retry import Backoff

from .fake_steps import FakeSteps

pytestmark = pytest.mark.anyio

CHAT = """
inputs:
  question: {type: string, is_chat_input: true}
  chat_history: {type: list, is_chat_history: true, default: []}
outputs:
  answer: {type: string, reference: "${answer.output}", is_chat_output: true}
  topic: {type: string, reference: "${topic.output}"}
nodes:
- name: topic
  type: llm
  source: {type: inline, content: "user:\\nTopic of: {{q}}"}
  inputs: {endpoint: small, q: "${inputs.question}"}
- name: answer
  type: llm
  source: {type: inline, content: "system:\\nAbout {{topic}}.\\nuser:\\n{{q}}"}
  inputs: {endpoint: strong, q: "${inputs.question}", topic: "${topic.output}", max_tokens: 100}
"""

#: the chat output is a prompt node's: nothing to stream, so it comes whole at the end
TEMPLATED = """
inputs:
  question: {type: string, is_chat_input: true}
outputs:
  answer: {type: string, reference: "${wrap.output}", is_chat_output: true}
nodes:
- name: reply
  type: llm
  source: {type: inline, content: "user:\\n{{q}}"}
  inputs: {endpoint: strong, q: "${inputs.question}"}
- name: wrap
  type: prompt
  source: {type: inline, content: "Answer: {{r}}"}
  inputs: {r: "${reply.output}"}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def collect(events):
    got = []
    async for kind, value in events:
        got.append((time.perf_counter(), kind, value))
    return got


async def test_deltas_arrive_as_they_are_generated_and_then_the_run(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps(stream_pieces=5, stream_gap_s=0.05)
    engine = FlowEngine(flow, steps)
    assert engine.stream_node() == "answer"
    got = await collect(engine.run_stream({"question": "What is a DAG?"}))

    kinds = [kind for _, kind, _ in got]
    assert kinds == ["delta"] * 5 + ["done"]
    first_delta, done = got[0][0], got[-1][0]
    assert done - first_delta >= 0.15  # the first delta was not held back until the end
    run = got[-1][2]
    assert "".join(value for _, kind, value in got if kind == "delta") == run.outputs["answer"]
    assert run.outputs["answer"] == "strong: What is a DAG?"
    assert [c.kind for c in steps.calls] == ["chat", "chat_stream"]  # only the output node streams
    assert steps.calls[1].params == {"max_tokens": 100}
    span = run.trace.span("answer")
    assert span.status == "ok" and span.completion_tokens == 5 and span.output == run.outputs["answer"]
    assert steps.streams[0].closed


async def test_an_output_that_is_not_an_llm_answer_comes_whole_at_the_end(tmp_path):
    flow = parse_flow(TEMPLATED, tmp_path)
    steps = FakeSteps()
    engine = FlowEngine(flow, steps)
    assert engine.stream_node() is None
    got = await collect(engine.run_stream({"question": "Hi"}))
    assert [(kind, value if kind == "delta" else None) for _, kind, value in got] == [
        ("delta", "Answer: strong: Hi"), ("done", None)]
    assert [c.kind for c in steps.calls] == ["chat"]


async def test_a_stream_that_fails_to_start_is_tried_again(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    busy = ModelyardError("no ready instance", status=503)
    steps = FakeSteps(failures={"strong": [busy]})
    engine = FlowEngine(flow, steps, retries=1, backoff=Backoff(0.0, 0.0, jitter=0))
    got = await collect(engine.run_stream({"question": "Hi"}))
    assert got[-1][2].trace.span("answer").attempts == 2


async def test_a_stream_that_fails_midway_raises_after_its_deltas(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps(stream_pieces=4, stream_error=ModelyardError("upstream closed", status=502))
    seen = []
    deltas = []
    with pytest.raises(FlowRunError) as caught:
        async for kind, value in FlowEngine(flow, steps).run_stream({"question": "Hello there"},
                                                                    on_trace=seen.append):
            deltas.append(value)
    assert len(deltas) == 2
    assert caught.value.node == "answer" and caught.value.to_error().status == 502
    assert seen[0].status == "error" and steps.streams[0].closed


async def test_leaving_the_stream_early_cancels_the_run(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps(stream_pieces=5, stream_gap_s=0.05)
    seen = []
    events = FlowEngine(flow, steps).run_stream({"question": "Long answer please"}, on_trace=seen.append)
    assert (await events.__anext__())[0] == "delta"
    await events.aclose()  # the client hung up
    (trace,) = seen
    assert trace.status == "cancelled" and trace.span("answer").status == "cancelled"
    assert steps.streams[0].closed


async def test_inputs_that_do_not_fit_fail_before_the_first_event(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps()
    events = FlowEngine(flow, steps).run_stream({})
    with pytest.raises(FlowError, match="missing required flow input 'question'"):
        await events.__anext__()
    assert steps.calls == []
    with pytest.raises(FlowError, match="no output 'nope'"):
        await FlowEngine(flow, steps).run_stream({"question": "x"}, output="nope").__anext__()


async def test_any_output_can_be_streamed_by_name(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps(stream_pieces=3)
    got = await collect(FlowEngine(flow, steps).run_stream({"question": "Q"}, output="topic"))
    assert [c.kind for c in steps.calls] == ["chat_stream", "chat"]
    assert "".join(v for _, k, v in got if k == "delta") == "small: Topic of: Q"
