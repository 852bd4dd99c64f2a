"""Autoscaling in a real gateway: Gemma 3 270M instances as processes, the official `openai` client as the load.

One gateway, two endpoints: ``chat`` autoscales between 1 and 2 instances (one request in flight per
instance, short delays); ``cold`` may scale to zero. What an operator sees is checked: the instance count
in ``deployment get``, the ``deployment events`` (API and CLI), the Prometheus gauge and the console's series.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from tests.live_gateway import Server, start_server

pytestmark = pytest.mark.model

ASK = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("autoscale") / "home", "--no-defaults")
    yield srv
    srv.stop()


def cli(srv: Server, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={**srv.env(), "COLUMNS": "200"})
    assert result.exit_code == 0, f"modelyard {' '.join(args)}:\n{result.output}"
    return result.output


def instances(srv: Server, endpoint: str, name: str) -> int:
    r = srv.api("GET", f"/api/endpoints/{endpoint}/deployments/{name}")
    assert r.status_code == 200, r.text
    return len(r.json()["instances"])


def wait_for(what, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every_s)
    return what()


def gauge(srv: Server, endpoint: str, name: str) -> float | None:
    text = srv.api("GET", "/metrics").text
    m = re.search(rf'^modelyard_deployment_instances{{deployment="{name}",endpoint="{endpoint}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def events(srv: Server, endpoint: str, name: str) -> list[dict]:
    r = srv.api("GET", f"/api/endpoints/{endpoint}/deployments/{name}/events")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_concurrent_load_scales_to_two_instances_and_idle_back_to_one(gateway):
    srv = gateway
    assert srv.api("POST", "/api/endpoints", json={"name": "chat"}).status_code == 201
    cli(srv, "deployment", "create", "chat", "blue", "--model", "gemma-3-270m", "--all-traffic",
        "--autoscale", "min=1,max=2,target-in-flight=1,up-delay=1,down-delay=3")
    assert instances(srv, "chat", "blue") == 1 and gauge(srv, "chat", "blue") == 1

    client = srv.openai()
    stop = threading.Event()
    answered: list[int] = []

    def user() -> None:
        while not stop.is_set():
            r = client.chat.completions.with_raw_response.create(model="chat", **ASK)
            answered.append(r.http_response.status_code)

    users = [threading.Thread(target=user) for _ in range(4)]
    for t in users:
        t.start()
    try:
        scaled_up = wait_for(lambda: instances(srv, "chat", "blue") == 2, 60)
        peak_gauge = gauge(srv, "chat", "blue")
    finally:
        stop.set()
        for t in users:
            t.join(60)
    assert scaled_up and peak_gauge == 2
    assert answered and set(answered) == {200}  # nothing refused while it scaled

    assert wait_for(lambda: instances(srv, "chat", "blue") == 1, 30)  # idle for the 3 s down-delay
    assert gauge(srv, "chat", "blue") == 1

    rows = events(srv, "chat", "blue")
    assert [(r["kind"], r["from"], r["to"]) for r in rows] == [
        ("scale_up", 0, 1), ("scale_up", 1, 2), ("scale_down", 2, 1)]
    assert "target_in_flight=1" in rows[1]["reason"] and "held for 3s" in rows[2]["reason"]
    printed = cli(srv, "deployment", "events", "chat", "blue")
    assert "scale_up" in printed and "1 -> 2" in printed and "2 -> 1" in printed

    series = srv.api("GET", "/api/endpoints/chat/metrics", params={"window": "15m"}).json()
    counts = [p["instances"] for p in series["by_deployment"]["blue"]["series"]]
    assert max(c for c in counts if c is not None) == 2 and counts[-1] in (1, 2)


def test_a_deployment_scaled_to_zero_answers_its_next_request_after_a_cold_start(gateway):
    srv = gateway
    assert srv.api("POST", "/api/endpoints", json={"name": "cold"}).status_code == 201
    r = srv.api("POST", "/api/endpoints/cold/deployments", json={
        "name": "lazy", "model": "gemma-3-270m",
        "autoscale": {"min_instances": 0, "max_instances": 1, "downscale_delay_s": 1}})
    assert r.status_code == 201, r.text
    assert wait_for(lambda: instances(srv, "cold", "lazy") == 0, 30)
    assert gauge(srv, "cold", "lazy") == 0

    t0 = time.monotonic()
    answer = srv.openai().chat.completions.create(model="cold", **ASK)
    cold_s = time.monotonic() - t0
    assert answer.choices[0].message.content and instances(srv, "cold", "lazy") == 1
    rows = events(srv, "cold", "lazy")
    assert [(r["kind"], r["from"], r["to"]) for r in rows][-2:] == [("scale_down", 1, 0), ("scale_up", 0, 1)]
    assert rows[-1]["reason"].startswith("cold start")
    assert cold_s > 0.2  # it did wait for an instance to load (seconds on a busy machine)


def test_autoscale_settings_are_checked_and_can_be_changed_or_cleared_live(gateway):
    srv = gateway
    bad = srv.api("PATCH", "/api/endpoints/cold/deployments/lazy", json={"autoscale": {"max_instances": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "autoscale.max_instances"
    bad = srv.api("PATCH", "/api/endpoints/cold/deployments/lazy", json={"autoscale": {"maximum": 3}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "autoscale.maximum"
    swapped = srv.api("PATCH", "/api/endpoints/cold/deployments/lazy",
                      json={"autoscale": {"min_instances": 3, "max_instances": 2}})
    assert swapped.status_code == 400 and "must not exceed max_instances" in swapped.json()["error"]["message"]

    cleared = srv.api("PATCH", "/api/endpoints/cold/deployments/lazy", json={"autoscale": None})
    assert cleared.status_code == 200 and cleared.json()["autoscale"] is None
    assert len(cleared.json()["instances"]) == 1  # instance_count (1): no longer scales to zero
    missing = srv.api("GET", "/api/endpoints/cold/deployments/nosuch/events")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "deployment_not_found"


def test_an_instance_that_dies_is_restarted_and_the_event_log_says_so(gateway):
    srv = gateway
    dep = srv.api("GET", "/api/endpoints/chat/deployments/blue").json()
    victim = dep["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    restarted = wait_for(lambda: [e for e in events(srv, "chat", "blue") if e["kind"] == "instance_restarted"], 60)
    assert restarted and restarted[-1]["instance"] == victim["name"]
    assert "exited with code -9" in restarted[-1]["reason"]
