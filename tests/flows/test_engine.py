"""The flow engine: what a run returns, in what order and how fast nodes run, and how a run fails.

Model and index steps are a `FakeSteps` (deterministic, with delays and failures per endpoint); python
nodes run in a real worker process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest

from modelyard.errors import ModelyardError
from modelyard.flows import FlowError, load_flow, parse_flow
from modelyard.flows.engine import FlowEngine, FlowRunError
from modelyard.flows.python_worker import PythonWorker
from modelyard.flows.trace import configure_otel, export_otel
from modelyard.retry import Backoff

from .conftest import EXAMPLES
from .fake_steps import FakeSteps

pytestmark = pytest.mark.anyio

#: retries without waiting
NO_WAIT = Backoff(0.0, 0.0, jitter=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def workers():
    """Python workers made by the test, closed after it."""
    made: list[PythonWorker] = []

    def make(flow) -> PythonWorker:
        worker = PythonWorker.for_flow(flow)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.close()


PARALLEL = """
inputs:
  topic: {type: string}
outputs:
  joined: {type: string, reference: "${join.output}"}
nodes:
- name: left
  type: llm
  source: {type: inline, content: "user:\\n{{topic}} from the left"}
  inputs: {endpoint: slow_a, topic: "${inputs.topic}"}
- name: right
  type: llm
  source: {type: inline, content: "user:\\n{{topic}} from the right"}
  inputs: {endpoint: slow_b, topic: "${inputs.topic}"}
- name: join
  type: prompt
  source: {type: inline, content: "{{a}} | {{b}}"}
  inputs: {a: "${left.output}", b: "${right.output}"}
"""


def parallel_flow(tmp_path):
    """Two llm nodes that read only the flow input, and a prompt node joining their answers."""
    return parse_flow(PARALLEL, tmp_path)


# -- answers ----------------------------------------------------------------------------


async def test_retrieval_chat_flow_answers_from_the_hits_and_traces_every_node(workers):
    flow = load_flow(EXAMPLES / "chat_with_retrieval")
    steps = FakeSteps(answers={"small": "How many days of paid leave do employees get?"})
    history = [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello! Ask me about the handbook."}}]
    run = await FlowEngine(flow, steps, workers(flow)).run({"question": "And leave?", "chat_history": history})

    assert run.outputs["answer"] == "strong: And leave?"
    assert run.outputs["sources"] == steps.hits[:4]
    assert [c.kind for c in steps.calls] == ["chat", "embed", "retrieve", "chat"]
    rewrite, embed, search, answer = steps.calls
    assert rewrite.params == {"max_tokens": 64, "temperature": 0.0}
    assert [m["role"] for m in rewrite.payload] == ["system", "user", "assistant", "user"]
    assert embed.payload == ["How many days of paid leave do employees get?"]
    assert search.payload == [45.0, 0.5, -0.5] and search.params["top_k"] == 4
    system = answer.payload[0]["content"]
    assert "- Employees get 25 days of paid leave. (source: handbook.pdf)" in system
    assert "- Leave requests go to your manager. (source: unknown)" in system
    assert answer.params == {"temperature": 0.2, "max_tokens": 512, "stop": ["\nUser:"]}

    trace = run.trace
    assert trace.status == "ok" and trace.flow == "handbook-chat"
    assert [s.node for s in trace.spans] == ["rewrite_question", "embed_question", "search_docs",
                                             "format_context", "compose_answer"]
    assert all(s.status == "ok" and s.attempts == 1 for s in trace.spans)
    compose = trace.span("compose_answer")
    assert (compose.endpoint, compose.deployment, compose.cache) == ("strong", "strong-d1", "miss")
    assert compose.prompt == answer.payload and compose.request_id
    assert trace.prompt_tokens == 10 + 10 + 10 and trace.completion_tokens == 5 + 5
    assert trace.cost_usd == pytest.approx(0.003)
    stored = trace.to_dict(max_chars=60)
    assert stored["spans"][3]["output"].startswith('"- Employees get 25 days')
    assert stored["spans"][3]["output"].endswith("characters]")
    assert stored["prompt_tokens"] == 30 and stored["spans"][0]["latency_ms"] >= 0


async def test_nodes_see_their_own_name_in_the_step_context():
    flow = load_flow(EXAMPLES / "variants")
    flow = flow.model_copy(update={"nodes": [n for n in flow.nodes if n.name == "summarize"],
                                   "outputs": {"summary": flow.outputs["summary"]}})
    steps = FakeSteps()
    await FlowEngine(flow, steps).run({})
    assert steps.calls[0].node == "summarize"


async def test_inputs_that_do_not_fit_are_a_flow_error_before_anything_runs():
    flow = load_flow(EXAMPLES / "chat_with_retrieval")
    steps = FakeSteps()
    with pytest.raises(FlowError) as caught:
        await FlowEngine(flow, steps, PythonWorker(flow.base_dir)).run({"questoin": "x"})
    assert "unknown flow input 'questoin'" in str(caught.value)
    assert caught.value.to_error().status == 400
    assert steps.calls == []


def test_an_engine_for_a_flow_with_python_nodes_needs_a_worker():
    flow = load_flow(EXAMPLES / "chat_with_retrieval")
    with pytest.raises(ValueError, match="format_context"):
        FlowEngine(flow, FakeSteps())


# -- concurrency -------------------------------------------------------------------------


async def test_two_independent_200ms_llm_nodes_take_the_longer_not_the_sum(tmp_path):
    flow = parallel_flow(tmp_path)
    steps = FakeSteps(delays={"slow_a": 0.2, "slow_b": 0.2})
    engine = FlowEngine(flow, steps)
    await engine.run({"topic": "warm-up"})
    elapsed = []
    for _ in range(3):
        started = time.perf_counter()
        run = await engine.run({"topic": "rivers"})
        elapsed.append(time.perf_counter() - started)
    assert run.outputs["joined"] == "slow_a: rivers from the left | slow_b: rivers from the right"
    # run one after the other they would take 0.4 s; the 1.1 x 200 ms target is measured by bench/flow_engine.py
    assert min(elapsed) < 0.3


async def test_a_slow_branch_does_not_hold_back_an_independent_one(tmp_path):
    text = """
