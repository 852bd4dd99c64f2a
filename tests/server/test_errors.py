"""Bad input gets an OpenAI-shaped error with the right status and the field — never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.model

MSG = [{"role": "user", "content": "hi"}]


def post(server, path, body=None, *, content=None, key="admin", headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    if key == "admin":
        h["Authorization"] = f"Bearer {server.admin_key}"
    elif key:
        h["Authorization"] = f"Bearer {key}"
    return httpx.post(server.base_url + path, json=body if content is None else None, content=content, headers=h,
                      timeout=60)


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json_is_400(server):
    r = post(server, "/chat/completions", content=b'{"model": "default", "messages": [')
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_json"


def test_body_that_is_not_an_object_is_400(server):
    r = post(server, "/chat/completions", content=b"[1, 2]")
    assert r.status_code == 400


def test_wrong_field_type_names_the_field(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "temperature": "hot"})
    assert r.status_code == 400
    assert error_of(r)["param"] == "temperature"


def test_missing_messages_names_the_field(server):
    r = post(server, "/chat/completions", {"model": "default"})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "messages" and err["code"] == "missing_required_parameter"


def test_missing_prompt_names_the_field(server):
    r = post(server, "/completions", {"model": "default"})
    assert r.status_code == 400 and error_of(r)["param"] == "prompt"


def test_unknown_endpoint_is_404(server):
    with pytest.raises(openai.NotFoundError) as exc:
        server.openai().chat.completions.create(model="no-such-endpoint", messages=MSG)
    assert exc.value.status_code == 404
    assert exc.value.body["param"] == "model"


def test_missing_key_is_401(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG}, key=None)
    assert r.status_code == 401 and error_of(r)["code"] == "missing_api_key"


def test_wrong_key_is_401(server):
    with pytest.raises(openai.AuthenticationError):
        server.openai(key="my-wrong").chat.completions.create(model="default", messages=MSG)


def test_azure_style_api_key_header_is_accepted(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "max_tokens": 2}, key=None,
             headers={"api-key": server.admin_key})
    assert r.status_code == 200


@pytest.mark.parametrize("value", [0, -5])
def test_max_tokens_must_be_positive(server, value):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "max_tokens": value})
    assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"


def test_max_tokens_beyond_the_context_is_400_naming_the_limit(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "max_tokens": 100_000})
    err = error_of(r)
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert "4096" in err["message"]


def test_prompt_longer_than_the_context_is_400_naming_the_limit(server):
    long_text = "word " * 6000
    with pytest.raises(openai.BadRequestError) as exc:
        server.openai().chat.completions.create(model="default", messages=[{"role": "user", "content": long_text}])
    assert exc.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 4096 tokens" in exc.value.body["message"]


def test_n_greater_than_one_is_refused_by_llamacpp(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "n": 2})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "n" and "n > 1" in err["message"]


def test_unknown_parameter_is_refused(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "temprature": 0.5})
    assert r.status_code == 400 and error_of(r)["param"] == "temprature"


def test_body_over_the_size_limit_is_413(server):
    big = "x" * (2 << 20)
    r = post(server, "/chat/completions", {"model": "default", "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_embeddings_on_a_chat_endpoint_is_400(server):
    r = post(server, "/embeddings", {"model": "default", "input": "hello"})
    assert r.status_code == 400 and error_of(r)["code"] == "wrong_task"


def test_chat_on_an_embedding_endpoint_is_400(server):
    r = post(server, "/chat/completions", {"model": "embed", "messages": MSG})
    assert r.status_code == 400 and error_of(r)["param"] == "model"


def test_unknown_route_is_an_openai_shaped_404(server):
    r = post(server, "/no/such/route", {})
    assert r.status_code == 404 and error_of(r)["code"] == "unknown_route"


def test_an_error_response_carries_the_endpoint_header(server):
    r = post(server, "/chat/completions", {"model": "default", "messages": MSG, "n": 3})
    assert r.headers["x-modelyard-endpoint"] == "default"
