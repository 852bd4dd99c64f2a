"""Fuzzing the HTTP API from its own /openapi.json with Schemathesis, against a real gateway.

A run generates requests for every documented operation (the OpenAI routes,
the management API, files and batches, feedback) from the document's
schemas, valid and invalid, and sends them with one key: the admin key, or
the key of an endpoint. It passes when

- no response is a 5xx;
- every 4xx is the OpenAI error object (``{"error": {"message", "type",
  "param", "code"}}``) — and every response is what the document says
  (status, content type, body schema, the ``Allow`` of a 405);
- the gateway is healthy afterwards, and still answers;
- every model call it made that succeeded has its usage row.

The gateway (`modelyard up --no-defaults`) has the two endpoints `modelyard
up` creates, ``default`` (chat) and ``embed``, on hosted cards served by the
OpenAI stub; the document's examples name them, so the fuzzer makes model
calls that succeed.

A run is seeded and bounded in time: ``make test`` runs a short one
(15 s a key); ``make fuzz`` a long one. Settings, from the environment:

- ``MODELYARD_FUZZ_S``: seconds of fuzzing per key (default 15);
- ``MODELYARD_FUZZ_EXAMPLES``: cases per operation and pass (default 10);
- ``MODELYARD_FUZZ_SEED``: the seed (default 20240917). A failure prints it
  with a curl command per failing case: rerun with the same seed to see it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import engine
from schemathesis.engine import events
from sqlalchemy import select

from modelyard.server.app import create_app
from modelyard.settings import Settings
from modelyard.store import Database
from modelyard.store.models import UsageRecord
from tests.cards import hosted_card
from tests.live_gateway import start_server, write_catalog

SECONDS = int(os.environ.get("MODELYARD_FUZZ_S", "15"))
EXAMPLES = int(os.environ.get("MODELYARD_FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("MODELYARD_FUZZ_SEED", "20240917"))
#: the routes that call a model and write a usage row
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
ERROR_FIELDS = {"message", "type", "param", "code"}

pytestmark = pytest.mark.timeout(SECONDS * 2 + 240)


@schemathesis.check
def openai_error(ctx, response, case) -> None:
    """Every 4xx and 5xx is the OpenAI error object, as JSON."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {response.status_code} that is not JSON: {response.content[:200]!r}") from None
    if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
            and set(body["error"]) == ERROR_FIELDS):
        raise AssertionError(f"a {response.status_code} that is not an OpenAI error object: {body!r:.300}")


@dataclass
class FuzzRun:
    """What one Schemathesis run saw: its cases, its failures and the model calls that succeeded."""

    cases: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    #: the request id of each model call answered 2xx
    model_calls: list[str] = field(default_factory=list)


def fuzz(url: str, key: str) -> FuzzRun:
    """Run Schemathesis against the gateway at `url` with `key`, from its /openapi.json."""
    config = schemathesis.Config.from_dict({
        "seed": SEED, "max-time": SECONDS, "workers": 1, "request-timeout": 30,
        "headers": {"Authorization": f"Bearer {key}"},
        # no example database or cache, so a run depends on the seed alone (and writes nothing here)
        "generation": {"max-examples": EXAMPLES, "database": "none"},
        "cache": {"enabled": False},
        "checks": {
            # "valid" by the schema is not always valid: a JSON schema cannot say that traffic weights sum to
            # 100, that a router endpoint names its tiers, that a window is at most 31 days …
            "positive_data_acceptance": {"enabled": False},
            # not yet: pydantic's lax mode takes 0 for false, and false for 0, where the schema says boolean or
            # integer (``"echo": 0``, ``"input": [[false]]``), as the request models are not strict
            "negative_data_rejection": {"enabled": False},
        },
    })
    schema = schemathesis.openapi.from_url(url + "/openapi.json", config=config)
    run = FuzzRun()
    started = time.monotonic()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            _record(run, event.recorder)
        elif isinstance(event, events.NonFatalError):
            run.failures.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    run.seconds = time.monotonic() - started
    return run


def _record(run: FuzzRun, recorder) -> None:
    run.cases += len(recorder.cases)
    for checks in recorder.checks.values():
        for check in checks:
            if check.failure_info is not None:
                failure = check.failure_info.failure
                run.failures.append(f"{recorder.label} [{check.name}] {failure.title}: {failure.message}\n"
                                    f"    {check.failure_info.code_sample}")
    for interaction in recorder.interactions.values():
        response = interaction.response
        if response is None:
            continue
        run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1
        path = httpx.URL(interaction.request.uri).path
        if path in MODEL_ROUTES and 200 <= response.status_code < 300:
            headers = {name.lower(): values[0] for name, values in response.headers.items()}
            run.model_calls.append(headers["x-request-id"])


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory):
    """Hypothesis keeps what it learns of the code under test in a folder (by default .hypothesis/ here)."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture
def gateway(stub, tmp_path):
    """A gateway with the endpoints `modelyard up` makes, ``default`` (chat) and ``embed``, on hosted cards
    served by the stub; and ``default``'s key. Stopped (SIGTERM: usage is flushed) after the test."""
    home = tmp_path / "home"
    write_catalog(home, hosted_card("stub-chat", stub.root + "/v1"),
                  hosted_card("stub-embed", stub.root + "/v1", task="embedding"))
    srv = start_server(home, "--no-defaults")
    try:
        keys = {}
        for name, model in (("default", "stub-chat"), ("embed", "stub-embed")):
            r = srv.api("POST", "/api/endpoints", json={"name": name})
            assert r.status_code == 201, r.text
            keys[name] = r.json()["keys"]["primary"]
            r = srv.api("POST", f"/api/endpoints/{name}/deployments?all_traffic=true",
                        json={"name": "stub", "model": model})
            assert r.status_code == 201, r.text
        yield srv, keys["default"]
    finally:
        srv.stop()


