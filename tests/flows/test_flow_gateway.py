"""Flows served by a real gateway: applied over the API, called with the official openai client and the run
API, each step a recorded call through the request path; hosted tiers on the local OpenAI stub."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.cards import hosted_card, tier_cards
from tests.live_gateway import add_endpoint, start_server, write_catalog
from tests.openai_stub import Script

PRICES = {"small": (1.0, 2.0), "large": (10.0, 30.0)}

ASK = """
inputs:
  question: {type: string, is_chat_input: true}
  chat_history: {type: list, is_chat_history: true}
  tone: {type: string, default: plain}
outputs:
  answer: {type: string, reference: "${compose.output}", is_chat_output: true}
nodes:
- name: rewrite
  type: llm
  source: {type: inline, content: "user:\\nRewrite: {{question}}"}
  inputs: {endpoint: small, question: "${inputs.question}", max_tokens: 32}
- name: compose
  type: llm
  source: {type: inline, content: "system:\\nYou answer questions.\\nuser:\\nAnswer {{tone}}ly: {{q}}"}
  inputs: {endpoint: large, q: "${rewrite.output}", tone: "${inputs.tone}"}
"""

PY_FAILS = """
inputs:
  text: {type: string}
outputs:
  out: {type: string, reference: "${boom.output}"}
nodes:
- name: first
  type: llm
  source: {type: inline, content: "user:\\n{{text}}"}
  inputs: {endpoint: small, text: "${inputs.text}"}
- name: boom
  type: python
  source: {type: code, path: boom.py}
  inputs: {text: "${first.output}"}
"""

BOOM = """
from promptflow import tool

@tool
def explode(text: str) -> str:
    raise ValueError("no good: " + text[:10])
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub):
    home = tmp_path_factory.mktemp("flows") / "home"
    write_catalog(home, tier_cards(stub, PRICES), name="tiers.yaml")
    srv = start_server(home, "--no-defaults", extra_env={"MODELYARD_KEYS_RELOAD_S": "0.5"})
    for name in ("small", "large"):
        add_endpoint(srv, name, f"tier-{name}")
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def scripts(stub):
    stub.tiers.clear()
    stub.tiers["small"] = Script(answer="capital of France?")
    stub.tiers["large"] = Script(answer="The capital of France is Paris.")


def apply(gw, name: str, yaml: str, files: dict | None = None) -> httpx.Response:
    return gw.api("PUT", f"/api/flows/{name}", json={"yaml": yaml, "files": files or {}})


@pytest.fixture(scope="module")
def ask_keys(gw):
    r = apply(gw, "ask", ASK)
    assert r.status_code == 201, r.text
    assert r.json()["result"] == "created"
    return r.json()["keys"]


