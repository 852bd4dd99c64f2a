"""Endpoints with several deployments: split, targeting, mirror, keys, limits —
through the management API and the `openai` client against a real gateway.

Hosted deployments point at a local OpenAI-compatible stub, so statistical
tests can send thousands of requests quickly; behaviour that depends on a
real model (timeouts, queues, scaling) uses the embedded Gemma."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.cards import hosted_card
from tests.live_gateway import start_server, write_catalog

pytestmark = pytest.mark.model

# A plain completion of a story runs to its token limit (a chat answer from the base model often stops early).
STORY = "Chapter One\n\nThe old lighthouse keeper had lived alone on the island for"
ASK = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8, "temperature": 0}


def hosted_catalog(home: Path, stub_root: str) -> None:
    """Two hosted cards on the stub (and one on a closed port), as a user catalog file."""
    write_catalog(home, *(hosted_card(card_id, url, price=(1.0, 2.0)) for card_id, url in
                          (("stub-a", stub_root + "/v1"), ("stub-b", stub_root + "/v1"), ("stub-down", "http://127.0.0.1:9/v1"))))


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub):
    """A gateway with no default endpoints and the stub cards in its catalog."""
    home = tmp_path_factory.mktemp("endpoints") / "home"
    hosted_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults")
    yield srv
    srv.stop()


def make_endpoint(gw, name: str, *deployments: tuple[str, str], traffic: dict | None = None, **spec) -> dict:
    r = gw.api("POST", "/api/endpoints", json={"name": name, **spec})
    assert r.status_code == 201, r.text
    created = r.json()
    for dep_name, model in deployments:
        r = gw.api("POST", f"/api/endpoints/{name}/deployments", json={"name": dep_name, "model": model})
        assert r.status_code == 201, r.text
    if traffic is not None:
        r = gw.api("PATCH", f"/api/endpoints/{name}", json={"traffic": traffic})
        assert r.status_code == 200, r.text
    return created


def error(r: httpx.Response) -> dict:
    assert r.status_code >= 400
    return r.json()["error"]


def usage_rows(gw, endpoint: str) -> list[dict]:
    gw.api("GET", "/api/usage")  # flush
    with sqlite3.connect(gw.home / "modelyard.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from usage_records where endpoint = ?", (endpoint,))]


def test_traffic_split_is_honoured_over_many_requests(gw):
    make_endpoint(gw, "split", ("blue", "stub-a"), ("green", "stub-b"), traffic={"blue": 90, "green": 10})
    client = gw.openai()
    counts = {"blue": 0, "green": 0}
    n = 1200
    for _ in range(n):
        raw = client.chat.completions.with_raw_response.create(model="split", **ASK)
        counts[raw.headers["x-modelyard-deployment"]] += 1
    # 10% of 1200 = 120, standard deviation ~10.4: 4 sigma either side.
    assert 78 <= counts["green"] <= 162, counts
    assert counts["blue"] + counts["green"] == n


def test_a_deployment_at_zero_percent_can_be_called_by_name(gw):
    make_endpoint(gw, "target", ("blue", "stub-a"), ("green", "stub-b"))
    client = gw.openai()
    for name in ("green", "blue"):
        raw = client.chat.completions.with_raw_response.create(model="target", extra_headers={"modelyard-deployment": name}, **ASK)
        assert raw.headers["x-modelyard-deployment"] == name
        assert raw.headers["x-modelyard-route"] == f"target:{name}"
    azure = client.chat.completions.with_raw_response.create(
        model="target", extra_headers={"azureml-model-deployment": "green"}, **ASK)
    assert azure.headers["x-modelyard-deployment"] == "green"
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="target", extra_headers={"modelyard-deployment": "purple"}, **ASK)
    assert exc.value.body["param"] == "modelyard-deployment"


def test_mirror_copies_a_share_and_never_answers(gw):
    make_endpoint(gw, "mirror", ("blue", "stub-a"), ("green", "stub-b"))
    r = gw.api("PATCH", "/api/endpoints/mirror", json={"mirror_traffic": {"green": 50}})
    assert r.status_code == 200 and r.json()["mirror_traffic"] == {"green": 50}
    client = gw.openai()
    n = 200
    for _ in range(n):
        raw = client.chat.completions.with_raw_response.create(model="mirror", **ASK)
        assert raw.headers["x-modelyard-deployment"] == "blue"
    # targeted requests are never mirrored
    for _ in range(50):
        client.chat.completions.create(model="mirror", extra_headers={"modelyard-deployment": "blue"}, **ASK)
    time.sleep(0.5)
    rows = usage_rows(gw, "mirror")
    mirrored = [r for r in rows if (r["route"] or "").startswith("mirror:")]
    live = [r for r in rows if not (r["route"] or "").startswith("mirror:")]
    assert len(live) == n + 50
    assert all(r["deployment"] == "green" and r["status"] == 200 and r["completion_tokens"] > 0 for r in mirrored)
    # 50% of 200 = 100, sd ~7: 4 sigma either side; the 50 targeted calls add none.
    assert 72 <= len(mirrored) <= 128, len(mirrored)


def test_a_failing_mirror_never_fails_the_live_request(gw):
    make_endpoint(gw, "broken-mirror", ("blue", "stub-a"), ("down", "stub-down"))
    gw.api("PATCH", "/api/endpoints/broken-mirror", json={"mirror_traffic": {"down": 50}})
    client = gw.openai()
    for _ in range(30):
        reply = client.chat.completions.create(model="broken-mirror", **ASK)
        assert reply.choices[0].message.content
    time.sleep(3)  # the copies' retries against the closed port run out
    mirrored = [r for r in usage_rows(gw, "broken-mirror") if r["route"] == "mirror:down"]
    assert mirrored and all(r["status"] == 502 for r in mirrored)


def test_endpoint_keys_reach_their_endpoint_only_and_regenerate_independently(gw):
    created = make_endpoint(gw, "keyed", ("blue", "stub-a"))
    make_endpoint(gw, "other", ("blue", "stub-a"))
    primary, secondary = created["keys"]["primary"], created["keys"]["secondary"]
    assert gw.openai(key=primary).chat.completions.create(model="keyed", **ASK).choices
    assert gw.openai(key=secondary).chat.completions.create(model="keyed", **ASK).choices
    with pytest.raises(openai.PermissionDeniedError):
        gw.openai(key=primary).chat.completions.create(model="other", **ASK)
    assert httpx.get(gw.url + "/api/status", headers={"Authorization": f"Bearer {primary}"}).status_code == 403
    listed = gw.api("GET", "/api/endpoints/keyed/keys").json()
    assert listed["primary"]["prefix"] == primary[:8] and primary not in str(listed)
    new = gw.api("POST", "/api/endpoints/keyed/keys/regenerate", json={"which": "secondary"}).json()["key"]
    with pytest.raises(openai.AuthenticationError):
        gw.openai(key=secondary).chat.completions.create(model="keyed", **ASK)
    assert gw.openai(key=new).chat.completions.create(model="keyed", **ASK).choices
    assert gw.openai(key=primary).chat.completions.create(model="keyed", **ASK).choices


@pytest.mark.parametrize("patch, param", [
    ({"traffic": {"blue": 50, "green": 20}}, "traffic"),
    ({"traffic": {"blue": 90, "purple": 10}}, "traffic"),
    ({"mirror_traffic": {"green": 60}}, "mirror_traffic"),
    ({"traffic": {"blue": 50, "green": 50}, "mirror_traffic": {"green": 10}}, None),
    ({"traffic": {"blue": -10, "green": 110}}, "traffic"),
])
def test_bad_traffic_is_refused_and_changes_nothing(gw, patch, param):
    name = f"bad-{abs(hash(str(patch))) % 10_000}"
    make_endpoint(gw, name, ("blue", "stub-a"), ("green", "stub-b"))
    before = gw.api("GET", f"/api/endpoints/{name}").json()
    r = gw.api("PATCH", f"/api/endpoints/{name}", json=patch)
    assert r.status_code == 400
    assert error(r)["param"] == param
    after = gw.api("GET", f"/api/endpoints/{name}").json()
    assert (after["traffic"], after["mirror_traffic"]) == (before["traffic"], before["mirror_traffic"])


@pytest.mark.parametrize("body, status, param", [
    ({"name": "x"}, 400, "name"),
    ({"name": "9lives"}, 400, "name"),
    ({"name": "has_underscore"}, 400, "name"),
    ({"name": "a" * 33}, 400, "name"),
])
def test_bad_endpoint_names_are_refused(gw, body, status, param):
    r = gw.api("POST", "/api/endpoints", json=body)
    assert r.status_code == status and error(r)["param"] == param


def test_bad_deployments_are_refused(gw):
    make_endpoint(gw, "strict", ("blue", "stub-a"))
    r = gw.api("POST", "/api/endpoints/strict/deployments", json={"name": "blue", "model": "stub-a"})
    assert r.status_code == 409
    r = gw.api("POST", "/api/endpoints/strict/deployments", json={"name": "green", "model": "no-such-model"})
    assert r.status_code == 400 and error(r)["param"] == "model"
    r = gw.api("POST", "/api/endpoints/strict/deployments", json={"name": "green", "model": "stub-a", "instance_count": 0})
    assert r.status_code == 400 and error(r)["param"] == "instance_count"
    assert r.status_code == 400 and [d["name"] for d in gw.api("GET", "/api/endpoints/strict").json()["deployments"]] == ["blue"]
    assert gw.api("POST", "/api/endpoints", json={"name": "strict"}).status_code == 409


def test_a_deployment_with_live_traffic_cannot_be_deleted(gw):
    make_endpoint(gw, "guarded", ("blue", "stub-a"), ("green", "stub-b"))
    r = gw.api("DELETE", "/api/endpoints/guarded/deployments/blue")
    assert r.status_code == 409 and error(r)["code"] == "deployment_has_traffic"
    assert gw.api("DELETE", "/api/endpoints/guarded/deployments/green").status_code == 200
    assert [d["name"] for d in gw.api("GET", "/api/endpoints/guarded").json()["deployments"]] == ["blue"]


def test_apply_is_idempotent(gw):
    spec = {"name": "applied", "traffic": {}}
    first = gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec})
    assert first.status_code == 201 and first.json()["action"] == "created"
    dep = {"name": "blue", "endpoint_name": "applied", "model": "stub-a"}
    assert gw.api("POST", "/api/apply", json={"kind": "deployment", "spec": dep}).json()["action"] == "created"
    assert gw.api("POST", "/api/apply", json={"kind": "deployment", "spec": dep}).json()["action"] == "unchanged"
    spec = {"name": "applied", "traffic": {"blue": 100}}  # the first deployment took all traffic already
    assert gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec}).json()["action"] == "unchanged"
    spec["description"] = "the applied endpoint"
    assert gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec}).json()["action"] == "updated"
    assert gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec}).json()["action"] == "unchanged"
    changed = {**dep, "request_settings": {"request_timeout_ms": 5000}}
    assert gw.api("POST", "/api/apply", json={"kind": "deployment", "spec": changed}).json()["action"] == "updated"
    r = gw.api("POST", "/api/apply", json={"kind": "deployment", "spec": {**dep, "model": "stub-b"}})
    assert r.status_code == 400 and error(r)["param"] == "model"


# --- with the real model ------------------------------------------------------------------


def test_request_timeout_answers_408_and_stops_the_generation(gw):
    make_endpoint(gw, "slow", ("blue", "gemma-3-270m"))
    gw.api("PATCH", "/api/endpoints/slow/deployments/blue", json={"request_settings": {"request_timeout_ms": 300}})
    long_ask = {"prompt": STORY, "max_tokens": 3000, "temperature": 1.0}
    t0 = time.monotonic()
    r = httpx.post(gw.base_url + "/completions", json={"model": "slow", **long_ask},
                   headers={"Authorization": f"Bearer {gw.admin_key}"}, timeout=60)
    assert r.status_code == 408 and error(r)["code"] == "request_timeout"
    assert time.monotonic() - t0 < 5
    gw.api("PATCH", "/api/endpoints/slow/deployments/blue", json={"request_settings": {"request_timeout_ms": 60000}})
    t0 = time.monotonic()
    assert gw.openai().chat.completions.create(model="slow", **ASK).choices
    # Had the 3,000-token generation gone on, this would have queued behind it (a minute or more).
    assert time.monotonic() - t0 < 30


def test_a_full_queue_answers_429_with_retry_after(gw):
    make_endpoint(gw, "busy", ("blue", "gemma-3-270m"))
    gw.api("PATCH", "/api/endpoints/busy/deployments/blue", json={"request_settings": {"max_queue_size_per_instance": 0}})
    started = threading.Event()

    def long_stream():
        with httpx.stream("POST", gw.base_url + "/completions", timeout=60,
                          headers={"Authorization": f"Bearer {gw.admin_key}"},
                          json={"model": "busy", "stream": True, "max_tokens": 60, "temperature": 1.0,
                                "prompt": STORY}) as r:
            for _ in r.iter_lines():
                started.set()

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert started.wait(30)
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "busy", **ASK},
                   headers={"Authorization": f"Bearer {gw.admin_key}"}, timeout=60)
    worker.join()
    assert r.status_code == 429 and error(r)["code"] == "deployment_at_capacity"
    assert r.headers["retry-after"] == "1"


def test_scaling_up_and_down_live(gw):
    make_endpoint(gw, "scaled", ("blue", "gemma-3-270m"))
    r = gw.api("PATCH", "/api/endpoints/scaled/deployments/blue", json={"instance_count": 2})
    assert r.status_code == 200
    assert [i["state"] for i in r.json()["instances"]] == ["ready", "ready"]
    assert all(i["rss_mb"] > 50 for i in r.json()["instances"])
    results = []

    def ask():
        results.append(gw.openai().chat.completions.create(model="scaled", **ASK).choices[0].message.content)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    r = gw.api("PATCH", "/api/endpoints/scaled/deployments/blue", json={"instance_count": 1})
    for t in threads:
        t.join()
    assert r.status_code == 200 and len(r.json()["instances"]) == 1
    assert len(results) == 4 and all("Paris" in text for text in results)


def _serving_instance(gw, endpoint: str) -> dict:
    for _ in range(200):
        instances = gw.api("GET", f"/api/endpoints/{endpoint}").json()["deployments"][0]["instances"]
        busy = [i for i in instances if i["in_flight"] > 0]
        if busy:
            return busy[0]
        time.sleep(0.02)
    raise AssertionError("no instance took the request")


def test_killed_instance_non_streaming_request_is_retried_and_stream_ends_with_error(gw):
    import os
    import signal

    make_endpoint(gw, "crashy", ("blue", "gemma-3-270m"))
    gw.api("PATCH", "/api/endpoints/crashy/deployments/blue", json={"instance_count": 2})
    long_ask = {"model": "crashy", "prompt": STORY,
                "max_tokens": 150, "temperature": 1.0}
    headers = {"Authorization": f"Bearer {gw.admin_key}"}

    # A plain request whose instance dies is answered by the other instance.
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
        gw.base_url + "/completions", json=long_ask, headers=headers, timeout=120)))
    thread.start()
    os.kill(_serving_instance(gw, "crashy")["pid"], signal.SIGKILL)
    thread.join()
    assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["text"]

    # A stream whose instance dies mid-way ends with an error event, then [DONE].
    deadline = time.monotonic() + 60
    while not all(i["state"] == "ready" for i in gw.api("GET", "/api/endpoints/crashy").json()["deployments"][0]["instances"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    events = []
    with httpx.stream("POST", gw.base_url + "/completions", json={**long_ask, "stream": True}, headers=headers,
                      timeout=120) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(_serving_instance(gw, "crashy")["pid"], signal.SIGKILL)
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2]
    rows = [row for row in usage_rows(gw, "crashy") if row["request_id"] == request_id]
    assert rows and rows[0]["status"] == 502
