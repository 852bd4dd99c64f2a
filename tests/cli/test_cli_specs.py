"""Spec files and command-line arguments of `modelyard endpoint / deployment / apply / get`, without a server.

The management API is replaced by a small fake at the HTTP call, so these
check what the commands send and print for the contract's answers.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from modelyard.cli import apply as apply_cli
from modelyard.cli import deployment as deployment_cli
from modelyard.cli import endpoint as endpoint_cli
from modelyard.cli.specfile import SpecFileError, dump_yaml, parse_specs, read_spec_file, spec_from_description
from modelyard.serving.spec import DeploymentSpec, EndpointSpec

runner = CliRunner(env={"COLUMNS": "200"})

ENDPOINT = {"name": "chat", "description": "support bot", "auth_mode": "key", "policy": "split",
            "traffic": {"blue": 100}, "mirror_traffic": {"green": 5},
            "deployments": [{"name": "blue", "model": "gemma-3-270m", "state": "ready", "error": None,
                             "instance_count": 2, "hosted": False,
                             "instances": [{"name": "chat-blue-0", "state": "ready", "port": 41001, "pid": 11,
                                            "restarts": 0, "in_flight": 0, "last_error": None}]},
                            {"name": "green", "model": "gemma-3-270m", "state": "starting", "error": None,
                             "instance_count": 1, "hosted": False, "instances": []}]}
DEPLOYMENT = {"name": "blue", "model": "gemma-3-270m", "state": "ready", "error": None, "instance_count": 2,
              "hosted": False,
              "request_settings": {"request_timeout_ms": 5000, "max_concurrent_requests_per_instance": 2,
                                   "max_queue_wait_ms": 60000},
              "instances": [{"name": "chat-blue-0", "state": "ready", "port": 41001, "pid": 11, "restarts": 1,
                             "in_flight": 0, "last_error": None}]}


def write(tmp_path: Path, text: str, name: str = "spec.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# --- reading spec files ---------------------------------------------------------------


def test_a_single_endpoint_document(tmp_path):
    docs = read_spec_file(write(tmp_path, """
        name: chat
        traffic: {blue: 100}
    """))

    assert [(d.kind, d.line) for d in docs] == [("endpoint", 1)]
    assert docs[0].spec == EndpointSpec(name="chat", traffic={"blue": 100})
    assert docs[0].label == "endpoint chat"


def test_several_documents_are_told_apart_by_their_fields(tmp_path):
    docs = read_spec_file(write(tmp_path, """
        $schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
        name: chat
        ---
        name: blue
        endpoint_name: chat
        model: gemma-3-270m
        instance_count: 2
        request_settings:
          request_timeout_ms: 5000
        ---
        kind: Deployment
        name: green
        endpoint_name: chat
        model: qwen2.5-0.5b-instruct
        ---
    """))

    assert [(d.kind, d.label, d.line) for d in docs] == [
        ("endpoint", "endpoint chat", 1), ("deployment", "deployment chat/blue", 4),
        ("deployment", "deployment chat/green", 11)]
    blue = docs[1].spec
    assert isinstance(blue, DeploymentSpec) and blue.instance_count == 2
    assert blue.request_settings.request_timeout_ms == 5000
    # only what the file sets is sent; the server fills in the rest
    assert docs[1].body() == {"name": "blue", "endpoint_name": "chat", "model": "gemma-3-270m", "instance_count": 2,
                              "request_settings": {"request_timeout_ms": 5000}}


def test_an_explicit_kind_wins_and_is_not_sent(tmp_path):
    (doc,) = read_spec_file(write(tmp_path, "kind: endpoint\nname: chat\n"))
    assert doc.kind == "endpoint" and "kind" not in doc.body()


def test_an_unknown_kind_names_its_line(tmp_path):
    path = write(tmp_path, "name: chat\nkind: service\n")
    with pytest.raises(SpecFileError, match=r"spec.yml:2: kind must be 'endpoint' or 'deployment'"):
        read_spec_file(path)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, """
        name: chat
        traffic:
          blue: 90
         green: 10
    """)
    with pytest.raises(SpecFileError) as exc:
        read_spec_file(path)
    assert exc.value.message.startswith(f"{path}:4:")
    assert "not valid YAML" in exc.value.message


def test_malformed_yaml_in_a_later_document_names_its_line():
    with pytest.raises(SpecFileError) as exc:
        parse_specs("name: chat\n---\nname: blue\nendpoint_name: chat\nmodel: [gemma\n", "e.yml")
    # the problem is found at the end of the file; the message also says where the open list starts
    assert exc.value.message.startswith("e.yml:6:1: not valid YAML")
    assert "flow sequence that starts at line 5" in exc.value.message


def test_a_bad_field_names_the_field_and_its_line(tmp_path):
    path = write(tmp_path, """
        name: chat
        ---
        name: blue
        endpoint_name: chat
        model: gemma-3-270m
        request_settings:
          request_timeout_ms: 5
    """)
    with pytest.raises(SpecFileError) as exc:
        read_spec_file(path)
    message = exc.value.message
    assert message.startswith(f"{path}:7: deployment 'blue': field 'request_settings.request_timeout_ms'")
    assert "greater than or equal to 100" in message and "(got 5)" in message


def test_an_unknown_field_and_a_missing_one_are_each_named():
    text = "name: blue\nendpoint_name: chat\ninstances: 2\n"
    with pytest.raises(SpecFileError) as exc:
        parse_specs(text, "d.yml")
    lines = exc.value.message.splitlines()
    assert "d.yml:3: deployment 'blue': field 'instances' is not a known field" in lines
    assert "d.yml:1: deployment 'blue': field 'model' is required" in lines  # no line of its own: the document's


def test_a_bad_traffic_value_points_at_its_key():
    with pytest.raises(SpecFileError, match=r"^e.yml:4: endpoint 'chat': field 'traffic.green'"):
        parse_specs("name: chat\ntraffic:\n  blue: 90\n  green: ten\n", "e.yml")


def test_a_document_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecFileError, match=r"e.yml:3: a document must be a mapping"):
        parse_specs("name: chat\n---\n- name: blue\n", "e.yml")


def test_an_empty_file_and_a_missing_file_are_errors(tmp_path):
    with pytest.raises(SpecFileError, match="holds no endpoint or deployment"):
        read_spec_file(write(tmp_path, "# nothing here\n"))
    with pytest.raises(SpecFileError, match="no such file"):
        read_spec_file(tmp_path / "absent.yml")


# --- writing spec files ---------------------------------------------------------------


def test_dump_keeps_only_spec_fields_in_azure_order():
    text = dump_yaml(DEPLOYMENT, "deployment", endpoint_name="chat")

    assert list(yaml.safe_load(text)) == ["name", "endpoint_name", "model", "instance_count", "request_settings"]
    assert "state" not in text and "instances:" not in text and "pid" not in text


def test_endpoint_dump_round_trips_through_the_parser():
    text = dump_yaml(ENDPOINT, "endpoint")
    (doc,) = parse_specs(text)

    assert doc.kind == "endpoint" and "deployments" not in text
    assert doc.spec == spec_from_description(ENDPOINT, "endpoint")
    assert doc.spec.traffic == {"blue": 100} and doc.spec.mirror_traffic == {"green": 5}


def test_deployment_dump_round_trips_through_the_parser():
    spec = DeploymentSpec(name="blue", endpoint_name="chat", model="gemma-3-270m", instance_count=3,
                          request_settings={"request_timeout_ms": 5000}, liveness_probe={"period": 2},
                          environment_variables={"A": "1"}, options={"context_length": 4096})
    description = {**spec.model_dump(mode="json"), "state": "ready", "instances": []}
    (doc,) = parse_specs(dump_yaml(description, "deployment"))

    assert doc.kind == "deployment" and doc.spec == spec


# --- command-line arguments -----------------------------------------------------------


def test_split_arguments_parse_into_percent_maps():
    assert endpoint_cli.parse_traffic("blue=90,green=10") == {"blue": 90, "green": 10}
    assert endpoint_cli.parse_traffic(" blue = 100 ") == {"blue": 100}
    assert endpoint_cli.parse_mirror("green=10", False) == {"green": 10}
    assert endpoint_cli.parse_mirror("none", False) == {}
    assert endpoint_cli.parse_mirror(None, True) == {}
    assert endpoint_cli.parse_mirror(None, False) is None


@pytest.mark.parametrize("value, problem", [
    ("blue", "is not NAME=PERCENT"),
    ("blue=", "is not NAME=PERCENT"),
    ("blue=90,", "is not NAME=PERCENT"),
    ("blue=ninety", "must be a whole number"),
    ("blue=110,green=-10", "between 0 and 100"),
    ("blue=50,blue=50", "given twice"),
    ("blue/x=100", "not a deployment name"),
    ("blue=50,green=20", "add up to 70"),
])
def test_bad_traffic_arguments_are_refused_with_a_reason(value, problem):
    with pytest.raises(typer.BadParameter, match=problem):
        endpoint_cli.parse_traffic(value)


def test_bad_arguments_exit_2_before_any_request(fake_api):
    for args in (["update", "chat", "--traffic", "blue=50,green=20"], ["update", "chat", "--mirror", "green=x"],
                 ["update", "chat", "--mirror", "green=200"], ["update", "chat"], ["create", "bad name!"],
                 ["create"]):
        result = runner.invoke(endpoint_cli.app, args)
        assert result.exit_code == 2, (args, result.output)
    for args in (["create", "chat", "blue"], ["create", "chat", "blue", "--model", "m", "--instances", "0"],
                 ["update", "chat", "blue"], ["logs", "chat", "blue", "--lines", "0"]):
        result = runner.invoke(deployment_cli.app, args)
        assert result.exit_code == 2, (args, result.output)
    assert fake_api.calls == []


def test_a_bad_spec_file_exits_2_naming_the_line(tmp_path, fake_api):
    path = write(tmp_path, "name: chat\ntraffic:\n  blue: lots\n")
    result = runner.invoke(typer_app(apply_cli.apply), ["-f", str(path)])

    assert result.exit_code == 2
    assert f"{path}:3" in result.output and "traffic.blue" in result.output
    assert fake_api.calls == []


# --- what the commands send and print (fake management API) -------------------------


class FakeAPI:
    """Answers management API calls from a table of (method, path) -> (status, body); records every call."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, object]] = {}
        self.calls: list[tuple[str, str, object, dict]] = []

    def __call__(self, method, url, *, headers=None, timeout=None, json=None, params=None, **kwargs):
        path = httpx.URL(url).path
        self.calls.append((method, path, json, dict(params or {})))
        status, body = self.routes.get((method, path), (404, {"error": {"message": f"no route {method} {path}",
                                                                        "type": "not_found_error"}}))
        return httpx.Response(status, json=body)


