"""A deployment's queue: first come, first served, bounded in length and in waiting time."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.errors import ModelyardError
from modelyard.serving.deployment import Deployment
from modelyard.serving.spec import DeploymentSpec
from tests.cards import hosted_model_card

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def deployment(concurrency: int = 1, queue: int = 8, wait_ms: int = 5000) -> Deployment:
    spec = DeploymentSpec.model_validate({
        "name": "blue", "endpoint_name": "chat", "model": "hosted-chat",
        "request_settings": {"max_concurrent_requests_per_instance": concurrency,
                             "max_queue_size_per_instance": queue, "max_queue_wait_ms": wait_ms}})
    d = Deployment(spec, hosted_model_card("hosted-chat"), runtime=None)
    d.state = "ready"
    return d


async def test_waiting_requests_are_served_in_arrival_order_not_overtaken_by_newcomers():
    d = deployment(concurrency=1)
    held = await d._acquire()
    served: list[str] = []

    async def request(name: str) -> None:
        slot = await d._acquire()
        served.append(name)
        await asyncio.sleep(0.01)
        await d._release(slot)

    waiters = [asyncio.create_task(request(f"waiter{i}")) for i in range(3)]
    await asyncio.sleep(0.01)  # all three are queued
    assert d.waiting == 3
    await d._release(held)
    late = asyncio.create_task(request("newcomer"))  # arrives just after the slot frees up
    await asyncio.gather(*waiters, late)
    assert served == ["waiter0", "waiter1", "waiter2", "newcomer"]
    assert d.waiting == 0 and not d._queue


async def test_a_waiter_that_gives_up_lets_the_next_in_line_go_on():
    d = deployment(concurrency=1)
    held = await d._acquire()
    first = asyncio.create_task(d._acquire())
    second = asyncio.create_task(d._acquire())
    await asyncio.sleep(0.01)
    first.cancel()  # its client hung up while it waited
    await asyncio.gather(first, return_exceptions=True)
    await d._release(held)
    slot = await asyncio.wait_for(second, 1)
    assert slot is not None and not d._queue


async def test_a_full_queue_and_a_long_wait_are_429_with_retry_after():
    d = deployment(concurrency=1, queue=1, wait_ms=200)
    held = await d._acquire()
    waiting = asyncio.create_task(d._acquire())
    await asyncio.sleep(0.01)
    with pytest.raises(ModelyardError) as full:
        await d._acquire()
    assert full.value.status == 429 and full.value.code == "deployment_at_capacity"
    assert full.value.headers["retry-after"]
    with pytest.raises(ModelyardError) as waited:
        await waiting
    assert waited.value.status == 429 and "200 ms" in waited.value.message
    await d._release(held)
    assert not d._queue
