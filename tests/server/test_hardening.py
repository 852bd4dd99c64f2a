"""Findings of the security review, each as what a client sees: an OpenAI-shaped 4xx that names the field,
never a plain-text 500, a header built from unchecked text, or a body held in memory before it is refused.

Two ways in, both without a model:

- ``gw``: a real gateway (`modelyard up --no-defaults`, so uvicorn serves `FastPath`) whose only endpoint
  routes by rules between two hosted cards on the OpenAI stub;
- ``in_process``: the FastAPI app itself (the "normal" path, with its exception handlers), no deployment
  at all, driven through httpx's ASGI transport — which hands the body to the app chunk by chunk, so a
  test can count how much of it the app read.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator
from urllib.parse import unquote

import httpx
import pytest

from modelyard.server.app import create_app
from modelyard.settings import Settings
from tests.cards import hosted_card
from tests.live_gateway import start_server, write_catalog
from tests.openai_stub import start_stub_in_thread

MSG = [{"role": "user", "content": "hi"}]
#: a model name no HTTP header can carry as it is (not Latin-1), and one that would inject a header
ODD_NAMES = ["modèle-✓", "x\r\nset-cookie: a=b"]
#: the console's sign-in form limit (server/ui/auth.py)
FORM_LIMIT = 16_384
#: a rule name for the ``x-modelyard-route`` header: not Latin-1, and a line break
RULE = "règle-✓\r\nset-cookie: a=b"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A live gateway with one endpoint, ``ruled``: a rules router over two hosted tiers on the stub."""
    root, stop_stub = start_stub_in_thread()
    home = tmp_path_factory.mktemp("hardening") / "home"
    write_catalog(home, hosted_card("stub-small", root + "/v1"), hosted_card("stub-large", root + "/v1"))
    srv = start_server(home, "--no-defaults")
    try:
        assert srv.api("POST", "/api/endpoints", json={"name": "ruled"}).status_code == 201
        for tier in ("small", "large"):
            r = srv.api("POST", "/api/endpoints/ruled/deployments", json={"name": tier, "model": f"stub-{tier}"})
            assert r.status_code == 201, r.text
        spec = {"name": "ruled", "policy": "router", "tiers": ["small", "large"],
                "router": {"strategy": "rules", "rules": [{"name": RULE, "when": {"min_messages": 1}, "tier": "small"}]}}
        r = srv.api("POST", "/api/apply", json={"kind": "endpoint", "spec": spec})
        assert r.status_code == 200, r.text
        yield srv
    finally:
        srv.stop()
        stop_stub()


@contextlib.asynccontextmanager
async def in_process() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The FastAPI app (no `FastPath`) with its lifespan, in this test's MODELYARD_HOME; the client and the admin key."""
    app = create_app(Settings.from_env())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            yield client, app.state.gateway.admin_key


def admin(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(r: httpx.Response) -> dict:
    assert r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def assert_safe_headers(r: httpx.Response) -> None:
    """Every response header is printable ASCII, and none was injected."""
    assert "set-cookie" not in r.headers
    for name, value in r.headers.raw:
        assert value.isascii() and all(32 <= b < 127 for b in value), (name, value)


# --- 1. response headers built from a model or rule name ----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", ODD_NAMES, ids=["non-latin1", "crlf"])
def test_a_model_name_no_header_can_carry_is_a_404_like_any_unknown_model_on_the_fast_path(gw, model, stream):
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": model, "messages": MSG, "stream": stream},
                   headers=admin(gw.admin_key), timeout=30)
    err = error_of(r)
    assert r.status_code == 404 and (err["param"], err["code"]) == ("model", "model_not_found")
    assert_safe_headers(r)
    assert unquote(r.headers["x-modelyard-endpoint"]) == model  # percent-encoded UTF-8, nothing lost


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", ODD_NAMES, ids=["non-latin1", "crlf"])
async def test_a_model_name_no_header_can_carry_is_a_404_like_any_unknown_model_through_fastapi(model, stream):
    async with in_process() as (client, key):
        r = await client.post("/v1/chat/completions", json={"model": model, "messages": MSG, "stream": stream},
                              headers=admin(key))
    err = error_of(r)
    assert r.status_code == 404 and (err["param"], err["code"]) == ("model", "model_not_found")
    assert_safe_headers(r)
    assert unquote(r.headers["x-modelyard-endpoint"]) == model


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_router_rule_name_reaches_the_route_header_percent_encoded(gw, stream):
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "ruled", "messages": MSG, "stream": stream},
                   headers=admin(gw.admin_key), timeout=30)
    assert r.status_code == 200, r.text
    assert_safe_headers(r)
    assert r.headers["x-modelyard-route"] == "rules:r%C3%A8gle-%E2%9C%93%0D%0Aset-cookie: a=b>small"
    assert unquote(r.headers["x-modelyard-route"]) == f"rules:{RULE}>small"
    assert r.headers["x-modelyard-deployment"] == "small" and r.headers["x-modelyard-endpoint"] == "ruled"


# --- 2. the console's sign-in form is refused before it is read -------------------------------------


