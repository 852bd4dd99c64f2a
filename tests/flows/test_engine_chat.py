"""A chat flow behind the OpenAI chat API: messages become flow inputs, a run becomes the answer."""

from __future__ import annotations

import pytest

from modelyard.errors import ModelyardError
from modelyard.flows import load_flow, parse_flow
from modelyard.flows.chat import chat_chunks, chat_inputs, completion_body
from modelyard.flows.engine import FlowEngine
from modelyard.flows.python_worker import PythonWorker
from modelyard.wire import ChatCompletionRequest

from .conftest import EXAMPLES
from .fake_steps import FakeSteps

pytestmark = pytest.mark.anyio

CHAT = """
inputs:
  question: {type: string, is_chat_input: true}
  chat_history: {type: list, is_chat_history: true, default: []}
  tone: {type: string, default: plain}
  max_words: {type: int, default: 50}
outputs:
  answer: {type: string, reference: "${answer.output}", is_chat_output: true}
nodes:
- name: answer
  type: llm
  source:
    type: inline
    content: |
      system:
      Answer in a {{tone}} tone, in at most {{max_words}} words.
      {% for turn in chat_history %}
      user:
      {{turn.inputs.question}}
      assistant:
      {{turn.outputs.answer}}
      {% endfor %}
      user:
      {{question}}
  inputs: {endpoint: strong, question: "${inputs.question}", chat_history: "${inputs.chat_history}",
           tone: "${inputs.tone}", max_words: "${inputs.max_words}"}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request(*messages: tuple[str, str], **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="support-chat",
                                 messages=[{"role": r, "content": c} for r, c in messages], **fields)


def test_earlier_turns_become_prompt_flow_chat_history(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    inputs = chat_inputs(flow, request(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                                       ("user", "What is a DAG?"), ("assistant", "A graph without cycles."),
                                       ("user", "And a flow?"), ("user", "Briefly.")))
    assert inputs == {
        "question": "And a flow?\n\nBriefly.",
        "chat_history": [
            {"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello!"}},
            {"inputs": {"question": "What is a DAG?"}, "outputs": {"answer": "A graph without cycles."}},
        ],
    }


def test_other_inputs_come_from_metadata_and_undeclared_keys_are_left_alone(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    inputs = chat_inputs(flow, request(("user", "Hi"), metadata={"tone": "warm", "max_words": "20",
                                                                  "trace": "abc", "question": "not this"}))
    assert inputs == {"question": "Hi", "chat_history": [], "tone": "warm", "max_words": "20"}
    assert flow.bind_inputs(inputs)["max_words"] == 20


def test_a_flow_that_is_not_a_chat_flow_is_a_400_for_the_chat_api():
    flow = load_flow(EXAMPLES / "branching")
    with pytest.raises(ModelyardError) as caught:
        chat_inputs(flow, request(("user", "Hi")), name="triage")
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "not_a_chat_flow", "model")
    assert "POST /api/flows/triage/run" in error.message


def test_the_last_message_must_be_the_users(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    with pytest.raises(ModelyardError) as caught:
        chat_inputs(flow, request(("user", "Hi"), ("assistant", "Hello")))
    assert (caught.value.status, caught.value.param) == (400, "messages")


async def test_a_chat_request_runs_the_flow_and_answers_a_chat_completion(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps()
    req = request(("user", "Hi"), ("assistant", "Hello!"), ("user", "What is a DAG?"), metadata={"tone": "warm"})
    run = await FlowEngine(flow, steps).run(chat_inputs(flow, req))
    sent = steps.calls[0].payload
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "Answer in a warm tone, in at most 50 words."
    assert sent[2]["content"] == "Hello!"
    body = completion_body(flow, run, model="support-chat", response_id="chatcmpl-1")
    assert body["id"] == "chatcmpl-1" and body["object"] == "chat.completion" and body["model"] == "support-chat"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "strong: What is a DAG?"},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


async def test_the_usage_of_a_flow_answer_sums_its_nodes():
    flow = load_flow(EXAMPLES / "chat_with_retrieval")
    worker = PythonWorker.for_flow(flow)
    try:
        run = await FlowEngine(flow, FakeSteps(), worker).run(chat_inputs(flow, request(("user", "Leave?"))))
    finally:
        await worker.close()
    body = completion_body(flow, run, model="handbook")
    # two chat steps (10 + 5 each) and an embedding (10 prompt tokens); retrieval counts none
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40}


async def test_a_streamed_run_becomes_chat_completion_chunks(tmp_path):
    flow = parse_flow(CHAT, tmp_path)
    steps = FakeSteps(stream_pieces=3)
    events = FlowEngine(flow, steps).run_stream(chat_inputs(flow, request(("user", "Stream me"))))
    chunks = [c async for c in chat_chunks(events, model="support-chat", include_usage=True, response_id="c-1")]
    assert all(c["id"] == "c-1" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    assert text == "strong: Stream me" and len(chunks) == 1 + 3 + 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 15