@pytest.mark.parametrize("who", ["endpoint key", "admin key"])
def test_fuzzing_the_api_from_its_document_finds_no_5xx_and_only_openai_errors(gateway, who):
    srv, endpoint_key = gateway
    run = fuzz(srv.url, srv.admin_key if who == "admin key" else endpoint_key)
    print(f"\nfuzz ({who}, seed {SEED}): {run.cases} cases in {run.seconds:.1f} s, "
          f"{len(run.model_calls)} model calls answered, statuses {dict(sorted(run.statuses.items()))}")

    assert not run.failures, f"seed {SEED}, {len(run.failures)} failure(s):\n" + "\n".join(run.failures[:30])
    assert run.cases >= 50 and not any(status >= 500 for status in run.statuses)
    assert run.model_calls, "the document's examples should have made model calls that succeed"
    # still healthy, and still answering
    assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(srv.url + "/readyz", timeout=10).status_code == 200
    answer = srv.openai(endpoint_key).chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    # every model call that was answered has its usage row once the gateway has stopped (and flushed)
    srv.stop()
    db = Database(f"sqlite:///{srv.home / 'modelyard.db'}")
    with db.session() as session:
        recorded = set(session.scalars(select(UsageRecord.request_id)))
    missing = [request_id for request_id in run.model_calls if request_id not in recorded]
    assert not missing, f"{len(missing)} of {len(run.model_calls)} model calls have no usage row"


# --- the document itself, and what fuzzing found --------------------------------------------------------


def call(method: str, path: str, **kwargs) -> tuple[httpx.Response, dict]:
    """One request to the FastAPI app in this test's MODELYARD_HOME (no deployments), with the admin key;
    the response and /openapi.json."""
    async def go() -> tuple[httpx.Response, dict]:
        app = create_app(Settings.from_env())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                headers = {"Authorization": f"Bearer {app.state.gateway.admin_key}"}
                response = await client.request(method, path, headers=headers, **kwargs)
                return response, (await client.get("/openapi.json")).json()
    return asyncio.run(go())


def body_model(doc: dict, method: str, path: str) -> str:
    schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return schema["$ref"].rsplit("/", 1)[-1]


def test_the_document_names_the_model_each_route_reads_its_body_as():
    _, doc = call("GET", "/healthz")
    expected = {
        ("post", "/v1/chat/completions"): "ChatCompletionRequest", ("post", "/v1/completions"): "CompletionRequest",
        ("post", "/v1/embeddings"): "EmbeddingRequest", ("post", "/v1/feedback"): "FeedbackRequest",
        ("post", "/api/endpoints"): "EndpointSpec", ("patch", "/api/endpoints/{name}"): "EndpointPatch",
        ("post", "/api/endpoints/{name}/deployments"): "DeploymentCreate",
        ("patch", "/api/endpoints/{name}/deployments/{deployment}"): "DeploymentPatch",
        ("post", "/api/endpoints/{name}/keys/regenerate"): "KeyRegenerate", ("post", "/api/apply"): "ApplyBody",
        ("post", "/api/keys"): "KeyCreate", ("post", "/api/endpoints/{name}/router/calibrate"): "CalibrateBody",
        ("post", "/api/endpoints/{name}/deployments/{deployment}/rollout"): "RolloutBody",
    }
    assert {route: body_model(doc, *route) for route in expected} == expected
    schemas = doc["components"]["schemas"]
    # the path names the endpoint of a new deployment; the spec of /api/apply is the one its kind says
    assert "endpoint_name" in schemas["DeploymentSpec"]["required"]
    assert "endpoint_name" not in schemas["DeploymentCreate"].get("required", [])
    assert {s["$ref"].rsplit("/", 1)[-1] for s in schemas["ApplyBody"]["oneOf"]} == {"ApplyEndpoint", "ApplyDeployment"}
    # the OpenAI routes take a key; errors are OpenAI's at any status (never FastAPI's 422)
    assert doc["security"] == [{"bearerKey": []}, {"apiKeyHeader": []}]
    assert doc["paths"]["/v1/models/{name}"]["get"]["parameters"][0]["name"] == "name"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    for item in doc["paths"].values():
        for operation in item.values():
            assert "422" not in operation["responses"]
            assert operation["responses"]["default"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}


def test_a_cache_ttl_that_is_not_a_string_is_a_400_naming_it_not_a_500():
    # found by fuzzing: a list reached the duration parser as a TypeError
    r, _ = call("POST", "/api/endpoints", json={"name": "ttl-list", "cache": {"ttl": ["1h"]}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache.ttl"


def test_a_name_with_a_trailing_line_break_is_refused():
    # Python's `$` matches before a final "\n"; the documented pattern (and JSON Schema's `$`) does not
    r, _ = call("POST", "/api/endpoints", json={"name": "chat\n"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


def test_a_405_allows_every_method_of_the_path():
    # found by fuzzing: Starlette named only the methods of the first route with the path (GET /api/endpoints)
    r, _ = call("PUT", "/api/endpoints")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert set(r.json()["error"]) == ERROR_FIELDS
