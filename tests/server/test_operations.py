"""What an operator sees: usage in the database, metrics, keys, the CLI, and
instances that survive crashes and clients that walk away."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import httpx
import pytest
from typer.testing import CliRunner

from modelyard.cli import app as cli

pytestmark = pytest.mark.model

ASK = {"model": "default", "messages": [{"role": "user", "content": "What is the capital of France?"}],
       "max_tokens": 20, "temperature": 0}


def recent(server, **params) -> list[dict]:
    r = server.api("GET", "/api/usage/recent", params=params)
    assert r.status_code == 200
    return r.json()["data"]


def test_every_request_is_written_to_the_usage_table(server):
    reply = server.openai().chat.completions.with_raw_response.create(**ASK)
    request_id = reply.headers["x-request-id"]
    body = reply.parse()
    server.api("GET", "/api/usage")  # flushes the writer
    with sqlite3.connect(server.home / "modelyard.db") as db:
        row = db.execute("select endpoint, deployment, model, prompt_tokens, completion_tokens, cost_usd, status, "
                         "latency_ms, ttft_ms from usage_records where request_id = ?", (request_id,)).fetchone()
    assert row is not None, "the request has a usage line in the database"
    endpoint, deployment, model, prompt, completion, cost, status, latency, ttft = row
    assert (endpoint, deployment, model, status) == ("default", "gemma-3-270m", "gemma-3-270m", 200)
    assert (prompt, completion) == (body.usage.prompt_tokens, body.usage.completion_tokens)
    assert cost > 0 and latency > 0 and ttft is None  # a non-streaming answer has no first-token time


def test_streams_record_time_to_first_token(server):
    stream = server.openai().chat.completions.create(**ASK, stream=True)
    list(stream)
    rows = [r for r in recent(server, endpoint="default") if r["stream"]]
    assert rows and rows[0]["ttft_ms"] > 0 and rows[0]["ttft_ms"] <= rows[0]["latency_ms"]


def test_refused_requests_are_recorded_too(server):
    httpx.post(server.base_url + "/chat/completions", json=ASK, headers={"Authorization": "Bearer my-nope"})
    assert any(r["status"] == 401 for r in recent(server))


# A plain completion of a story runs to its token limit (a chat answer from the base model often stops early).
LONG = {"model": "default", "prompt": "Chapter One\n\nThe old lighthouse keeper had lived alone on the island for",
        "max_tokens": 3000, "temperature": 1.0}


def test_client_disconnect_stops_generation_and_is_still_recorded(server):
    with httpx.stream("POST", server.base_url + "/completions", json={**LONG, "stream": True},
                      headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=60) as r:
        request_id = r.headers["x-request-id"]
        events = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events >= 5:
                break  # hang up mid-stream
    # The single llama.cpp instance must be free again at once: had generation gone on, this would queue behind it.
    t0 = time.monotonic()
    server.openai().chat.completions.create(**{**ASK, "max_tokens": 5})
    assert time.monotonic() - t0 < 30  # 3,000 more tokens would take a minute or more
    for _ in range(50):
        rows = [row for row in recent(server) if row["request_id"] == request_id]
        if rows:
            break
        time.sleep(0.1)
    assert rows, "the cut-off stream has a usage line"
    assert rows[0]["status"] == 499
    assert rows[0]["completion_tokens"] >= 3


def test_metrics_count_requests_tokens_and_latency(server):
    server.openai().chat.completions.create(**ASK)
    text = server.api("GET", "/metrics").text
    assert 'modelyard_requests_total{deployment="gemma-3-270m",endpoint="default",status="200"}' in text
    assert "modelyard_prompt_tokens_total" in text and "modelyard_completion_tokens_total" in text
    assert "modelyard_request_latency_seconds_bucket" in text
    assert "modelyard_time_to_first_token_seconds" in text
    assert "modelyard_requests_in_flight" in text


def test_health_and_readiness(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    r = httpx.get(server.url + "/readyz")  # a load balancer's probe learns ready or not, and no names
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    r = server.api("GET", "/readyz")
    assert r.status_code == 200 and r.json()["deployments"]["default/gemma-3-270m"] == "ready"


def test_metrics_need_the_admin_key(server):
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    app_key = server.api("POST", "/api/keys", json={"name": "scraper"}).json()["key"]
    assert httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {app_key}"}).status_code == 403
    assert "modelyard_requests_in_flight" in server.api("GET", "/metrics").text


def test_a_key_of_one_endpoint_cannot_tell_which_other_endpoints_exist(server):
    scoped = server.api("POST", "/api/keys", json={"name": "one", "endpoint": "default"}).json()["key"]
    headers = {"Authorization": f"Bearer {scoped}"}
    assert httpx.get(server.url + "/v1/models/default", headers=headers).status_code == 200
    existing = httpx.get(server.url + "/v1/models/embed", headers=headers)
    missing = httpx.get(server.url + "/v1/models/no-such-endpoint", headers=headers)
    assert existing.status_code == missing.status_code == 403
    assert existing.json()["error"]["code"] == missing.json()["error"]["code"] == "endpoint_not_allowed"


def test_management_api_needs_the_admin_key(server):
    assert httpx.get(server.url + "/api/status").status_code == 401
    created = server.api("POST", "/api/keys", json={"name": "app"}).json()
    r = httpx.get(server.url + "/api/status", headers={"Authorization": f"Bearer {created['key']}"})
    assert r.status_code == 403


def test_cli_keys_create_a_key_that_works_and_is_never_listed(server, monkeypatch):
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    result = runner.invoke(cli, ["keys", "create", "my-app"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("my-")
    reply = server.openai(key=key).chat.completions.create(**ASK)
    assert "Paris" in reply.choices[0].message.content
    listing = runner.invoke(cli, ["keys", "show"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "my-app" in listing.output
    assert key not in listing.output and key[:8] in listing.output


def test_cli_invoke_and_usage(server, monkeypatch):
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    result = runner.invoke(cli, ["invoke", "default", "--prompt", "What is the capital of France?", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output
    usage = runner.invoke(cli, ["usage"], env={"COLUMNS": "200"})
    assert usage.exit_code == 0, usage.output
    assert "default" in usage.output and time.strftime("%Y-%m-%d", time.gmtime()) in usage.output


def test_cli_chat_streams_an_interactive_conversation(server, monkeypatch):
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(cli, ["chat", "default", "--temperature", "0"], input="What is the capital of France?\n")
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output


def test_cli_without_a_server_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELYARD_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELYARD_ADMIN_KEY", "my-x")
    result = CliRunner().invoke(cli, ["usage"])
    assert result.exit_code == 1 and "modelyard up" in result.output


def test_crashed_instance_is_restarted_and_requests_keep_flowing(start_gateway):
    """Two instances behind one endpoint; killing one loses no request, and the runtime brings it back."""
    srv = start_gateway(None, "--no-defaults")
    assert srv.api("POST", "/api/endpoints", json={"name": "chat"}).status_code == 201
    r = srv.api("POST", "/api/endpoints/chat/deployments",
                json={"name": "blue", "model": "gemma-3-270m", "instance_count": 2,
                      "liveness_probe": {"period": 1}})
    assert r.status_code == 201, r.text
    instances = r.json()["instances"]
    assert [i["state"] for i in instances] == ["ready", "ready"]
    client = srv.openai()
    ask = {**ASK, "model": "chat"}
    os.kill(instances[0]["pid"], signal.SIGKILL)
    for _ in range(4):  # every request is answered, by the survivor if need be
        assert "Paris" in client.chat.completions.create(**ask).choices[0].message.content
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = srv.api("GET", "/api/status").json()
        inst = status["endpoints"][0]["deployments"][0]["instances"][0]
        if inst["restarts"] == 1 and inst["state"] == "ready":
            break
        time.sleep(0.3)
    assert inst["restarts"] == 1 and inst["state"] == "ready" and inst["pid"] != instances[0]["pid"]


def test_clean_shutdown_flushes_usage_and_endpoints_come_back(start_gateway, tmp_path):
    home = tmp_path / "home"
    # Nothing is written on the request path and the writer waits an hour: only the shutdown flush can store them.
    srv = start_gateway(home, "--no-defaults", extra_env={"MODELYARD_USAGE_FLUSH_S": "3600"})
    srv.api("POST", "/api/endpoints", json={"name": "chat"})
    srv.api("POST", "/api/endpoints/chat/deployments", json={"name": "blue", "model": "gemma-3-270m"})
    with sqlite3.connect(home / "modelyard.db") as db:
        before = db.execute("select count(*) from usage_records").fetchone()[0]
    ids = []
    for _ in range(3):
        ids.append(srv.openai().chat.completions.with_raw_response.create(**{**ASK, "model": "chat", "max_tokens": 3})
                   .headers["x-request-id"])
    assert srv.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
    with sqlite3.connect(home / "modelyard.db") as db:
        stored = {r[0] for r in db.execute("select request_id from usage_records")}
    assert before == 0 and set(ids) <= stored
    again = start_gateway(home, "--no-defaults")
    reply = again.openai().chat.completions.create(**{**ASK, "model": "chat"})
    assert "Paris" in reply.choices[0].message.content


def test_instances_stop_when_the_gateway_is_killed(start_gateway):
    """A gateway that dies without a clean shutdown leaves no model process behind."""
    srv = start_gateway(None, "--no-defaults")
    srv.api("POST", "/api/endpoints", json={"name": "chat"})
    r = srv.api("POST", "/api/endpoints/chat/deployments", json={"name": "blue", "model": "gemma-3-270m"})
    pid = r.json()["instances"][0]["pid"]
    os.kill(srv.process.pid, signal.SIGKILL)
    srv.process.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the instance outlived its gateway")


def test_the_home_and_what_the_server_writes_there_are_private_to_its_user(server):
    import stat

    server.api("GET", "/api/usage")  # the database has been written
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(server.home) == 0o700
    assert mode(server.home / "modelyard.db") == 0o600
    assert mode(server.home / "admin.key") == 0o600
    assert mode(server.home / "logs") == 0o700
    for log in (server.home / "logs").iterdir():
        assert mode(log) & 0o077 == 0, log


def test_an_instance_answers_only_its_gateway(server):
    """Instances listen on 127.0.0.1: a local user calling one directly would bypass keys, budgets and usage."""
    status = server.api("GET", "/api/status").json()
    ports = [i["port"] for e in status["endpoints"] if e["name"] == "default"
             for d in e["deployments"] for i in d["instances"] if i["state"] == "ready"]
    assert ports, status
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": f"Bearer {server.admin_key}"}, {"Authorization": "Bearer guess"}):
        r = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"http://127.0.0.1:{ports[0]}/healthz").status_code == 200
    answer = server.openai().chat.completions.create(model="default", messages=body["messages"], max_tokens=2)
    assert answer.choices[0].message.content is not None
