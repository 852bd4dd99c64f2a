"""What an operator does from the command line: an endpoint, a blue and a green
deployment, a test of green, a traffic split, scaling, keys, spec files — against
a real gateway, with the `openai` client as the user's application."""

from __future__ import annotations

import re

import openai
import pytest
from typer.testing import CliRunner

from modelyard.cli import app

pytestmark = pytest.mark.model

ASK = {"model": "chat", "messages": [{"role": "user", "content": "What is the capital of France?"}],
       "max_tokens": 20, "temperature": 0}


def cli(srv, *args: str, input: str | None = None):
    """`modelyard ARGS...` against ``srv``, with a wide terminal so tables keep their cells on one line."""
    return CliRunner().invoke(app, list(args), env={**srv.env(), "COLUMNS": "200"}, input=input)


def ok(srv, *args: str, input: str | None = None) -> str:
    result = cli(srv, *args, input=input)
    assert result.exit_code == 0, f"modelyard {' '.join(args)}:\n{result.output}"
    return result.output


def printed_keys(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(primary|secondary): (\S+)$", output, re.M))


def endpoint(srv, name: str = "chat") -> dict:
    r = srv.api("GET", f"/api/endpoints/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def test_blue_green_rollout_from_the_command_line(start_gateway, tmp_path):
    srv = start_gateway(None, "--no-defaults")

    # An endpoint and its two keys, printed once.
    created = ok(srv, "endpoint", "create", "chat", "--description", "support bot")
    keys = printed_keys(created)
    assert set(keys) == {"primary", "secondary"} and "shown only now" in created
    listed_keys = ok(srv, "endpoint", "keys", "chat")
    assert keys["primary"] not in listed_keys and keys["primary"][:8] in listed_keys
    ok(srv, "endpoint", "create", "other")

    # blue takes all live traffic; green starts at 0%.
    blue = ok(srv, "deployment", "create", "chat", "blue", "--model", "gemma-3-270m", "--all-traffic")
    assert "created" in blue and "1/1 instances ready" in blue and "traffic: 100%" in blue
    green = ok(srv, "deployment", "create", "chat", "green", "--model", "gemma-3-270m")
    assert "1/1 instances ready" in green and "traffic: 0%" in green
    assert endpoint(srv)["traffic"] == {"blue": 100}

    # The endpoint's keys call this endpoint and no other.
    reply = srv.openai(key=keys["primary"]).chat.completions.create(**ASK)
    assert "Paris" in reply.choices[0].message.content
    with pytest.raises(openai.APIStatusError) as refused:
        srv.openai(key=keys["primary"]).chat.completions.create(**{**ASK, "model": "other"})
    assert refused.value.status_code == 403

    # green is tried directly before it gets any traffic.
    answer = ok(srv, "invoke", "chat", "--deployment", "green", "--prompt", "What is the capital of France?",
                "--temperature", "0")
    assert "Paris" in answer
    last = srv.api("GET", "/api/usage/recent", params={"endpoint": "chat", "limit": 1}).json()["data"][0]
    assert last["deployment"] == "green"

    # A copy of some live traffic goes to green, then stops.
    ok(srv, "endpoint", "update", "chat", "--mirror", "green=10")
    assert endpoint(srv)["mirror_traffic"] == {"green": 10}
    ok(srv, "endpoint", "update", "chat", "--no-mirror")
    assert endpoint(srv)["mirror_traffic"] == {}

    # Then 10% of live traffic moves to green.
    ok(srv, "endpoint", "update", "chat", "--traffic", "blue=90,green=10")
    shown = ok(srv, "endpoint", "show", "chat")
    assert "traffic: blue=90, green=10" in shown and "support bot" in shown
    assert endpoint(srv)["traffic"] == {"blue": 90, "green": 10}

    # A split that does not add up is refused, and nothing changes.
    bad = cli(srv, "endpoint", "update", "chat", "--traffic", "blue=50,green=20")
    assert bad.exit_code != 0 and "100" in bad.output
    unknown = cli(srv, "endpoint", "update", "chat", "--traffic", "blue=90,purple=10")
    assert unknown.exit_code == 1 and "purple" in unknown.output
    assert endpoint(srv)["traffic"] == {"blue": 90, "green": 10}

    # What `get -o yaml` writes, `apply -f` reads back as unchanged.
    spec = tmp_path / "chat.yml"
    spec.write_text(ok(srv, "get", "endpoint", "chat", "-o", "yaml") + "---\n" +
                    ok(srv, "get", "deployment", "chat", "blue", "-o", "yaml"))
    applied = ok(srv, "apply", "-f", str(spec))
    assert "endpoint chat unchanged" in applied and "deployment chat/blue unchanged" in applied

    # Scaling blue: two ready instances.
    ok(srv, "deployment", "update", "chat", "blue", "--instances", "2")
    shown = ok(srv, "deployment", "show", "chat", "blue")
    assert "2/2 instances ready" in shown and "chat" in shown
    described = srv.api("GET", "/api/endpoints/chat/deployments/blue").json()
    assert [i["state"] for i in described["instances"]] == ["ready", "ready"]
    assert "Paris" in srv.openai(key=keys["secondary"]).chat.completions.create(**ASK).choices[0].message.content

    # A deployment with live traffic cannot be deleted; the server says why.
    refused_delete = cli(srv, "deployment", "delete", "chat", "blue", "--yes")
    assert refused_delete.exit_code == 1 and "traffic" in refused_delete.output
    assert "blue" in {d["name"] for d in endpoint(srv)["deployments"]}

    # Each instance's log, under its name.
    logs = ok(srv, "deployment", "logs", "chat", "blue", "--lines", "20")
    for instance in described["instances"]:
        assert instance["name"] in logs
    assert len(logs.strip().splitlines()) > len(described["instances"])

    # How to call it.
    consume = ok(srv, "endpoint", "consume", "chat")
    assert f'base_url="{srv.url}/v1"' in consume and 'model="chat"' in consume
    assert f"curl {srv.url}/v1/chat/completions" in consume and "modelyard-deployment" in consume

    # A new secondary key: printed once, works; the old one does not.
    regenerated = ok(srv, "endpoint", "regenerate-key", "chat", "--which", "secondary")
    new_key = regenerated.strip().splitlines()[-1]
    assert new_key != keys["secondary"]
    assert srv.openai(key=new_key).chat.completions.create(**{**ASK, "max_tokens": 3})
    with pytest.raises(openai.AuthenticationError):
        srv.openai(key=keys["secondary"]).chat.completions.create(**{**ASK, "max_tokens": 3})

    # green is retired once its traffic has moved back, then the endpoint goes.
    ok(srv, "endpoint", "update", "chat", "--traffic", "blue=100,green=0")
    ok(srv, "deployment", "delete", "chat", "green", "--yes")
    assert [d["name"] for d in endpoint(srv)["deployments"]] == ["blue"]
    assert "green" not in ok(srv, "deployment", "list", "chat")
    kept = cli(srv, "endpoint", "delete", "chat", input="n\n")
    assert kept.exit_code != 0 and srv.api("GET", "/api/endpoints/chat").status_code == 200
    ok(srv, "endpoint", "delete", "chat", input="y\n")
    assert srv.api("GET", "/api/endpoints/chat").status_code == 404
    listing = ok(srv, "endpoint", "list")
    assert "other" in listing and "chat" not in listing


def test_spec_files_create_then_update_then_change_nothing(start_gateway, tmp_path):
    """No model is started here: an endpoint alone goes through apply, and a bad file never reaches the server."""
    srv = start_gateway(None, "--no-defaults")
    spec = tmp_path / "docs.yml"
    spec.write_text("name: docs\ndescription: first\n")

    created = ok(srv, "apply", "-f", str(spec))
    assert "endpoint docs created" in created and set(printed_keys(created)) == {"primary", "secondary"}
    assert "endpoint docs unchanged" in ok(srv, "apply", "-f", str(spec))
    spec.write_text("name: docs\ndescription: second\n")
    assert "endpoint docs updated" in ok(srv, "apply", "-f", str(spec))
    assert endpoint(srv, "docs")["description"] == "second"

    bad = tmp_path / "bad.yml"
    bad.write_text("name: docs\ndescription: third\ntraffic:\n  blue: 150\n")
    result = cli(srv, "apply", "-f", str(bad))
    assert result.exit_code == 2 and f"{bad}:3" in result.output and "traffic" in result.output
    assert endpoint(srv, "docs")["description"] == "second"

    from_file = tmp_path / "notes.yml"
    from_file.write_text("name: notes\ndescription: from a file\n")
    assert set(printed_keys(ok(srv, "endpoint", "create", "-f", str(from_file)))) == {"primary", "secondary"}
    listing = ok(srv, "endpoint", "list")
    assert "docs" in listing and "notes" in listing and "no deployments" in listing
    missing = cli(srv, "endpoint", "show", "nope")
    assert missing.exit_code == 1 and "nope" in missing.output