inputs:
  q: {type: string}
outputs:
  slow: {type: string, reference: "${slow.output}"}
  second: {type: string, reference: "${second.output}"}
nodes:
- name: slow
  type: llm
  source: {type: inline, content: "user:\\n{{q}}"}
  inputs: {endpoint: slow, q: "${inputs.q}"}
- name: first
  type: llm
  source: {type: inline, content: "user:\\n{{q}}"}
  inputs: {endpoint: quick, q: "${inputs.q}"}
- name: second
  type: llm
  source: {type: inline, content: "user:\\n{{q}}"}
  inputs: {endpoint: quick, q: "${first.output}"}
"""
    flow = parse_flow(text, tmp_path)
    run = await FlowEngine(flow, FakeSteps(delays={"slow": 0.3, "quick": 0.05})).run({"q": "x"})
    # level by level, 'second' (level 1) would wait for 'slow' (level 0); here it runs as soon as 'first' is done
    assert run.trace.span("second").ended_at < run.trace.span("slow").ended_at
    assert run.trace.latency_ms < 300 + 60


# -- activate and bypass ----------------------------------------------------------------


async def test_activate_runs_only_the_matching_branch(workers):
    flow = load_flow(EXAMPLES / "branching")
    steps = FakeSteps(answers={"small": "refund"}, delays={"strong": 0.01})
    run = await FlowEngine(flow, steps, workers(flow)).run({"message": "Bitte mein Geld zurück, danke"})

    statuses = {s.node: s.status for s in run.trace.spans}
    assert statuses == {"classify": "ok", "detect_language": "ok", "human_handoff": "bypassed",
                        "refund_reply": "ok", "general_reply": "bypassed", "merge_reply": "ok"}
    refund_call = next(c for c in steps.calls if c.endpoint == "strong")
    assert "Answer in German." in refund_call.payload[0]["content"]
    # merge's general and ticket parameters read bypassed nodes and have defaults: left out, so no "(ticket …)"
    assert run.outputs == {"reply": "strong: Bitte mein Geld zurück, danke", "category": "refund"}
    assert run.trace.span("merge_reply").inputs == {"refund": "strong: Bitte mein Geld zurück, danke"}


async def test_the_other_branch_and_an_activated_python_node(workers):
    flow = load_flow(EXAMPLES / "branching")
    steps = FakeSteps(answers={"small": "other"})
    run = await FlowEngine(flow, steps, workers(flow)).run({"message": "Where is my parcel?", "escalate": True})
    statuses = {s.node: s.status for s in run.trace.spans}
    assert statuses["refund_reply"] == "bypassed" and statuses["general_reply"] == "ok"
    assert statuses["human_handoff"] == "ok"
    ticket = run.trace.span("human_handoff").output
    assert ticket["priority"] == 2  # the literal "2" converted for `priority: int`
    assert run.outputs["reply"] == ('Thanks for your message. A member of our team will answer '
                                    f'"Where is my parcel?" within a day.\n\n(ticket {ticket["id"]})')
    assert [c.endpoint for c in steps.calls] == ["small"]


async def test_a_node_whose_every_dependency_was_bypassed_is_bypassed_and_outputs_read_none(tmp_path):
    text = """
