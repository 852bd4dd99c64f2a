"""One way to call a deployment and account for it: every path prices tokens and time by the same rules.

The deployments are the scripted fakes of the pipeline tests; the metering,
the pipeline, the router stage and the usage records are the real ones.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from modelyard.catalog.card import ModelCard
from modelyard.errors import ModelyardError
from modelyard.gateway import Call, Router, build_pipeline
from modelyard.routing.responses import ResponseLog
from modelyard.serving.endpoints import Endpoint, TrafficSplit
from modelyard.serving.spec import EndpointSpec
from modelyard.telemetry.cost import deployment_cost
from modelyard.telemetry.metering import BACKGROUND, MeteredStream, MeteringError, background, complete
from modelyard.telemetry.metrics import GatewayMetrics
from modelyard.wire import ChatCompletionRequest
from tests.gateway.test_pipeline import (ANSWER, COMPLETION_TOKENS, EXPECTED_COST, GOOD_KEY, PROMPT_TOKENS,
                                         FakeDeployment, FakeEndpoints, FakeKeys, FakeWriter, chunk)
from tests.gateway.test_pipeline import events as decode

pytestmark = pytest.mark.anyio

CUT_OFF = [chunk("", role="assistant"), chunk("The"), chunk(" capital"), chunk(" is")]  # no usage chunk yet


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def local_card() -> ModelCard:
    """A model that runs here: charged by the instance-hour, so a failure that held the instance costs too."""
    return ModelCard(id="local-chat", family="fake", task="chat", format="gguf", license="none", context_length=4096,
                     source={"type": "local", "path": "x.gguf"}, price={"per_instance_hour": 3600.0})


def request(**body: Any) -> ChatCompletionRequest:
    body.setdefault("model", "chat")
    return ChatCompletionRequest(messages=[{"role": "user", "content": "Capital of France?"}], **body)


async def test_a_whole_answer_is_priced_from_its_usage():
    body, metered = await complete(FakeDeployment("blue"), "chat", request())

    assert body["choices"][0]["message"]["content"] == "The capital is Paris."
    assert (metered.prompt_tokens, metered.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert metered.cost_usd == pytest.approx(EXPECTED_COST)
    assert metered.status == 200 and metered.ttft_s is None
    assert metered.step("answered").record() == {
        "deployment": "blue", "model": "fake-chat", "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS, "cost_usd": pytest.approx(EXPECTED_COST), "outcome": "answered"}


async def test_a_stream_cut_off_before_its_usage_counts_each_chunk_after_the_first_as_a_token():
    deployment = FakeDeployment("blue", script=CUT_OFF + [chunk(" Paris")])
    stream = MeteredStream(deployment, "chat", request(stream=True))
    await stream.start()
    async for piece in stream:
        if piece["choices"][0]["delta"].get("content") == " is":
            break  # the client hangs up here

    metered = await stream.aclose()

    assert deployment.closed_early
    assert (metered.prompt_tokens, metered.completion_tokens) == (0, 3)
    assert metered.cost_usd == pytest.approx(deployment_cost(deployment, 0, 3, metered.busy_s))
    assert metered.ttft_s is not None and stream.text == "The capital is"
    assert await stream.aclose() is metered  # settled once


async def test_a_failure_before_the_first_chunk_is_raised_with_what_it_used():
    failing = FakeDeployment("local", card=local_card(),
                             script=[ModelyardError("instance crashed", status=502, code="upstream_error")])

    with pytest.raises(MeteringError) as streamed:
        await MeteredStream(failing, "chat", request(stream=True)).start()
    with pytest.raises(MeteringError) as whole:
        await complete(failing, "chat", request())

    for info in (streamed, whole):
        m = info.value.metered
        assert (info.value.status, info.value.code) == (502, "upstream_error")
        assert (m.status, m.error_code, m.prompt_tokens, m.completion_tokens) == (502, "upstream_error", 0, 0)
        # the instance was held while it failed: priced by the hour like any other call
        assert m.busy_s > 0 and m.cost_usd == pytest.approx(m.busy_s * 3600.0 / 3600)


async def test_time_a_background_call_waits_for_a_slot_is_not_billed():
    class Queued(FakeDeployment):
        async def generate(self, kind: str, request: Any):
            await asyncio.sleep(0.2)  # waiting for a free instance, as Deployment._acquire does
            BACKGROUND.get().waited_s += 0.2
            async for item in super().generate(kind, request):
                yield item

    deployment = Queued("local", card=local_card())
    with background():
        _, metered = await complete(deployment, "chat", request())

    assert metered.busy_s < 0.15  # the 0.2 s in the queue is left out
    assert metered.cost_usd == pytest.approx(metered.busy_s)  # 3600 USD an hour: one USD a busy second


class _Responses:
    """The response log's store: nothing is written in these tests."""


