"""OpenAICompatBackend against a real (stub) OpenAI server on a local port.

The stub (tests/openai_stub.py) answers like OpenAI and fails on request:
headers such as ``x-stub-status`` script its failures, and ``GET /_last``
shows what it received, so these tests check what goes over the wire.
"""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from modelyard.backends.base import Backend
from modelyard.backends.openai_compat import OpenAICompatBackend
from modelyard.wire import SSEDecoder
from modelyard.catalog.card import ModelCard
from modelyard.errors import ModelyardError
from modelyard.wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, gather

from tests.cards import hosted_model_card
from tests.openai_stub import EMBEDDING, StubServer

pytestmark = pytest.mark.anyio

TOKENS = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def last(stub: StubServer) -> dict:
    return httpx.get(f"{stub.root}/_last").json()


def chat(stream: bool = False, **extra) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="my-endpoint", messages=[{"role": "user", "content": "hi"}], stream=stream, **extra)


def script(**headers: str) -> dict[str, str]:
    """Stub failure headers, under a fresh key so each test counts its own tries."""
    return {"x-stub-key": uuid.uuid4().hex, **{f"x-stub-{k.replace('_', '-')}": v for k, v in headers.items()}}


async def collect(backend: OpenAICompatBackend, kind: str, request) -> list[dict]:
    try:
        return [chunk async for chunk in backend.generate(kind, request)]
    finally:
        await backend.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- happy paths ---------------------------------------------------------------------------


async def test_backend_satisfies_the_protocol(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1")
    assert isinstance(backend, Backend)
    assert backend.max_concurrency == 64
    await backend.start()
    await backend.close()


async def test_streaming_yields_every_chunk_and_usage_even_when_the_client_did_not_ask(stub):
    chunks = await collect(OpenAICompatBackend(f"{stub.root}/v1"), "chat", chat(stream=True))

    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == TOKENS
    assert all(c["choices"][0]["delta"]["content"] == "tok " for c in content)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    sent = last(stub)["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_streamed_chunks_gather_into_the_whole_answer(stub):
    chunks = await collect(OpenAICompatBackend(f"{stub.root}/v1"), "chat", chat(stream=True))
    body = gather("chat", chunks)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "tok " * TOKENS}
    assert body["usage"]["completion_tokens"] == 20


@pytest.mark.parametrize("stream", [True, False])
async def test_requests_reuse_one_kept_alive_connection(stub, stream):
    backend = OpenAICompatBackend(f"{stub.root}/v1")
    ports = set()
    try:
        for _ in range(3):
            [c async for c in backend.generate("chat", chat(stream=stream))]
            ports.add(last(stub)["client_port"])
    finally:
        await backend.close()
    assert len(ports) == 1


async def test_non_streaming_yields_the_upstream_body_once(stub):
    chunks = await collect(OpenAICompatBackend(f"{stub.root}/v1"), "chat", chat())

    assert len(chunks) == 1
    body = gather("chat", chunks)
    assert body is chunks[0]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "tok " * TOKENS
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    assert "stream_options" not in last(stub)["body"]


async def test_non_streaming_drops_stream_options_openai_would_refuse(stub):
    await collect(OpenAICompatBackend(f"{stub.root}/v1"), "chat", chat(stream_options={"include_usage": True}))
    assert "stream_options" not in last(stub)["body"]


async def test_completions_stream_and_not(stub):
    request = CompletionRequest(model="my-endpoint", prompt="once upon", stream=True)
    chunks = await collect(OpenAICompatBackend(f"{stub.root}/v1"), "completion", request)
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["text"]) == TOKENS
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    assert last(stub)["path"] == "/v1/completions"

    request = CompletionRequest(model="my-endpoint", prompt="once upon")
    (body,) = await collect(OpenAICompatBackend(f"{stub.root}/v1"), "completion", request)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "tok " * TOKENS


async def test_upstream_model_name_replaces_the_endpoint_name(stub):
    await collect(OpenAICompatBackend(f"{stub.root}/v1", model="gpt-4o-mini"), "chat", chat())
    assert last(stub)["body"]["model"] == "gpt-4o-mini"