inputs:
  go: {type: bool, default: false}
outputs:
  last: {type: string, reference: "${after.output}"}
  field: {type: string, reference: "${gated.output.text}"}
nodes:
- name: gated
  type: llm
  activate: {when: "${inputs.go}", is: true}
  source: {type: inline, content: "user:\\nhello"}
  inputs: {endpoint: small}
- name: after
  type: prompt
  source: {type: inline, content: "after {{x}}"}
  inputs: {x: "${gated.output}"}
- name: forced
  type: prompt
  activate: {when: "${gated.output}", is: null}
  source: {type: inline, content: "forced {{x}}"}
  inputs: {x: "${gated.output}"}
"""
    flow = parse_flow(text, tmp_path)
    steps = FakeSteps()
    run = await FlowEngine(flow, steps).run({})
    assert {s.node: s.status for s in run.trace.spans} == {"gated": "bypassed", "after": "bypassed",
                                                           "forced": "ok"}
    assert run.trace.span("forced").output == "forced None"
    assert run.outputs == {"last": None, "field": None}
    assert steps.calls == []
    with pytest.raises(FlowRunError) as caught:  # it ran, and a string has no field 'text'
        await FlowEngine(flow, steps).run({"go": True})
    assert caught.value.message == "flow output 'field': ${gated.output.text}: str value has no field 'text'"
    assert caught.value.node is None and caught.value.trace.span("after").output == "after small: hello"


# -- failures -----------------------------------------------------------------------------


async def test_retries_a_503_then_succeeds_and_counts_the_attempts(tmp_path):
    flow = parallel_flow(tmp_path)
    busy = ModelyardError("deployment slow_a has no ready instance", status=503, code="no_instance")
    steps = FakeSteps(failures={"slow_a": [busy, busy]})
    run = await FlowEngine(flow, steps, backoff=NO_WAIT).run({"topic": "t"})
    assert run.trace.span("left").attempts == 3 and run.trace.span("left").status == "ok"
    assert run.trace.span("right").attempts == 1
    assert run.outputs["joined"].startswith("slow_a: t from the left")


async def test_a_429_waits_the_retry_after_it_carries(tmp_path):
    flow = parallel_flow(tmp_path)
    limited = ModelyardError("slow down", status=429, headers={"retry-after-ms": "150"})
    steps = FakeSteps(failures={"slow_b": [limited]})
    started = time.perf_counter()
    run = await FlowEngine(flow, steps, backoff=NO_WAIT).run({"topic": "t"})
    assert time.perf_counter() - started >= 0.15
    assert run.trace.span("right").attempts == 2


@pytest.mark.parametrize("error, status", [
    (ModelyardError("context too long", status=400, code="context_length_exceeded"), 400),
    (ModelyardError("budget spent", status=429, type="insufficient_quota", code="budget_exhausted"), 429),
    (ModelyardError("upstream failed", status=502, code="upstream_error"), 502),
])
async def test_errors_that_asking_again_cannot_fix_fail_the_node_at_once(tmp_path, error, status):
    flow = parallel_flow(tmp_path)
    steps = FakeSteps(failures={"slow_a": [error] * 3})
    engine = FlowEngine(flow, steps, backoff=NO_WAIT, retries=0 if status == 502 else 2)
    with pytest.raises(FlowRunError) as caught:
        await engine.run({"topic": "t"})
    failure = caught.value
    assert failure.node == "left" and failure.message == f"node 'left' failed: {error.message}"
    assert failure.trace.span("left").attempts == 1
    body = failure.to_error()
    assert (body.status, body.code, body.param) == (status, error.code, "nodes.left")


async def test_a_failed_node_cancels_the_nodes_running_beside_it_and_its_dependents_never_start(tmp_path):
    flow = parallel_flow(tmp_path)
    steps = FakeSteps(delays={"slow_a": 0.05, "slow_b": 5.0},
                      failures={"slow_a": [ModelyardError("bad request", status=400)]})
    seen = []
    started = time.perf_counter()
    with pytest.raises(FlowRunError) as caught:
        await FlowEngine(flow, steps).run({"topic": "t"}, on_trace=seen.append)
    assert time.perf_counter() - started < 1.0
    trace = caught.value.trace
    assert seen == [trace] and trace.status == "error" and trace.failed_node == "left"
    assert {s.node: s.status for s in trace.spans} == {"left": "error", "right": "cancelled"}
    assert trace.span("join") is None
    assert [c.outcome for c in steps.calls] == ["error", "cancelled"]


async def test_a_node_that_overruns_its_timeout_fails_naming_it(tmp_path):
    flow = parallel_flow(tmp_path)
    steps = FakeSteps(delays={"slow_a": 5.0})
    started = time.perf_counter()
    with pytest.raises(FlowRunError) as caught:
        await FlowEngine(flow, steps, node_timeout_s=5, timeouts={"left": 0.1}).run({"topic": "t"})
    assert time.perf_counter() - started < 1.0
    assert caught.value.message == "node 'left' timed out after 0.1 s"
    assert caught.value.to_error().status == 504 and caught.value.code == "flow_node_timeout"
    assert caught.value.trace.span("left").status == "error"
    assert steps.calls[0].outcome == "cancelled"


async def test_an_endpoint_the_flow_names_that_does_not_exist_is_the_flows_fault_not_a_404(tmp_path):
    flow = parallel_flow(tmp_path)
    steps = FakeSteps(failures={"slow_b": [ModelyardError("endpoint 'slow_b' does not exist", status=404,
                                                          code="endpoint_not_found")]})
    with pytest.raises(FlowRunError) as caught:
        await FlowEngine(flow, steps).run({"topic": "t"})
    assert caught.value.message == "node 'right' failed: endpoint 'slow_b' does not exist"
    assert (caught.value.to_error().status, caught.value.code) == (500, "endpoint_not_found")


async def test_one_engine_per_flow_runs_each_call_with_that_calls_steps(tmp_path):
    engine = FlowEngine(parallel_flow(tmp_path))
    first, second = FakeSteps(), FakeSteps(answers={"slow_a": "A", "slow_b": "B"})
    assert (await engine.run({"topic": "t"}, steps=first)).outputs["joined"].startswith("slow_a: t")
    assert (await engine.run({"topic": "t"}, steps=second)).outputs["joined"] == "A | B"
    assert len(first.calls) == len(second.calls) == 2
    with pytest.raises(ValueError, match="no StepCalls"):
        await engine.run({"topic": "t"})


async def test_a_template_that_fails_to_render_names_the_node(tmp_path):
    text = """