def _router_gateway(deployment: FakeDeployment) -> tuple[Any, FakeWriter]:
    """One split endpoint ``split`` and one router endpoint ``routed`` (a rule that always picks the same
    deployment), both in front of `deployment`, through the real pipeline."""
    writer, metrics = FakeWriter(), GatewayMetrics()
    split = Endpoint(EndpointSpec(name="split", traffic={deployment.name: 100}), {deployment.name: deployment})
    routed = Endpoint(EndpointSpec(name="routed", policy="router", tiers=[deployment.name],
                                   router={"strategy": "rules", "default": deployment.name,
                                           "rules": [{"tier": deployment.name, "when": {"min_messages": 1}}]}),
                      {deployment.name: deployment})
    router = Router(ResponseLog(_Responses()), writer, metrics)
    pipeline = build_pipeline(keys=FakeKeys(), endpoints=FakeEndpoints(split, routed),
                              split=TrafficSplit(random.Random(0)), writer=writer, metrics=metrics, router=router)
    return pipeline, writer


async def _stream_and_hang_up(pipeline: Any, model: str, after: int) -> None:
    call = await pipeline(Call(kind="chat", request=request(model=model, stream=True), api_key=GOOD_KEY))
    events = call.stream.__aiter__()
    for _ in range(after):
        await anext(events)
    await events.aclose()


@pytest.mark.parametrize("after", [2, 4, 7])
async def test_a_cut_off_stream_is_priced_the_same_through_a_split_and_through_the_router(after):
    deployment = FakeDeployment("blue", script=CUT_OFF + [chunk(" Paris."), chunk(finish="stop")] + ANSWER[-1:])
    pipeline, writer = _router_gateway(deployment)

    await _stream_and_hang_up(pipeline, "split", after=after)
    await _stream_and_hang_up(pipeline, "routed", after=after)

    split, routed = writer.records
    assert (split["endpoint"], routed["endpoint"]) == ("split", "routed")
    assert split["status"] == routed["status"] == 499
    assert (split["prompt_tokens"], split["completion_tokens"]) == (routed["prompt_tokens"], routed["completion_tokens"])
    assert split["completion_tokens"] == (COMPLETION_TOKENS if after == 7 else after - 1)
    # both priced by the one rule: token prices of what was seen (hosted card; no instance time)
    expected = deployment.card.price.token_cost(split["prompt_tokens"], split["completion_tokens"])
    assert split["cost_usd"] == pytest.approx(expected) and routed["cost_usd"] == pytest.approx(expected)
    assert routed["tiers"] == [{"deployment": "blue", "model": "fake-chat", "prompt_tokens": split["prompt_tokens"],
                                "completion_tokens": split["completion_tokens"], "cost_usd": pytest.approx(expected),
                                "outcome": "answered"}]


async def test_a_failed_tier_is_recorded_with_its_error_and_priced_like_a_failed_dispatch():
    failing = FakeDeployment("local", card=local_card(),
                             script=[ModelyardError("instance crashed", status=502, code="upstream_error")])
    pipeline, writer = _router_gateway(failing)

    for model in ("split", "routed"):
        with pytest.raises(ModelyardError):
            await pipeline(Call(kind="chat", request=request(model=model), api_key=GOOD_KEY))

    split, routed = writer.records
    assert split["status"] == routed["status"] == 502
    assert split["cost_usd"] > 0 and routed["cost_usd"] > 0  # the instance was held while it failed
    [step] = routed["tiers"]
    assert step["outcome"] == "error" and step["cost_usd"] == pytest.approx(routed["cost_usd"])


async def test_routed_answers_get_ids_of_their_own_even_when_a_tier_repeats_its_ids():
    deployment = FakeDeployment("blue")  # every answer it gives has the id "chatcmpl-fake"
    pipeline, _ = _router_gateway(deployment)
    router = next(stage.router for stage in pipeline.stages if getattr(stage, "router", None) is not None)

    first = await pipeline(Call(kind="chat", request=request(model="routed"), api_key=GOOD_KEY))
    second = await pipeline(Call(kind="chat", request=request(model="routed"), api_key=GOOD_KEY))
    streamed = await pipeline(Call(kind="chat", request=request(model="routed", stream=True), api_key=GOOD_KEY))
    ids = {chunk["id"] for chunk in decode([piece async for piece in streamed.stream])[:-1]}

    assert len(ids) == 1
    answers = [first.body["id"], second.body["id"], *ids]
    assert len(set(answers)) == 3 and "chatcmpl-fake" not in answers
    assert all(a.startswith("chatcmpl-") for a in answers)
    for answer in answers:  # each one is logged under its own id: none overwrote another
        assert (await router.responses.get(answer))["tier"] == "blue"
