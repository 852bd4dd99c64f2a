"""Rollouts against a real gateway: endpoint `chat` with two Gemma 3 270M deployments,
blue (all live traffic) and green, while a small loop plays the user's application.

A rollout that stays within its limits ends with green holding all traffic; one
that breaches them puts blue back; a gateway stopped mid-rollout picks the
rollout up again when it starts — or, if the split is no longer the rollout's,
restores the split from before it and says why.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager

import orjson
import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli import rollout as rollout_cli

pytestmark = pytest.mark.model

ASK = {"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


def cli_app() -> typer.Typer:
    """The rollout commands as `modelyard` registers them (`deployment rollout`, `rollout status|cancel`)."""
    app = typer.Typer()
    deployment = typer.Typer()
    deployment.command("rollout")(rollout_cli.rollout)
    app.add_typer(deployment, name="deployment")
    app.add_typer(rollout_cli.app, name="rollout")
    return app


def cli(srv, *args: str):
    return CliRunner().invoke(cli_app(), list(args), env={**srv.env(), "COLUMNS": "200"})


def chat_with_blue_and_green(start_gateway, home=None):
    srv = start_gateway(home, "--no-defaults")
    assert srv.api("POST", "/api/endpoints", json={"name": "chat"}).status_code == 201
    r = srv.api("POST", "/api/endpoints/chat/deployments", params={"all_traffic": "true"},
                json={"name": "blue", "model": "gemma-3-270m"})
    assert r.status_code == 201, r.text
    r = srv.api("POST", "/api/endpoints/chat/deployments", json={"name": "green", "model": "gemma-3-270m"})
    assert r.status_code == 201, r.text
    assert traffic(srv) == {"blue": 100}
    return srv


def traffic(srv) -> dict[str, int]:
    r = srv.api("GET", "/api/endpoints/chat")
    assert r.status_code == 200, r.text
    return r.json()["traffic"]


def live(split: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in split.items() if v}


@contextmanager
def users(srv, count: int = 2):
    """``count`` users sending requests to `chat` one after another until the block ends; yields the
    deployments that answered."""
    stop = threading.Event()
    seen: list[str] = []

    def loop() -> None:
        client = srv.openai()
        while not stop.is_set():
            try:
                reply = client.chat.completions.with_raw_response.create(**ASK)
                seen.append(reply.headers.get("x-modelyard-deployment", "?"))
            except Exception:  # noqa: BLE001 - a gateway restarting refuses connections for a moment
                time.sleep(0.2)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def wait_for_end(srv, rollout_id: int, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout = srv.api("GET", f"/api/rollouts/{rollout_id}").json()
        if rollout["state"] != "running":
            return rollout
        time.sleep(0.3)
    raise AssertionError(f"rollout {rollout_id} still running after {timeout}s: {rollout}")


def start_rollout(srv, **body) -> dict:
    r = srv.api("POST", "/api/endpoints/chat/deployments/green/rollout", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_healthy_rollout_from_the_command_line_ends_with_green_holding_all_traffic(start_gateway):
    srv = chat_with_blue_and_green(start_gateway)
    with users(srv) as seen:
        result = cli(srv, "deployment", "rollout", "chat", "green", "--steps", "50,100", "--interval", "6s",
                     "--max-error-rate", "0.5", "--max-p95-ms", "60000")
    assert result.exit_code == 0, result.output
    assert "step 1/2: green gets 50%" in result.output and "succeeded" in result.output

    assert traffic(srv) == {"blue": 0, "green": 100}
    (rollout,) = srv.api("GET", "/api/endpoints/chat/rollouts").json()["data"]
    assert rollout["state"] == "succeeded" and rollout["current_step"] == 1
    judged = [e for e in rollout["history"] if e["event"] in ("passed", "no_traffic")]
    assert len(judged) == 2 and sum(e["stats"]["requests"] for e in judged) > 0
    assert "green" in seen, "green answered live requests during the rollout"

    status = cli(srv, "rollout", "status", "chat")
    assert status.exit_code == 0, status.output
    assert f"rollout {rollout['id']}" in status.output and "succeeded" in status.output
    assert "traffic now: blue=0, green=100" in status.output and "passed" in status.output


def test_a_p95_breach_rolls_back_to_blue_and_says_why(start_gateway):
    srv = chat_with_blue_and_green(start_gateway)
    with users(srv):
        started = start_rollout(srv, steps=[50, 100], interval_s=6, max_error_rate=0.5, max_p95_ms=1)
        assert started["traffic_now"] == {"blue": 50, "green": 50}
        rollout = wait_for_end(srv, started["id"])

    assert rollout["state"] == "rolled_back", rollout
    assert "p95 latency" in rollout["reason"] and "above the limit of 1 ms" in rollout["reason"]
    assert traffic(srv) == {"blue": 100} and rollout["traffic_now"] == {"blue": 100}
    assert rollout["history"][-1]["event"] == "rolled_back" and rollout["history"][-1]["traffic"] == {"blue": 100}
    # Over: a second cancel has nothing to stop, and a new rollout may start.
    assert srv.api("POST", f"/api/rollouts/{started['id']}/cancel").status_code == 409


def test_bad_rollouts_are_refused_naming_the_field(start_gateway):
    srv = chat_with_blue_and_green(start_gateway)
    bad = srv.api("POST", "/api/endpoints/chat/deployments/green/rollout", json={"steps": [50, 20]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "steps"
    unknown = srv.api("POST", "/api/endpoints/chat/deployments/purple/rollout", json={"steps": [50]})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "deployment"
    started = start_rollout(srv, steps=[10, 100], interval_s=60)
    second = srv.api("POST", "/api/endpoints/chat/deployments/green/rollout", json={"steps": [20]})
    assert second.status_code == 409 and second.json()["error"]["code"] == "rollout_in_progress"
    cancelled = cli(srv, "rollout", "cancel", str(started["id"]))
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    assert traffic(srv) == {"blue": 100}


def test_a_gateway_restarted_mid_rollout_resumes_it_or_reverts_it_with_a_reason(start_gateway):
    srv = chat_with_blue_and_green(start_gateway)
    home = srv.home
    started = start_rollout(srv, steps=[50, 100], interval_s=120, max_error_rate=0.5, max_p95_ms=60000)
    assert traffic(srv) == {"blue": 50, "green": 50}
    srv.stop()

    # Back with the split still the rollout's: it goes on with the same step.
    srv = start_gateway(home, "--no-defaults")
    rollout = srv.api("GET", f"/api/rollouts/{started['id']}").json()
    assert rollout["state"] == "running" and rollout["current_step"] == 0, rollout
    last = rollout["history"][-1]
    assert last["event"] == "resumed" and "restarted during step 1/2" in last["message"]
    assert rollout["step_started_at"] == started["step_started_at"], "the step keeps its start"
    assert live(traffic(srv)) == live(rollout["traffic_now"]) == {"blue": 50, "green": 50}
    srv.stop()

    # Someone changed the split while the gateway was down: the split from before the rollout comes back.
    with sqlite3.connect(home / "modelyard.db") as db:
        (spec,) = db.execute("select spec from endpoints where name = 'chat'").fetchone()
        db.execute("update endpoints set spec = ? where name = 'chat'",
                   (orjson.dumps({**orjson.loads(spec), "traffic": {"blue": 80, "green": 20}}).decode(),))
    srv = start_gateway(home, "--no-defaults")
    rollout = srv.api("GET", f"/api/rollouts/{started['id']}").json()
    assert rollout["state"] == "reverted", rollout
    assert "blue=80, green=20" in rollout["reason"] and "restored to blue=100" in rollout["reason"]
    assert traffic(srv) == {"blue": 100}, "what the endpoint routes is what the rollout says"
    status = cli(srv, "rollout", "status", "chat")
    assert "reverted" in status.output and "resumed" in status.output