inputs:
  x: {type: object, default: {}}
outputs:
  out: {type: string, reference: "${p.output}"}
nodes:
- name: p
  type: prompt
  source: {type: inline, content: "{{ x.a.b }}"}
  inputs: {x: "${inputs.x}"}
"""
    flow = parse_flow(text, tmp_path)
    with pytest.raises(FlowRunError) as caught:
        await FlowEngine(flow, FakeSteps()).run({})
    assert caught.value.node == "p" and "template failed to render" in caught.value.message


# -- cancellation -------------------------------------------------------------------------


async def test_cancelling_the_run_cancels_the_step_calls_in_flight(tmp_path):
    flow = parallel_flow(tmp_path)
    steps = FakeSteps(delays={"slow_a": 5.0, "slow_b": 5.0})
    seen = []
    task = asyncio.create_task(FlowEngine(flow, steps).run({"topic": "t"}, on_trace=seen.append))
    await asyncio.sleep(0.05)
    assert [c.outcome for c in steps.calls] == ["running", "running"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c.outcome for c in steps.calls] == ["cancelled", "cancelled"]
    (trace,) = seen
    assert trace.status == "cancelled"
    assert {s.node: s.status for s in trace.spans} == {"left": "cancelled", "right": "cancelled"}


# -- traces out -----------------------------------------------------------------------------


async def test_traces_are_not_exported_without_an_opentelemetry_provider(tmp_path, caplog):
    run = await FlowEngine(parallel_flow(tmp_path), FakeSteps()).run({"topic": "t"})
    assert export_otel(run.trace) is False
    assert configure_otel(None) is False
    if importlib.util.find_spec("opentelemetry.sdk") is None:  # not a dependency (yet): it says what to install
        assert configure_otel("http://127.0.0.1:4318") is False
        assert "install opentelemetry-sdk" in caplog.text
