"""Python nodes: user code runs in a worker process of its own, and its failures name the node."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from modelyard.flows import load_flow
from modelyard.flows.engine import FlowEngine, FlowRunError
from modelyard.flows.python_worker import PythonWorker

from .conftest import EXAMPLES
from .fake_steps import FakeSteps

pytestmark = pytest.mark.anyio

TOOLS = '''
import asyncio
import os
import sys
import time

from promptflow import tool


@tool
def shout(text: str) -> str:
    return text.upper() + "!"


def explode(text: str) -> str:
    helper = {"a": 1}
    return helper[text]


def a_set(text: str):
    return {text}


def nap(seconds: float, tag: str = "") -> str:
    time.sleep(seconds)
    return f"slept {seconds} {tag}"


async def async_nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


async def stubborn(seconds: float) -> str:
    while True:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            pass


def pid(text: str = "") -> int:
    return os.getpid()


def environment(text: str = "") -> dict:
    print("a print() goes to the log, not into the protocol")
    return {"keys": sorted(os.environ), "cwd": os.getcwd(), "flow_var": os.environ.get("FLOW_SETTING")}
'''

FLOW = """
inputs:
  text: {{type: string, default: hello}}
  seconds: {{type: double, default: 0}}
outputs:
  out: {{type: string, reference: "${{{last}.output}}"}}
environment_variables:
  FLOW_SETTING: from-the-flow