@pytest.fixture
def fake_api(monkeypatch) -> FakeAPI:
    api = FakeAPI()
    monkeypatch.setattr("modelyard.cli.remote.httpx.request", api)
    monkeypatch.setenv("MODELYARD_ADMIN_KEY", "my-admin")
    monkeypatch.setenv("MODELYARD_URL", "http://gateway.test:8400")
    return api


def typer_app(command) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def test_create_prints_the_keys_once_with_a_note(fake_api):
    fake_api.routes[("POST", "/api/endpoints")] = (201, {**ENDPOINT, "deployments": [],
                                                         "keys": {"primary": "my-aaa", "secondary": "my-bbb"}})
    result = runner.invoke(endpoint_cli.app, ["create", "chat", "--description", "support bot"])

    assert result.exit_code == 0, result.output
    assert fake_api.calls[0][:3] == ("POST", "/api/endpoints", {"name": "chat", "description": "support bot"})
    assert "primary: my-aaa" in result.output.splitlines() and "secondary: my-bbb" in result.output.splitlines()
    assert "shown only now" in result.output


def test_update_sends_the_parsed_split(fake_api):
    fake_api.routes[("PATCH", "/api/endpoints/chat")] = (200, ENDPOINT)
    result = runner.invoke(endpoint_cli.app, ["update", "chat", "--traffic", "blue=90,green=10", "--no-mirror"])

    assert result.exit_code == 0, result.output
    assert fake_api.calls == [("PATCH", "/api/endpoints/chat", {"traffic": {"blue": 90, "green": 10},
                                                                "mirror_traffic": {}}, {})]


