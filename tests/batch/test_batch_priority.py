"""Background (batch) calls on a deployment: they use what live traffic leaves, never more than their
share, and a live request waiting for a slot gets the next one.

The deployment is the real `Deployment`, hosted on the OpenAI stub (a slow answer is a line with
``user: "stub:delay_ms=N"``), so slots, queues and timing are the production code's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.openai_stub import StubServer
from modelyard.catalog.card import ModelCard
from modelyard.gateway.dispatch import dispatch
from modelyard.gateway.pipeline import Call, Pipeline
from modelyard.runtime.local import LocalRuntime
from modelyard.serving import deployment as deployment_module
from modelyard.serving.deployment import Deployment
from modelyard.telemetry.metering import BACKGROUND, background
from modelyard.serving.spec import DeploymentSpec
from modelyard.wire import ChatCompletionRequest


def hosted(stub: StubServer, concurrency: int, tmp_path: Path) -> Deployment:
    card = ModelCard(id="stub-chat", family="stub", task="chat", format="hosted", license="none",
                     context_length=4096, source={"type": "hosted", "provider": "openai-compatible",
                                                  "base_url": stub.root + "/v1"})
    spec = DeploymentSpec(name="blue", endpoint_name="chat", model="stub-chat",
                          request_settings={"max_concurrent_requests_per_instance": concurrency, "max_retries": 0})
    return Deployment(spec, card, LocalRuntime(tmp_path / "logs"))


def ask(delay_ms: int) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                 user=f"stub:delay_ms={delay_ms}")


async def call(dep: Deployment, delay_ms: int, log: list, name: str) -> None:
    async for _ in dep.generate("chat", ask(delay_ms)):
        pass
    log.append((name, time.monotonic()))


async def in_background(share: float, coro) -> None:
    with background(share):
        await coro


def run(coro):
    return asyncio.run(coro)


def test_background_calls_never_hold_more_than_their_share(stub, tmp_path):
    async def main() -> int:
        dep = hosted(stub, 4, tmp_path)
        await dep.start()
        peak = 0
        log: list = []
        tasks = [asyncio.create_task(in_background(0.5, call(dep, 100, log, f"b{i}"))) for i in range(8)]
        while not all(t.done() for t in tasks):
            peak = max(peak, dep.bg_in_flight)
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        assert len(log) == 8 and dep.bg_in_flight == 0 and dep.in_flight == 0
        await dep.stop()
        return peak

    assert run(main()) == 2  # half of 4 slots


def test_a_waiting_live_request_gets_the_next_free_slot(stub, tmp_path):
    async def main() -> list[str]:
        dep = hosted(stub, 1, tmp_path)
        await dep.start()
        log: list = []
        first = asyncio.create_task(in_background(1.0, call(dep, 300, log, "b0")))
        await asyncio.sleep(0.05)  # b0 holds the only slot
        queued = [asyncio.create_task(in_background(1.0, call(dep, 50, log, f"b{i}"))) for i in (1, 2)]
        await asyncio.sleep(0.05)
        live = asyncio.create_task(call(dep, 50, log, "live"))
        await asyncio.gather(first, live, *queued)
        await dep.stop()
        return [name for name, _ in log]

    order = run(main())
    assert order[:2] == ["b0", "live"]  # the live request jumped the two background calls queued before it


def test_recent_live_traffic_keeps_its_room(stub, tmp_path, monkeypatch):
    monkeypatch.setattr(deployment_module, "LIVE_RESERVE_S", 0.6)

    async def main() -> tuple[int, int, float]:
        dep = hosted(stub, 2, tmp_path)
        await dep.start()
        log: list = []
        await call(dep, 10, log, "live")  # a live request just now: one slot stays free for live traffic
        peaks = []
        for _ in range(2):
            tasks = [asyncio.create_task(in_background(1.0, call(dep, 150, log, "b"))) for _ in range(4)]
            peak = 0
            while not all(t.done() for t in tasks):
                peak = max(peak, dep.bg_in_flight)
                await asyncio.sleep(0.005)
            peaks.append(peak)
            await asyncio.sleep(0.7)  # the live reserve lapses
        # While live traffic goes on, a live request finds a free slot at once beside background work.
        await call(dep, 10, log, "live")
        tasks = [asyncio.create_task(in_background(1.0, call(dep, 400, log, "b"))) for _ in range(4)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await call(dep, 10, log, "live")
        live_s = time.monotonic() - t0
        await asyncio.gather(*tasks)
        await dep.stop()
        return peaks[0], peaks[1], live_s

    with_live, without, live_s = run(main())
    assert with_live == 1 and without == 2
    assert live_s < 0.3  # not behind a 400 ms background call


def test_background_work_yields_while_live_traffic_fills_the_deployment(stub, tmp_path):
    async def main() -> list[str]:
        dep = hosted(stub, 2, tmp_path)
        await dep.start()
        log: list = []
        # Two live requests at once: live traffic has needed the whole deployment.
        lives = [asyncio.create_task(call(dep, 300, log, f"live{i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(in_background(1.0, call(dep, 10, log, "b0")))
        await asyncio.gather(*lives, waiting)
        # One live request in flight, a slot free: background work still waits for it.
        live = asyncio.create_task(call(dep, 300, log, "live2"))
        await asyncio.sleep(0.05)
        assert dep.in_flight == 1
        await asyncio.gather(live, asyncio.create_task(in_background(1.0, call(dep, 10, log, "b1"))))
        await dep.stop()
        return [name for name, _ in log]

    order = run(main())
    assert set(order[:2]) == {"live0", "live1"} and order[2:] == ["b0", "live2", "b1"]


def test_waiting_for_a_background_slot_is_measured(stub, tmp_path):
    async def main() -> float:
        dep = hosted(stub, 1, tmp_path)
        await dep.start()
        log: list = []
        holder = asyncio.create_task(in_background(1.0, call(dep, 200, log, "b0")))
        await asyncio.sleep(0.05)
        with background(1.0) as work:
            await call(dep, 10, log, "b1")
        await holder
        await dep.stop()
        return work.waited_s

    assert 0.1 < run(main()) < 1.0


def test_the_wait_for_a_slot_is_not_billed(tmp_path):
    card = ModelCard(id="local", family="x", task="chat", format="gguf", license="none", context_length=512,
                     source={"type": "local", "path": "/nowhere"}, price={"per_instance_hour": 3600.0})

    class FakeDeployment:  # a local model at 1 USD per busy second
        spec = None
        name = "local"

        def __init__(self) -> None:
            self.card = card

        async def generate(self, kind: str, request):
            await asyncio.sleep(0.3)  # waiting for a slot, as Deployment._acquire does for background work
            BACKGROUND.get().waited_s += 0.3
            yield {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "local",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    async def main() -> Call:
        call = Call("chat", ask(0), None)
        call.deployment = FakeDeployment()
        with background(1.0):
            await Pipeline([dispatch])(call)
        return call

    call = run(main())
    assert call.body["choices"][0]["message"]["content"] == "hi"
    assert call.upstream_s < 0.2  # the 0.3 s in the queue is not work …
    assert call.cost_usd == pytest.approx(call.upstream_s)  # … so it is not billed
