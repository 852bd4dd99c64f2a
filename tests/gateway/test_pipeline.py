"""The gateway pipeline (record ▶ auth ▶ policy ▶ dispatch) with fakes at its edges.

The stages, `TrafficSplit` and `GatewayMetrics` are the real ones; the keys,
the endpoints, the deployment behind them and the usage writer are small
fakes, so each test can script what the deployment says and read the usage
line the gateway would write.
"""

from __future__ import annotations

import asyncio

import random
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from modelyard.catalog.card import ModelCard
from tests.cards import hosted_model_card
from modelyard.errors import ModelyardError, not_found
from modelyard.gateway import Call, build_pipeline
from modelyard.serving.endpoints import Endpoint, TrafficSplit
from modelyard.serving.spec import EndpointSpec
from modelyard.telemetry.metrics import GatewayMetrics
from modelyard.wire import ChatCompletionRequest, EmbeddingRequest

pytestmark = pytest.mark.anyio

GOOD_KEY = "sk-good"
PROMPT_TOKENS, COMPLETION_TOKENS = 12, 3
EXPECTED_COST = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 2.0) / 1e6


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- fakes -------------------------------------------------------------------------


def hosted_card(task: str = "chat") -> ModelCard:
    return hosted_model_card(f"fake-{task}", task=task, price=(1.0, 2.0), context_length=4096)


def chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-chat",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


USAGE_CHUNK = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-chat",
               "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                                        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}}

ANSWER = [chunk("", role="assistant"), chunk("The"), chunk(" capital"), chunk(" is Paris."), chunk(finish="stop"),
          USAGE_CHUNK]


class FakeDeployment:
    """Yields a scripted list of chunks; an exception in the script is raised at that point."""

    def __init__(self, name: str, card: ModelCard | None = None, script: list[Any] | None = None,
                 pause: bool = True) -> None:
        self.name = name
        self.pause = pause  # suspend between chunks, like an upstream generating token by token
        self.card = card or hosted_card()
        self.script = list(ANSWER if script is None else script)
        self.requests: list[tuple[str, Any]] = []
        self.closed_early = False

    async def generate(self, kind: str, request: Any):
        self.requests.append((kind, request))
        try:
            for item in self.script:
                if self.pause:
                    await asyncio.sleep(0)
                if isinstance(item, BaseException):
                    raise item
                yield item
        except (GeneratorExit, asyncio.CancelledError):
            self.closed_early = True  # the consumer closed or cancelled the stream before the end
            raise

    async def embed(self, request: Any) -> dict[str, Any]:
        return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": self.card.id, "usage": {"prompt_tokens": 4, "total_tokens": 4}}


class FakeEndpoints:
    def __init__(self, *endpoints: Endpoint) -> None:
        self.by_name = {e.name: e for e in endpoints}

    def get(self, name: str) -> Endpoint:
        try:
            return self.by_name[name]
        except KeyError:
            raise not_found(f"The model (endpoint) '{name}' does not exist.", param="model",
                            code="model_not_found") from None


@dataclass
class FakeKey:
    id: int
    is_admin: bool = False
    endpoint: str | None = None

    def allows(self, endpoint_name: str) -> bool:
        return self.is_admin or self.endpoint is None or self.endpoint == endpoint_name


@dataclass
class FakeKeys:
    keys: dict[str, FakeKey] = field(default_factory=lambda: {GOOD_KEY: FakeKey(id=7), "sk-other": FakeKey(8, endpoint="other")})

    def verify(self, plain: str) -> FakeKey | None:
        return self.keys.get(plain)