def test_server_errors_are_printed_and_exit_1(fake_api):
    fake_api.routes[("DELETE", "/api/endpoints/chat/deployments/blue")] = (
        409, {"error": {"message": "deployment 'blue' still gets 100% of the traffic", "type": "invalid_request_error",
                        "param": None, "code": "conflict"}})
    result = runner.invoke(deployment_cli.app, ["delete", "chat", "blue", "--yes"])

    assert result.exit_code == 1
    assert "still gets 100% of the traffic" in result.output


def test_deployment_create_sends_the_spec_without_its_endpoint(fake_api):
    fake_api.routes[("POST", "/api/endpoints/chat/deployments")] = (201, DEPLOYMENT)
    fake_api.routes[("GET", "/api/endpoints/chat")] = (200, ENDPOINT)
    result = runner.invoke(deployment_cli.app, ["create", "chat", "blue", "--model", "gemma-3-270m", "--instances", "2",
                                                "--all-traffic", "--timeout-ms", "5000"])

    assert result.exit_code == 0, result.output
    method, path, body, params = fake_api.calls[0]
    assert (method, path, params) == ("POST", "/api/endpoints/chat/deployments", {"all_traffic": "true"})
    assert body == {"name": "blue", "model": "gemma-3-270m", "instance_count": 2,
                    "request_settings": {"request_timeout_ms": 5000}}
    assert "chat-blue-0" in result.output and "traffic: 100%" in result.output