def counting_body(sent: list[int], total: int = 1 << 20, chunk: int = 1024):
    """``total`` bytes of form in ``chunk``-byte pieces, appending each piece's size to ``sent`` as it is taken."""
    async def body():
        for _ in range(total // chunk):
            sent.append(chunk)
            yield b"k" * chunk
    return body()


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/ui/login", "/ui/logout"])
async def test_a_sign_in_form_declaring_more_than_16kb_is_413_before_any_of_it_is_read(path):
    sent: list[int] = []
    async with in_process() as (client, _):
        r = await client.post(path, content=counting_body(sent), headers={
            "content-type": "application/x-www-form-urlencoded", "content-length": str(1 << 20)})
    err = error_of(r)
    assert r.status_code == 413 and err["code"] == "request_too_large"
    assert sum(sent) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/ui/login", "/ui/logout"])
async def test_a_chunked_sign_in_form_is_413_as_soon_as_it_passes_16kb(path):
    sent: list[int] = []
    async with in_process() as (client, _):
        r = await client.post(path, content=counting_body(sent),
                              headers={"content-type": "application/x-www-form-urlencoded"})
    err = error_of(r)
    assert r.status_code == 413 and err["code"] == "request_too_large"
    assert r.request.headers["transfer-encoding"] == "chunked" and "content-length" not in r.request.headers
    assert FORM_LIMIT < sum(sent) <= FORM_LIMIT + 2 * 1024  # stopped one piece past the limit, not at 1 MiB


@pytest.mark.anyio
async def test_a_small_sign_in_form_still_signs_in_and_out():
    async with in_process() as (client, key):
        r = await client.post("/ui/login", data={"key": key, "next": "/ui/endpoints"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/endpoints"
        assert "modelyard_session" in r.cookies
        wrong = await client.post("/ui/login", data={"key": "nope"})
        assert wrong.status_code == 401
        out = await client.post("/ui/logout", data={})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"


# --- 3. the key is checked before the body -----------------------------------------------------------


@pytest.mark.parametrize("key, code", [(None, "missing_api_key"), ("sk-wrong", "invalid_api_key")])
@pytest.mark.parametrize("route", ["/chat/completions", "/completions", "/embeddings"])
@pytest.mark.parametrize("body", [b'{"model": "ruled", "messages": [', b"", b"[1, 2]", b'{"model": "ruled"}'],
                         ids=["malformed", "empty", "not-an-object", "missing-field"])
def test_without_a_valid_key_any_body_is_401(gw, route, key, code, body):
    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    r = httpx.post(gw.base_url + route, content=body, headers=headers, timeout=30)
    err = error_of(r)
    assert r.status_code == 401 and err["code"] == code


@pytest.mark.parametrize("route", ["/chat/completions", "/completions", "/embeddings"])
def test_with_a_valid_key_a_bad_body_is_still_400(gw, route):
    r = httpx.post(gw.base_url + route, content=b'{"model": "ruled", "messages": [', timeout=30,
                   headers={"content-type": "application/json", **admin(gw.admin_key)})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"


# --- 4. query and path values out of range ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("url, param", [
    ("/api/usage?days=1e12", "days"),
    ("/api/usage?days=1000000000000", "days"),
    ("/api/usage?days=-3", "days"),
    ("/api/usage/recent?limit=abc", "limit"),
    ("/api/usage/recent?limit=-1", "limit"),
    ("/api/usage/recent?limit=99999999999999999999999", "limit"),
    ("/api/endpoints/chat/metrics?bucket=100000000000000000000000", "bucket"),
    ("/api/endpoints/chat/decisions?bucket=100000000000000000000000", "bucket"),
    ("/api/endpoints/chat/metrics?window=100000000000d", "window"),
    ("/api/endpoints/chat/cache?window=100000000000d", "window"),
    ("/api/endpoints/chat/router/report?window=100000000000d", "window"),
])
async def test_an_out_of_range_query_value_is_a_400_naming_it(url, param):
    async with in_process() as (client, key):
        assert (await client.post("/api/endpoints", json={"name": "chat"}, headers=admin(key))).status_code == 201
        r = await client.get(url, headers=admin(key))
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == param, err


@pytest.mark.anyio
@pytest.mark.parametrize("method, path", [("GET", "/api/rollouts/{id}"), ("POST", "/api/rollouts/{id}/cancel")])
@pytest.mark.parametrize("rollout_id", ["160571204936508122056599157088452608", "9223372036854775808", "2147483648", "0", "abc"])
async def test_a_rollout_id_no_row_can_have_is_404(method, path, rollout_id):
    async with in_process() as (client, key):
        r = await client.request(method, path.format(id=rollout_id), headers=admin(key))
    err = error_of(r)
    assert r.status_code == 404 and (err["param"], err["code"]) == ("rollout_id", "rollout_not_found")


@pytest.mark.anyio
async def test_in_range_query_values_answer_as_before():
    async with in_process() as (client, key):
        assert (await client.post("/api/endpoints", json={"name": "chat"}, headers=admin(key))).status_code == 201
        for url in ("/api/usage", "/api/usage?days=400", "/api/usage/recent?limit=5000", "/api/usage/recent",
                    "/api/endpoints/chat/metrics?window=1h&bucket=60", "/v1/files?limit=3"):
            r = await client.get(url, headers=admin(key))
            assert r.status_code == 200, (url, r.text)
        assert (await client.get("/api/rollouts/9223372036854775807", headers=admin(key))).status_code == 404