async def test_request_model_is_sent_unchanged_without_an_upstream_model(stub):
    await collect(OpenAICompatBackend(f"{stub.root}/v1"), "chat", chat())
    received = last(stub)
    assert received["body"]["model"] == "my-endpoint"
    assert received["body"]["messages"] == [{"role": "user", "content": "hi"}]
    assert "temperature" not in received["body"]  # fields the client did not set are not sent
    assert "logprobs" not in received["body"]


async def test_bearer_key_and_extra_headers_reach_the_upstream(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", api_key="sk-test", headers={"x-team": "blue"})
    await collect(backend, "chat", chat())
    headers = last(stub)["headers"]
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["x-team"] == "blue"


async def test_azure_uses_deployment_url_api_version_and_api_key_header(stub):
    backend = OpenAICompatBackend(
        f"{stub.root}/openai/deployments/gpt4o-prod", provider="azure", api_key="az-key", api_version="2024-10-21"
    )
    chunks = await collect(backend, "chat", chat(stream=True))
    assert chunks[-1]["usage"]["total_tokens"] == 30

    received = last(stub)
    assert received["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert received["query"] == "api-version=2024-10-21"
    assert received["headers"]["api-key"] == "az-key"
    assert "authorization" not in received["headers"]
    assert "model" not in received["body"]


async def test_azure_builds_the_deployment_url_from_a_resource_url_and_model(stub):
    backend = OpenAICompatBackend(stub.root, provider="azure", model="gpt4o-prod", api_key="k", api_version="2024-10-21")
    await collect(backend, "chat", chat())
    assert last(stub)["path"] == "/openai/deployments/gpt4o-prod/chat/completions"


async def test_embeddings_return_the_upstream_list(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", model="text-embedding-3-small")
    try:
        body = await backend.embed(EmbeddingRequest(model="my-embedder", input=["a", "b"]))
    finally:
        await backend.close()
    assert body["object"] == "list"
    assert [d["embedding"] for d in body["data"]] == [EMBEDDING, EMBEDDING]
    assert last(stub)["path"] == "/v1/embeddings"
    assert last(stub)["body"]["model"] == "text-embedding-3-small"


async def test_probe_reports_readiness_and_never_raises(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1")
    assert await backend.probe() is True
    assert await backend.probe("/healthz") is True
    assert await backend.probe("/no-such-route") is False
    await backend.close()
    down = OpenAICompatBackend(f"http://127.0.0.1:{free_port()}/v1")
    assert await down.probe() is False
    await down.close()


# -- failures and retries ------------------------------------------------------------------


async def test_429_is_retried_until_the_upstream_accepts(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", backoff=0.01, headers=script(status="429", fail_times="2"))
    seen = last(stub)["seen"]
    (body,) = await collect(backend, "chat", chat())
    assert body["object"] == "chat.completion"
    assert last(stub)["seen"] == seen + 3


async def test_retry_after_from_the_upstream_is_honoured(stub):
    # A backoff of 30 s would time the test out; the upstream's 0.01 s is used instead.
    headers = script(status="429", fail_times="1", retry_after="0.01")
    backend = OpenAICompatBackend(f"{stub.root}/v1", backoff=30, headers=headers)
    chunks = await collect(backend, "chat", chat(stream=True))
    assert chunks[-1]["usage"]["total_tokens"] == 30


async def test_429_stays_429_when_retries_run_out(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", backoff=0.01, max_retries=1, headers=script(status="429"))
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat())
    assert info.value.status == 429
    assert info.value.code == "rate_limit_exceeded"


async def test_5xx_that_outlasts_the_retries_is_a_502(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", backoff=0.01, max_retries=2, headers=script(status="503"))
    seen = last(stub)["seen"]
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat(stream=True))
    assert info.value.status == 502
    assert info.value.code == "upstream_error"
    assert "503" in info.value.message
    assert last(stub)["seen"] == seen + 3


async def test_upstream_400_keeps_its_status_and_param_and_is_not_retried(stub):
    # Were it retried, the second try would succeed.
    headers = script(status="400", fail_times="1", error_param="messages")
    backend = OpenAICompatBackend(f"{stub.root}/v1", backoff=0.01, headers=headers)
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat())
    assert info.value.status == 400
    assert info.value.param == "messages"
    assert info.value.type == "invalid_request_error"
    assert info.value.message == "stub says 400"


async def test_upstream_401_is_our_misconfiguration_not_the_clients(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", api_key="sk-wrong", headers=script(status="401"))
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat())
    assert info.value.status == 502
    assert info.value.code == "upstream_auth_failed"


async def test_connection_refused_is_a_502(stub):
    backend = OpenAICompatBackend(f"http://127.0.0.1:{free_port()}/v1", backoff=0.01, max_retries=1)
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat(stream=True))
    assert info.value.status == 502
    assert info.value.code == "upstream_unavailable"


async def test_a_slow_upstream_is_a_504(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", timeout=0.2, backoff=0.01, max_retries=1, headers=script(delay_ms="1000"))
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat())
    assert info.value.status == 504
    assert info.value.code == "upstream_timeout"


async def test_an_error_event_mid_stream_raises_after_the_chunks_before_it(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", headers=script(stream_error="1"))
    got = []
    with pytest.raises(ModelyardError) as info:
        async for chunk in backend.generate("chat", chat(stream=True)):
            got.append(chunk)
    await backend.close()
    assert len(got) == 1
    assert info.value.code == "stub_stream_error"
    assert info.value.status == 502


async def test_a_half_streamed_answer_is_never_replayed(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", backoff=0.01, headers=script(stream_abort="1"))
    seen = last(stub)["seen"]
    got = []
    with pytest.raises(ModelyardError) as info:
        async for chunk in backend.generate("chat", chat(stream=True)):
            got.append(chunk)
    await backend.close()
    assert len(got) == 1
    assert info.value.status == 502
    assert last(stub)["seen"] == seen + 1


async def test_an_upstream_that_refuses_stream_options_still_streams(stub):
    backend = OpenAICompatBackend(f"{stub.root}/v1", headers=script(reject_stream_options="1"))
    try:
        for _ in range(2):
            chunks = [c async for c in backend.generate("chat", chat(stream=True))]
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            assert "stream_options" not in last(stub)["body"]
    finally:
        await backend.close()


# -- built from a catalog card -------------------------------------------------------------


def hosted_card(stub: StubServer, **source) -> ModelCard:
    return hosted_model_card("gpt-4o-mini", f"{stub.root}/v1", context_length=128000, source=source)


async def test_for_card_reads_the_key_from_the_named_env_var(stub, monkeypatch):
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-from-env")
    backend = OpenAICompatBackend.for_card(hosted_card(stub, api_key_env="STUB_OPENAI_KEY"), timeout=5.0)
    await collect(backend, "chat", chat())
    received = last(stub)
    assert received["headers"]["authorization"] == "Bearer sk-from-env"
    assert received["body"]["model"] == "gpt-4o-mini"  # the card id, as no source.model is given


async def test_for_card_uses_the_source_model(stub):
    backend = OpenAICompatBackend.for_card(hosted_card(stub, model="gpt-4o-mini-2024-07-18"))
    await collect(backend, "chat", chat())
    assert last(stub)["body"]["model"] == "gpt-4o-mini-2024-07-18"


async def test_a_missing_key_is_a_clear_error_naming_the_env_var(stub, monkeypatch):
    monkeypatch.delenv("STUB_MISSING_KEY", raising=False)
    backend = OpenAICompatBackend.for_card(hosted_card(stub, api_key_env="STUB_MISSING_KEY"))
    with pytest.raises(ModelyardError) as info:
        await collect(backend, "chat", chat())
    assert info.value.status == 500
    assert "STUB_MISSING_KEY" in info.value.message


async def test_a_key_set_after_the_backend_was_built_is_picked_up(stub, monkeypatch):
    monkeypatch.delenv("STUB_LATE_KEY", raising=False)
    backend = OpenAICompatBackend.for_card(hosted_card(stub, api_key_env="STUB_LATE_KEY"))
    monkeypatch.setenv("STUB_LATE_KEY", "sk-late")
    await collect(backend, "chat", chat())
    assert last(stub)["headers"]["authorization"] == "Bearer sk-late"


# -- the SSE reader ------------------------------------------------------------------------


def test_sse_decoder_handles_events_split_across_reads_and_crlf():
    decoder = SSEDecoder()
    stream = b': keep-alive\r\n\r\ndata: {"a":1}\r\n\r\nevent: x\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\n'
    events = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i : i + 1])
    assert events == [b'{"a":1}', b'{"b":\n2}', b"[DONE]"]


def test_sse_decoder_flushes_an_unterminated_last_event():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}') == []
    assert decoder.flush() == [b'{"a":1}']