def test_deployment_update_keeps_the_request_settings_not_given(fake_api):
    fake_api.routes[("GET", "/api/endpoints/chat/deployments/blue")] = (200, DEPLOYMENT)
    fake_api.routes[("PATCH", "/api/endpoints/chat/deployments/blue")] = (200, DEPLOYMENT)
    fake_api.routes[("GET", "/api/endpoints/chat")] = (200, ENDPOINT)
    result = runner.invoke(deployment_cli.app, ["update", "chat", "blue", "--instances", "3", "--max-concurrent", "4"])

    assert result.exit_code == 0, result.output
    patch = [c for c in fake_api.calls if c[0] == "PATCH"][0]
    assert patch[2] == {"instance_count": 3, "request_settings": {"request_timeout_ms": 5000,
                                                                 "max_concurrent_requests_per_instance": 4,
                                                                 "max_queue_wait_ms": 60000}}


def test_logs_prints_each_instance_under_its_name(fake_api):
    fake_api.routes[("GET", "/api/endpoints/chat/deployments/blue/logs")] = (
        200, {"instances": {"chat-blue-0": "loading model\nready\n", "chat-blue-1": ""}})
    result = runner.invoke(deployment_cli.app, ["logs", "chat", "blue", "--lines", "5"])

    assert result.exit_code == 0, result.output
    assert fake_api.calls[0][3] == {"lines": 5}
    out = result.output
    assert out.index("chat-blue-0") < out.index("loading model") < out.index("chat-blue-1") < out.index("(empty)")


def test_get_yaml_is_the_spec_that_apply_sends_back(fake_api, tmp_path):
    fake_api.routes[("GET", "/api/endpoints/chat")] = (200, ENDPOINT)
    fake_api.routes[("POST", "/api/apply")] = (200, {"action": "unchanged", "kind": "endpoint", "name": "chat",
                                                     "description": ENDPOINT})
    got = runner.invoke(apply_cli.get_app, ["endpoint", "chat", "-o", "yaml"])
    assert got.exit_code == 0, got.output
    path = tmp_path / "chat.yml"
    path.write_text(got.stdout)

    applied = runner.invoke(typer_app(apply_cli.apply), ["-f", str(path)])

    assert applied.exit_code == 0, applied.output
    assert "endpoint chat unchanged" in applied.output
    sent = fake_api.calls[-1][2]
    assert sent["kind"] == "endpoint"
    assert EndpointSpec.model_validate(sent["spec"]) == spec_from_description(ENDPOINT, "endpoint")
    as_json = runner.invoke(apply_cli.get_app, ["endpoint", "chat", "-o", "json"])
    assert EndpointSpec.model_validate(json.loads(as_json.stdout)) == EndpointSpec.model_validate(sent["spec"])


def test_apply_sends_endpoints_before_deployments(fake_api, tmp_path):
    fake_api.routes[("POST", "/api/apply")] = (200, {"action": "created", "kind": "x", "name": "x", "description": {}})
    path = write(tmp_path, """
        name: blue
        endpoint_name: chat
        model: gemma-3-270m
        ---
        name: chat
    """)
    result = runner.invoke(typer_app(apply_cli.apply), ["-f", str(path)])

    assert result.exit_code == 0, result.output
    assert [c[2]["kind"] for c in fake_api.calls] == ["endpoint", "deployment"]
    assert result.output.index("endpoint chat created") < result.output.index("deployment chat/blue created")


def test_consume_shows_three_snippets_with_the_real_url(fake_api):
    fake_api.routes[("GET", "/api/endpoints/chat")] = (200, ENDPOINT)
    result = runner.invoke(endpoint_cli.app, ["consume", "chat"])

    assert result.exit_code == 0, result.output
    out = result.output
    assert 'base_url="http://gateway.test:8400/v1"' in out and 'model="chat"' in out
    assert "curl http://gateway.test:8400/v1/chat/completions" in out
    assert 'import OpenAI from "openai"' in out and 'baseURL: "http://gateway.test:8400/v1"' in out
    assert out.count("MODELYARD_API_KEY") >= 3 and "modelyard-deployment: blue" in out


def test_list_and_show_render_the_descriptions(fake_api):
    fake_api.routes[("GET", "/api/endpoints")] = (200, {"data": [ENDPOINT]})
    fake_api.routes[("GET", "/api/endpoints/chat")] = (200, ENDPOINT)
    listing = runner.invoke(endpoint_cli.app, ["list"])
    shown = runner.invoke(endpoint_cli.app, ["show", "chat"])

    assert listing.exit_code == 0 and shown.exit_code == 0, listing.output + shown.output
    assert "blue (1/2), green (0/1)" in listing.output and "blue=100" in listing.output and "green=5" in listing.output
    assert "starting" in listing.output
    assert "chat-blue-0" in shown.output and "41001" in shown.output and "100%" in shown.output