class FakeWriter:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def submit(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def endpoint(name: str, traffic: dict[str, int], *deployments: FakeDeployment) -> Endpoint:
    return Endpoint(EndpointSpec(name=name, traffic=traffic), {d.name: d for d in deployments})


class Gateway:
    """The real pipeline over one endpoint ``chat`` with one fake deployment ``blue``."""

    def __init__(self, deployment: FakeDeployment | None = None) -> None:
        self.deployment = deployment or FakeDeployment("blue")
        self.writer = FakeWriter()
        self.metrics = GatewayMetrics()
        self.pipeline = build_pipeline(keys=FakeKeys(), endpoints=FakeEndpoints(endpoint("chat", {"blue": 100}, self.deployment)),
                                       split=TrafficSplit(random.Random(0)), writer=self.writer, metrics=self.metrics)

    async def chat(self, api_key: str | None = GOOD_KEY, **body: Any) -> Call:
        body.setdefault("model", "chat")
        body.setdefault("messages", [{"role": "user", "content": "What is the capital of France?"}])
        return await self.pipeline(Call(kind="chat", request=ChatCompletionRequest(**body), api_key=api_key))

    async def refusal(self, call: Call) -> ModelyardError:
        with pytest.raises(ModelyardError) as info:
            await self.pipeline(call)
        return info.value


def events(raw: list[bytes]) -> list[Any]:
    """Decode SSE frames: each is ``data: <json>\\n\\n`` or ``data: [DONE]\\n\\n``; one write may hold several."""
    out = []
    for write in raw:
        assert write.endswith(b"\n\n")
        for frame in write[:-2].split(b"\n\n"):
            assert frame.startswith(b"data: ")
            data = frame[len(b"data: "):]
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


async def drain(call: Call) -> list[bytes]:
    return [event async for event in call.stream]


# --- non-streaming ---------------------------------------------------------------


async def test_answered_chat_call_gets_body_tokens_cost_and_exactly_one_usage_record():
    gw = Gateway()
    call = await gw.chat()
    assert call.stream is None
    assert call.body["object"] == "chat.completion"
    assert call.body["choices"][0]["message"] == {"role": "assistant", "content": "The capital is Paris."}
    assert (call.prompt_tokens, call.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert call.cost_usd == pytest.approx(EXPECTED_COST)
    [record] = gw.writer.records
    assert record["status"] == 200
    assert record["error_code"] is None
    assert (record["endpoint"], record["deployment"], record["model"]) == ("chat", "blue", "fake-chat")
    assert record["key_id"] == 7
    assert record["kind"] == "chat" and record["stream"] is False
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record["cost_usd"] == pytest.approx(EXPECTED_COST)
    assert record["route"] == "split:blue"
    assert record["latency_ms"] >= 0


async def test_call_without_api_key_is_refused_401_and_still_recorded():
    gw = Gateway()
    err = await gw.refusal(Call(kind="chat", request=ChatCompletionRequest(model="chat", messages=[{"role": "user", "content": "hi"}]),
                                api_key=None))
    assert (err.status, err.code) == (401, "missing_api_key")
    [record] = gw.writer.records
    assert (record["status"], record["error_code"], record["key_id"]) == (401, "missing_api_key", None)
    assert gw.deployment.requests == []


async def test_unknown_api_key_is_401_and_a_key_for_another_endpoint_is_403():
    gw = Gateway()
    req = ChatCompletionRequest(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert (await gw.refusal(Call(kind="chat", request=req, api_key="sk-wrong"))).status == 401
    err = await gw.refusal(Call(kind="chat", request=req, api_key="sk-other"))
    assert (err.status, err.param, err.code) == (403, "model", "endpoint_not_allowed")
    assert [r["status"] for r in gw.writer.records] == [401, 403]
    assert gw.deployment.requests == []


async def test_unknown_endpoint_is_404_naming_the_model_parameter():
    gw = Gateway()
    err = await gw.refusal(Call(kind="chat", request=ChatCompletionRequest(model="nope", messages=[{"role": "user", "content": "hi"}]),
                                api_key=GOOD_KEY))
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
    assert err.body()["error"]["type"] == "not_found_error"
    [record] = gw.writer.records
    assert (record["status"], record["endpoint"], record["deployment"]) == (404, "nope", None)


async def test_embedding_request_to_a_chat_deployment_is_400_wrong_task():
    gw = Gateway()
    err = await gw.refusal(Call(kind="embedding", request=EmbeddingRequest(model="chat", input="hello"), api_key=GOOD_KEY))
    assert (err.status, err.code, err.param) == (400, "wrong_task", "model")
    assert "embeddings" in err.message
    assert gw.writer.records[0]["status"] == 400
    assert gw.deployment.requests == []


async def test_embedding_request_to_an_embedding_deployment_is_answered_and_costed():
    gw = Gateway(FakeDeployment("blue", hosted_card("embedding")))
    call = await gw.pipeline(Call(kind="embedding", request=EmbeddingRequest(model="chat", input="hello"), api_key=GOOD_KEY))
    assert call.body["object"] == "list"
    assert call.prompt_tokens == 4
    assert call.cost_usd == pytest.approx(4 * 1.0 / 1e6)
    assert gw.writer.records[0]["status"] == 200


# --- streaming ----------------------------------------------------------------------


async def test_stream_is_sse_ending_with_done_and_hides_the_usage_chunk_by_default():
    gw = Gateway()
    call = await gw.chat(stream=True)
    decoded = events(await drain(call))
    assert decoded[-1] == "[DONE]"
    chunks = decoded[:-1]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "The capital is Paris."
    assert all(c["choices"] for c in chunks), "the usage chunk (empty choices) leaked to a client that did not ask"
    # The usage was still counted, so the line is billed correctly.
    assert (call.prompt_tokens, call.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


async def test_stream_shows_the_usage_chunk_when_stream_options_include_usage():
    gw = Gateway()
    call = await gw.chat(stream=True, stream_options={"include_usage": True})
    decoded = events(await drain(call))
    assert decoded[-1] == "[DONE]"
    assert decoded[-2]["choices"] == []
    assert decoded[-2]["usage"]["completion_tokens"] == COMPLETION_TOKENS


async def test_stream_is_recorded_once_after_it_is_consumed_with_time_to_first_token():
    gw = Gateway()
    call = await gw.chat(stream=True)
    assert gw.writer.records == [], "a stream must not be recorded before it has been sent"
    await drain(call)
    [record] = gw.writer.records
    assert record["status"] == 200 and record["stream"] is True
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record["cost_usd"] == pytest.approx(EXPECTED_COST)
    assert record["ttft_ms"] is not None and 0 <= record["ttft_ms"] <= record["latency_ms"]


async def test_stream_cut_off_by_client_is_recorded_as_499_and_the_upstream_is_closed():
    gw = Gateway()
    call = await gw.chat(stream=True)
    first = await anext(call.stream)
    assert events([first])[0]["choices"][0]["delta"]["role"] == "assistant"
    await call.stream.aclose()
    assert gw.deployment.closed_early, "the deployment's generator was left running after the client went away"
    [record] = gw.writer.records
    assert (record["status"], record["error_code"]) == (499, "client_closed")
    # Nothing past the role chunk was sent; the line is written with the accounting done.
    assert record["completion_tokens"] == 0
    assert record["latency_ms"] >= 0


async def test_a_client_that_stops_reading_stops_the_upstream_instead_of_being_buffered_for():
    from modelyard.gateway.dispatch import QUEUED_EVENTS

    produced = 0

    class Endless(FakeDeployment):
        async def generate(self, kind, request):
            nonlocal produced
            yield chunk("", role="assistant")
            while True:
                produced += 1
                yield chunk("x")
                await asyncio.sleep(0)

    gw = Gateway(Endless("blue"))
    call = await gw.chat(stream=True)
    await anext(call.stream)  # the client reads one write, then stops reading
    for _ in range(2000):
        await asyncio.sleep(0)
    assert produced <= QUEUED_EVENTS + 2, f"the gateway read {produced} events ahead of a client that stopped"
    await call.stream.aclose()
    [record] = gw.writer.records
    assert record["status"] == 499


async def test_stream_cut_off_after_some_text_records_the_tokens_sent_so_far():
    gw = Gateway()
    call = await gw.chat(stream=True)
    sent = [await anext(call.stream) for _ in range(3)]  # role, "The", " capital"
    assert [e["choices"][0]["delta"].get("content") for e in events(sent)] == ["", "The", " capital"]
    await call.stream.aclose()
    [record] = gw.writer.records
    assert record["status"] == 499
    assert record["completion_tokens"] == 2
    assert record["cost_usd"] == pytest.approx(2 * 2.0 / 1e6)


async def test_error_mid_stream_becomes_an_sse_error_event_then_done_and_is_recorded_with_its_status():
    boom = ModelyardError("upstream went away", status=502, code="upstream_unavailable")
    gw = Gateway(FakeDeployment("blue", script=[chunk("", role="assistant"), chunk("The"), boom]))
    call = await gw.chat(stream=True)
    decoded = events(await drain(call))
    assert decoded[-1] == "[DONE]"
    assert decoded[-2] == {"error": {"message": "upstream went away", "type": "server_error", "param": None,
                                     "code": "upstream_unavailable"}}
    [record] = gw.writer.records
    assert (record["status"], record["error_code"]) == (502, "upstream_unavailable")


async def test_error_before_the_first_chunk_is_a_plain_error_not_a_stream():
    boom = ModelyardError("model is not loaded", status=503, code="not_ready")
    gw = Gateway(FakeDeployment("blue", script=[boom]))
    err = await gw.refusal(Call(kind="chat", request=ChatCompletionRequest(model="chat", stream=True,
                                                                          messages=[{"role": "user", "content": "hi"}]),
                                api_key=GOOD_KEY))
    assert (err.status, err.code) == (503, "not_ready")
    assert gw.writer.records[0]["status"] == 503


# --- traffic split -------------------------------------------------------------------


def test_traffic_split_90_10_lands_near_its_weights():
    a, b = FakeDeployment("a"), FakeDeployment("b")
    ep = endpoint("chat", {"a": 90, "b": 10}, a, b)
    split = TrafficSplit(random.Random(1234))
    picks = [split.choose(ep).name for _ in range(2000)]
    share_a = picks.count("a") / len(picks)
    assert 0.87 <= share_a <= 0.93
    assert picks.count("a") + picks.count("b") == 2000


def test_traffic_split_never_chooses_a_zero_weight_deployment():
    blue, green, red = FakeDeployment("blue"), FakeDeployment("green"), FakeDeployment("red")
    ep = endpoint("chat", {"blue": 50, "green": 50, "red": 0}, blue, green, red)
    split = TrafficSplit(random.Random(7))
    picks = {split.choose(ep).name for _ in range(1000)}
    assert picks == {"blue", "green"}


def test_traffic_split_with_no_weights_uses_a_lone_deployment_and_refuses_several():
    only = FakeDeployment("only")
    assert TrafficSplit().choose(endpoint("chat", {}, only)) is only
    with pytest.raises(ModelyardError) as info:
        TrafficSplit().choose(endpoint("chat", {"a": 0}, FakeDeployment("a"), FakeDeployment("b")))
    assert (info.value.status, info.value.code) == (503, "no_traffic")


# --- metrics ---------------------------------------------------------------------------


async def test_metrics_count_requests_by_endpoint_deployment_and_status():
    gw = Gateway()
    await gw.chat()
    await gw.refusal(Call(kind="chat", request=ChatCompletionRequest(model="chat", messages=[{"role": "user", "content": "hi"}]),
                          api_key=None))
    text = gw.metrics.render().decode()
    assert 'modelyard_requests_total{deployment="blue",endpoint="chat",status="200"} 1.0' in text
    # Refused before the endpoint was looked up: counted, but under no endpoint.
    assert 'modelyard_requests_total{deployment="",endpoint="",status="401"} 1.0' in text
    assert f'modelyard_prompt_tokens_total{{deployment="blue",endpoint="chat"}} {float(PROMPT_TOKENS)}' in text
    assert 'modelyard_requests_in_flight 0.0' in text


async def test_made_up_model_names_never_become_metric_labels():
    gw = Gateway()
    for name in ("nope-1", "nope-2"):
        await gw.refusal(Call(kind="chat", request=ChatCompletionRequest(model=name, messages=[{"role": "user", "content": "hi"}]),
                              api_key=GOOD_KEY))
    text = gw.metrics.render().decode()
    assert "nope" not in text
    assert 'modelyard_requests_total{deployment="",endpoint="",status="404"} 2.0' in text
    # The usage line still says what was asked for.
    assert [r["endpoint"] for r in gw.writer.records] == ["nope-1", "nope-2"]


async def test_events_that_arrive_together_leave_in_one_write():
    gw = Gateway(FakeDeployment("blue", pause=False))  # a fast upstream: every chunk already read
    call = await gw.chat(stream=True, stream_options={"include_usage": True})
    writes = await drain(call)
    assert len(writes) <= 2  # the first chunk (read before the stream started) and the rest at once
    assert len(events(writes)) == len(ANSWER) + 1  # every chunk, the usage chunk and [DONE]