def rows(gw, where: str = "1=1", args: tuple = ()) -> list[dict]:
    gw.api("GET", "/api/usage")  # flushes the usage writer
    with sqlite3.connect(gw.home / "modelyard.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"select * from usage_records where {where} order by id", args)]


def error(r: httpx.Response) -> dict:
    assert r.status_code >= 400, r.text
    return r.json()["error"]


# -- applying ------------------------------------------------------------------------------


def test_a_flow_is_applied_listed_and_described(gw, ask_keys):
    assert set(ask_keys) == {"primary", "secondary"}
    listed = gw.api("GET", "/api/flows").json()["data"]
    ask = next(f for f in listed if f["name"] == "ask")
    assert ask["is_chat"] is True
    assert [(n["name"], n["endpoint"], n["depends_on"]) for n in ask["nodes"]] == [
        ("rewrite", "small", []), ("compose", "large", ["rewrite"])]
    one = gw.api("GET", "/api/flows/ask").json()
    assert one["yaml"] == ASK and one["version"] >= 1
    # applied again: a new version, no new keys
    again = apply(gw, "ask", ASK)
    assert again.status_code == 200 and "keys" not in again.json()
    assert again.json()["version"] == one["version"] + 1


def test_a_bad_flow_is_refused_naming_the_line_and_changes_nothing(gw, ask_keys):
    before = gw.api("GET", "/api/flows/ask").json()["version"]
    broken = ASK.replace("endpoint: large", "endpoint: nowhere")
    err = error(apply(gw, "ask", broken))
    assert "nowhere" in err["message"] and "compose" in err["message"] and "flow.dag.yaml:" in err["message"]
    assert err["code"] == "invalid_flow"
    assert gw.api("GET", "/api/flows/ask").json()["version"] == before
    err = error(apply(gw, "ask", ASK.replace("- name: compose", "- name: compose\n  timeout: 3")))
    assert "timeout" in err["message"] and "flow.dag.yaml:14" in err["message"]


def test_flows_and_endpoints_share_one_namespace(gw, ask_keys):
    r = apply(gw, "small", ASK)
    assert r.status_code == 409 and error(r)["code"] == "name_taken"
    r = gw.api("POST", "/api/endpoints", json={"name": "ask"})
    assert r.status_code == 409 and error(r)["code"] == "name_taken"


def test_a_flow_file_outside_the_folder_is_refused(gw):
    r = apply(gw, "sneaky", PY_FAILS, {"../boom.py": BOOM})
    assert r.status_code == 400 and error(r)["param"] == "files"


# -- calling ---------------------------------------------------------------------------------


def test_chat_completions_run_the_flow_and_each_step_is_recorded_once(gw, ask_keys):
    client = gw.openai(ask_keys["primary"])
    raw = client.chat.completions.with_raw_response.create(
        model="ask", messages=[{"role": "user", "content": "capital of france"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "The capital of France is Paris."
    request_id = raw.headers["x-request-id"]
    assert answer.id == f"chatcmpl-{request_id}"

    flow_row = rows(gw, "request_id = ?", (request_id,))[0]
    steps = rows(gw, "parent_request_id = ?", (request_id,))
    assert flow_row["kind"] == "flow" and flow_row["endpoint"] == "ask" and flow_row["status"] == 200
    assert sorted(s["endpoint"] for s in steps) == ["large", "small"]
    assert all(s["key_id"] == flow_row["key_id"] and s["status"] == 200 for s in steps)
    # the flow's record sums its steps; the response's usage is the same sum
    assert flow_row["prompt_tokens"] == sum(s["prompt_tokens"] for s in steps) == answer.usage.prompt_tokens
    assert flow_row["completion_tokens"] == sum(s["completion_tokens"] for s in steps) == answer.usage.completion_tokens
    assert flow_row["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in steps))
    assert flow_row["cost_usd"] > 0
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(flow_row["cost_usd"], abs=1e-8)
    trace = flow_row["trace"]
    assert '"compose"' in trace and '"large"' in trace

    # the spend report counts the steps, not the flow's record again
    spend = gw.api("GET", "/api/usage/spend", params={"days": 1})
    assert spend.status_code == 200, spend.text
    report = spend.json()
    all_rows = rows(gw)
    assert report["totals"]["cost_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in all_rows if r["kind"] != "flow"), abs=1e-9)
    by_endpoint = {e["endpoint"]: e for e in report["by_endpoint"]}
    assert by_endpoint["ask"]["cost_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in all_rows if r["endpoint"] == "ask"), abs=1e-9)


def test_the_chat_history_reaches_the_flow_and_metadata_fills_other_inputs(gw, ask_keys, stub):
    stub.tiers["large"] = Script(answer="plain answer", answers={"formally": "formal answer"})
    client = gw.openai(ask_keys["primary"])
    answer = client.chat.completions.create(model="ask", metadata={"tone": "formal"}, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "capital of france"}])
    assert answer.choices[0].message.content == "formal answer"


def test_a_streamed_chat_streams_the_last_node(gw, ask_keys, stub):
    stub.tiers["large"] = Script(answer="one two three four five", chunk_delay_s=0.01)
    client = gw.openai(ask_keys["primary"])
    chunks = list(client.chat.completions.create(model="ask", stream=True, stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": "go"}]))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == "one two three four five"
    assert len(texts) >= 5  # word by word, not one piece at the end
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    flow_row = [r for r in rows(gw, "endpoint = 'ask'") if r["stream"]][-1]
    assert flow_row["kind"] == "flow" and flow_row["status"] == 200 and flow_row["completion_tokens"] > 0


def test_the_run_api_returns_outputs_and_a_trace_with_a_span_per_node(gw, ask_keys):
    r = httpx.post(f"{gw.url}/api/flows/ask/run", json={"inputs": {"question": "capital of france"}},
                   headers={"Authorization": f"Bearer {ask_keys['secondary']}"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == {"answer": "The capital of France is Paris."}
    spans = {s["node"]: s for s in body["trace"]["spans"]}
    assert spans["rewrite"]["endpoint"] == "small" and spans["rewrite"]["deployment"] == "small"
    assert spans["compose"]["endpoint"] == "large" and spans["compose"]["cost_usd"] > spans["rewrite"]["cost_usd"]
    assert body["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in spans.values()))

    runs = httpx.get(f"{gw.url}/api/flows/ask/runs", headers={"Authorization": f"Bearer {ask_keys['secondary']}"})
    assert runs.status_code == 200
    assert body["id"] in [run["id"] for run in runs.json()["data"]]
    one = gw.api("GET", f"/api/flows/ask/runs/{body['id']}").json()
    assert [s["node"] for s in one["trace"]["spans"]] == ["rewrite", "compose"]
    assert sorted(s["endpoint"] for s in one["steps"]) == ["large", "small"]


def test_a_streamed_run_sends_each_node_as_it_ends(gw, ask_keys):
    events: list[str] = []
    with httpx.stream("POST", f"{gw.url}/api/flows/ask/run", json={"inputs": {"question": "x"}, "stream": True},
                      headers={"Authorization": f"Bearer {ask_keys['primary']}"}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
    assert events[-1] == "done"
    assert events.count("node_start") == 2 and events.count("node") == 2
    # the first node's end is sent as it happens, before the last node streams its answer
    assert events[:3] == ["node_start", "node", "node_start"]
    assert "delta" in events and events.index("delta") < len(events) - 2


def test_a_key_reaches_only_its_flow_and_its_own_runs(gw, ask_keys):
    client = gw.openai(ask_keys["primary"])
    with pytest.raises(Exception) as caught:
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    assert getattr(caught.value, "status_code", None) == 403
    other = gw.api("POST", "/api/keys", json={"name": "other", "endpoint": "small"})
    assert other.status_code == 201, other.text
    r = httpx.get(f"{gw.url}/api/flows/ask/runs", headers={"Authorization": f"Bearer {other.json()['key']}"})
    assert r.status_code == 403
    # a key made for the flow by name works like the flow's own keys
    made = gw.api("POST", "/api/keys", json={"name": "ask-app", "endpoint": "ask"})
    assert made.status_code == 201, made.text
    r = httpx.post(f"{gw.url}/api/flows/ask/run", json={"inputs": {}}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_bad_inputs_are_a_400_naming_the_input(gw, ask_keys):
    r = gw.api("POST", "/api/flows/ask/run", json={"inputs": {"tone": "x"}})
    err = error(r)
    assert r.status_code == 400 and "question" in err["message"]
    r = gw.api("POST", "/api/flows/ask/run", json={"inputs": {"question": "q"}, "variants": {"compose": "v9"}})
    assert r.status_code == 400 and "compose" in error(r)["message"]
    r = gw.api("POST", "/api/flows/nosuch/run", json={"inputs": {}})
    assert r.status_code == 404
    resp = httpx.post(f"{gw.base_url}/embeddings", json={"model": "ask", "input": "x"},
                      headers={"Authorization": f"Bearer {gw.admin_key}"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "wrong_task"


def test_a_python_node_that_raises_fails_the_run_naming_it_and_keeps_the_trace(gw):
    r = apply(gw, "boom", PY_FAILS, {"boom.py": BOOM})
    assert r.status_code == 201, r.text
    r = gw.api("POST", "/api/flows/boom/run", json={"inputs": {"text": "hello"}})
    assert r.status_code == 500
    err = r.json()["error"]
    assert "boom" in err["message"] and "ValueError" in err["message"] and err["param"] == "nodes.boom"
    run_id = r.headers["x-request-id"]
    run = gw.api("GET", f"/api/flows/boom/runs/{run_id}")
    assert run.status_code == 200, run.text
    trace = run.json()["trace"]
    assert [(s["node"], s["status"]) for s in trace["spans"]] == [("first", "ok"), ("boom", "error")]
    assert run.json()["status"] == 500 and [s["endpoint"] for s in run.json()["steps"]] == ["small"]


def test_a_step_endpoint_deleted_later_is_a_424_naming_it(gw):
    r = gw.api("POST", "/api/endpoints", json={"name": "temp"})
    assert r.status_code == 201
    r = gw.api("POST", "/api/endpoints/temp/deployments", json={"name": "temp-d", "model": "tier-small"})
    assert r.status_code == 201, r.text
    assert apply(gw, "uses-temp", ASK.replace("endpoint: large", "endpoint: temp")).status_code == 201
    assert gw.api("DELETE", "/api/endpoints/temp").status_code in (200, 204)
    r = gw.api("POST", "/api/flows/uses-temp/run", json={"inputs": {"question": "q"}})
    assert r.status_code == 424
    assert "temp" in error(r)["message"] and error(r)["code"] == "flow_endpoint_missing"


def test_a_deleted_flow_is_gone_and_its_keys_revoked(gw):
    r = apply(gw, "short-lived", ASK)
    key = r.json()["keys"]["primary"]
    assert gw.api("DELETE", "/api/flows/short-lived").status_code == 200
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "short-lived", "messages": [
        {"role": "user", "content": "x"}]}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
    assert gw.api("GET", "/api/flows/short-lived").status_code == 404


def test_a_batch_job_runs_a_flow_over_a_file_and_its_steps_commit_with_each_line(gw, ask_keys):
    import io
    import json
    import time

    client = gw.openai(ask_keys["primary"])
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "ask", "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(3)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("flow-batch.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == 3
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    answers = {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output}
    assert answers == {f"q{i}": "The capital of France is Paris." for i in range(3)}

    flow_rows = rows(gw, "batch_id = ? and kind = 'flow'", (batch.id,))
    step_rows = rows(gw, "batch_id = ? and kind != 'flow'", (batch.id,))
    assert len(flow_rows) == 3 and len(step_rows) == 6
    assert {s["parent_request_id"] for s in step_rows} == {f["request_id"] for f in flow_rows}
    for f in flow_rows:
        mine = [s for s in step_rows if s["parent_request_id"] == f["request_id"]]
        assert f["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in mine))


def test_flow_runs_are_exported_as_opentelemetry_spans_to_an_otlp_collector(tmp_path, stub):
    """A stand-in OTLP/HTTP collector on 127.0.0.1 receives the run as a span tree: the flow, a child per node."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[ExportTraceServiceRequest] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server spelling
            body = self.rfile.read(int(self.headers["content-length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append(request)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    write_catalog(home, tier_cards(stub, PRICES), name="tiers.yaml")
    srv = start_server(home, "--no-defaults", extra_env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        for name in ("small", "large"):
            add_endpoint(srv, name, f"tier-{name}")
        assert apply(srv, "ask", ASK).status_code == 201
        run = srv.api("POST", "/api/flows/ask/run", json={"inputs": {"question": "q"}}).json()
        deadline = time.monotonic() + 20
        spans = []
        while time.monotonic() < deadline:
            spans = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
            if len(spans) >= 3:
                break
            time.sleep(0.1)
    finally:
        srv.stop()
        collector.shutdown()
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"flow ask", "node rewrite", "node compose"}
    root = by_name["flow ask"]
    assert by_name["node compose"].parent_span_id == root.span_id == by_name["node rewrite"].parent_span_id
    attrs = {a.key: a.value for a in by_name["node compose"].attributes}
    assert attrs["modelyard.endpoint"].string_value == "large"
    assert attrs["modelyard.cost_usd"].double_value == pytest.approx(
        next(s["cost_usd"] for s in run["trace"]["spans"] if s["node"] == "compose"))
    root_attrs = {a.key: a.value for a in root.attributes}
    assert root_attrs["modelyard.flow.run_id"].string_value == run["id"]


def test_the_models_list_names_the_flows_a_key_may_call(gw, ask_keys):
    mine = [m.id for m in gw.openai(ask_keys["primary"]).models.list()]
    assert mine == ["ask"]
    everything = {m.id for m in gw.openai().models.list()}
    assert {"ask", "small", "large"} <= everything
    assert gw.openai(ask_keys["primary"]).models.retrieve("ask").id == "ask"


def test_a_client_that_hangs_up_cancels_the_run_and_every_record_says_so(gw, ask_keys, stub):
    import time

    stub.tiers["large"] = Script(answer=" ".join(f"w{i}" for i in range(200)), chunk_delay_s=0.05)
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {ask_keys['primary']}"},
                      json={"model": "ask", "stream": True, "messages": [{"role": "user", "content": "long one"}]},
                      timeout=60) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if "w3" in line:
                break  # hang up mid-answer
    deadline = time.monotonic() + 10
    flow_row, steps = [], []
    while time.monotonic() < deadline:
        flow_row = rows(gw, "request_id = ?", (request_id,))
        steps = rows(gw, "parent_request_id = ?", (request_id,))
        if flow_row and len(steps) == 2:
            break
        time.sleep(0.1)
    assert flow_row and flow_row[0]["status"] == 499 and flow_row[0]["kind"] == "flow"
    compose = next(s for s in steps if s["endpoint"] == "large")
    assert compose["status"] == 499  # the upstream stream was closed, not read to its end
    assert 0 < compose["completion_tokens"] < 200, {k: compose[k] for k in ("status", "error_code", "completion_tokens", "prompt_tokens", "cost_usd", "stream", "latency_ms")}
    assert '"cancelled"' in flow_row[0]["trace"]