nodes:
- name: first
  type: llm
  source: {{type: inline, content: "user:\\n{{{{text}}}}"}}
  inputs: {{endpoint: small, text: "${{inputs.text}}"}}
{nodes}
"""


def node(name: str, function: str, **inputs: str) -> str:
    given = ", ".join(f'{k}: "{v}"' for k, v in inputs.items())
    return (f"- name: {name}\n  type: python\n  source: {{type: code, path: tools.py, function: {function}}}\n"
            f"  inputs: {{{given}}}\n")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def python_flow(flow_dir):
    """``make(nodes, last)``: a flow of the llm node ``first`` and the given python nodes, with its worker."""
    made: list[PythonWorker] = []

    def make(nodes: str, last: str):
        folder = flow_dir(FLOW.format(nodes=nodes, last=last), {"tools.py": TOOLS})
        flow = load_flow(folder)
        worker = PythonWorker.for_flow(flow)
        made.append(worker)
        return flow, worker

    yield make
    for worker in made:
        await worker.close()


async def test_a_python_node_computes_in_the_worker(python_flow):
    flow, worker = python_flow(node("loud", "shout", text="${first.output}"), "loud")
    run = await FlowEngine(flow, FakeSteps(), worker).run({"text": "hi"})
    assert run.outputs == {"out": "SMALL: HI!"}
    assert worker.pid is not None and worker.pid != os.getpid()


async def test_the_variants_example_counts_words_in_python():
    flow = load_flow(EXAMPLES / "variants")
    worker = PythonWorker.for_flow(flow)
    try:
        run = await FlowEngine(flow, FakeSteps(answers={"small": "Prompt flow builds LLM apps."}), worker).run({})
    finally:
        await worker.close()
    assert run.outputs == {"summary": "Prompt flow builds LLM apps.", "words": 5}


async def test_a_python_node_that_raises_fails_the_run_naming_it_and_the_trace_keeps_what_ran(python_flow):
    nodes = node("lookup", "explode", text="${first.output}") + node("after", "shout", text="${lookup.output}")
    flow, worker = python_flow(nodes, "after")
    with pytest.raises(FlowRunError) as caught:
        await FlowEngine(flow, FakeSteps(), worker).run({"text": "hi"})
    failure = caught.value
    assert failure.node == "lookup"
    assert failure.message == "node 'lookup' raised KeyError: 'small: hi'"
    assert 'tools.py", line 16, in explode\n    return helper[text]' in failure.traceback
    assert "python_child" not in failure.traceback
    trace = failure.trace
    assert {s.node: s.status for s in trace.spans} == {"first": "ok", "lookup": "error"}
    assert trace.span("first").output == "small: hi" and trace.completion_tokens == 5
    assert trace.span("lookup").traceback == failure.traceback
    body = failure.to_error()
    assert (body.status, body.code, body.param) == (500, "flow_node_failed", "nodes.lookup")


async def test_a_result_json_cannot_carry_is_an_error_naming_the_node(python_flow):
    flow, worker = python_flow(node("odd", "a_set", text="${inputs.text}"), "odd")
    with pytest.raises(FlowRunError) as caught:
        await FlowEngine(flow, FakeSteps(), worker).run({})
    assert caught.value.message == ("node 'odd' (tools.py:a_set): the function returned a value that is not "
                                    "JSON-serialisable (Object of type set is not JSON serializable)")


async def test_a_worker_killed_mid_call_fails_that_node_and_the_next_run_gets_a_new_worker(python_flow):
    flow, worker = python_flow(node("sleepy", "nap", seconds="${inputs.seconds}"), "sleepy")
    engine = FlowEngine(flow, FakeSteps(), worker)
    await worker.start()
    first_pid = worker.pid
    running = asyncio.create_task(engine.run({"seconds": 30}))
    await asyncio.sleep(0.3)
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(FlowRunError) as caught:
        await running
    assert caught.value.node == "sleepy"
    assert caught.value.message.startswith("node 'sleepy' failed: the python worker died (exit code -9) "
                                           "while running it")
    run = await engine.run({"seconds": 0})
    assert run.outputs == {"out": "slept 0.0 "}
    assert worker.pid not in (None, first_pid) and worker.restarts == 1


async def test_a_sync_node_past_its_timeout_retires_the_worker_without_failing_other_runs(python_flow):
    nodes = node("sleepy", "nap", seconds="${inputs.seconds}", tag="${inputs.text}")
    flow, worker = python_flow(nodes, "sleepy")
    await worker.start()
    first_pid = worker.pid
    hanging = FlowEngine(flow, FakeSteps(), worker, timeouts={"sleepy": 0.3})
    patient = FlowEngine(flow, FakeSteps(), worker)
    started = time.perf_counter()
    outcomes = await asyncio.gather(hanging.run({"seconds": 30, "text": "hung"}),
                                    patient.run({"seconds": 0.8, "text": "patient"}), return_exceptions=True)
    timed_out, finished = outcomes
    assert isinstance(timed_out, FlowRunError) and timed_out.message == "node 'sleepy' timed out after 0.3 s"
    # the other run's call, in the same process, finished: the process was killed only after it
    assert finished.outputs == {"out": "slept 0.8 patient"}
    assert time.perf_counter() - started < 5
    run = await patient.run({"seconds": 0, "text": "next"})
    assert run.outputs == {"out": "slept 0.0 next"}
    assert worker.pid != first_pid and worker.restarts == 1
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)


async def test_an_async_node_past_its_timeout_is_cancelled_in_the_worker_which_stays(python_flow):
    flow, worker = python_flow(node("waits", "async_nap", seconds="${inputs.seconds}"), "waits")
    engine = FlowEngine(flow, FakeSteps(), worker, timeouts={"waits": 0.2})
    await worker.start()
    with pytest.raises(FlowRunError, match="node 'waits' timed out after 0.2 s"):
        await engine.run({"seconds": 30})
    first_pid = worker.pid
    assert (await engine.run({"seconds": 0})).outputs == {"out": "done"}
    assert worker.pid == first_pid and worker.restarts == 0


async def test_an_async_node_that_ignores_cancellation_retires_the_worker(python_flow):
    flow, worker = python_flow(node("stuck", "stubborn", seconds="${inputs.seconds}"), "stuck")
    await worker.start()
    first_pid = worker.pid
    with pytest.raises(FlowRunError, match="node 'stuck' timed out"):
        await FlowEngine(flow, FakeSteps(), worker, timeouts={"stuck": 0.2}).run({"seconds": 30})
    assert worker.pid == first_pid  # cancelled in the worker first …
    await asyncio.sleep(1.3)  # … and retired when it had not stopped a second after its deadline
    assert worker.pid is None
    assert await worker.call(flow.base_dir / "tools.py", "shout", {"text": "x"}) == "X!"
    assert worker.pid != first_pid and worker.restarts == 1


async def test_cancelling_a_run_leaves_the_worker_serving(python_flow):
    flow, worker = python_flow(node("sleepy", "nap", seconds="${inputs.seconds}"), "sleepy")
    engine = FlowEngine(flow, FakeSteps(), worker, node_timeout_s=10)
    seen = []
    task = asyncio.create_task(engine.run({"seconds": 0.5}, on_trace=seen.append))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen[0].span("sleepy").status == "cancelled"
    assert (await engine.run({"seconds": 0})).outputs == {"out": "slept 0.0 "}
    assert worker.restarts == 0


async def test_the_worker_sees_no_gateway_secrets_and_runs_in_the_flow_folder(python_flow, monkeypatch):
    monkeypatch.setenv("MODELYARD_ADMIN_KEY", "sk-admin")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db/modelyard")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    flow, worker = python_flow(node("env", "environment"), "env")
    run = await FlowEngine(flow, FakeSteps(), worker).run({})
    seen = run.outputs["out"]
    assert "MODELYARD_ADMIN_KEY" not in seen["keys"] and "OPENAI_API_KEY" not in seen["keys"]
    assert "DATABASE_URL" not in seen["keys"] and "LC_ALL" in seen["keys"]
    assert seen["flow_var"] == "from-the-flow"
    assert os.path.samefile(seen["cwd"], flow.base_dir)


async def test_two_sync_python_nodes_run_at_once(python_flow):
    nodes = (node("one", "nap", seconds="${inputs.seconds}", tag="one")
             + node("two", "nap", seconds="${inputs.seconds}", tag="two")
             + node("both", "shout", text="${one.output}"))
    flow, worker = python_flow(nodes, "both")
    await worker.start()
    started = time.perf_counter()
    run = await FlowEngine(flow, FakeSteps(), worker).run({"seconds": 0.3})
    assert run.outputs == {"out": "SLEPT 0.3 ONE!"}
    assert time.perf_counter() - started < 0.55


async def test_a_call_cancelled_while_the_worker_starts_leaves_the_worker_for_the_next_call(python_flow):
    flow, worker = python_flow(node("loud", "shout", text="${inputs.text}"), "loud")
    engine = FlowEngine(flow, FakeSteps(), worker)
    task = asyncio.create_task(engine.run({"text": "first"}))
    await asyncio.sleep(0.01)  # the worker is starting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await engine.run({"text": "second"})).outputs == {"out": "SECOND!"}
    assert worker.restarts == 0
