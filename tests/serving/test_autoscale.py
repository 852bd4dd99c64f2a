"""Autoscaling decisions: the real `Deployment` and `Scaler` over a fake runtime, driven by a fake clock.

The fake runtime keeps the runtime's contract (`instances`, `scale`, `on_scale`, new instances ready when
`scale` returns, removed ones drained before they stop), so the delays, clamps, draining and the cold start
of a deployment scaled to zero are the production code's. The events go to a real event log (SQLite).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from modelyard.catalog.registry import Catalog
from modelyard.errors import ModelyardError
from modelyard.serving.autoscale import AutoscalePolicy, Scaler, wanted_instances
from modelyard.serving.deployment import Deployment
from modelyard.serving.spec import Autoscale, DeploymentSpec
from modelyard.settings import Settings
from modelyard.store import Database
from modelyard.store.events import EventLog
from modelyard.store.models import DeploymentEvent
from modelyard.telemetry.metering import BACKGROUND, background

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeInstance:
    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = 0
        self.state = "ready"
        self.stopped_with_in_flight: int | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def suspect(self) -> None:
        pass


class FakeRuntime:
    """Instances that start in `start_s` (real seconds) and drain before they stop, like `LocalRuntime`."""

    def __init__(self, start_s: float = 0.0, fail: bool = False) -> None:
        self.start_s = start_s
        self.fail = fail
        self._instances: dict[str, list[FakeInstance]] = {}
        self.stopped: list[FakeInstance] = []
        self.on_scale = None
        self._n = 0

    def instances(self, key: str) -> list[FakeInstance]:
        return self._instances.get(key, [])

    async def scale(self, spec, count: int, *, reason: str = "") -> list[FakeInstance]:
        current = self._instances.setdefault(spec.key, [])
        before = len(current)
        if count > before:
            await asyncio.sleep(self.start_s)
            if self.fail:
                raise RuntimeError("instance blue-0 did not become ready: process exited with code 1")
            for _ in range(count - before):
                self._n += 1
                current.append(FakeInstance(f"i{self._n}"))
        elif count < before:
            leaving = current[count:]
            del current[count:]
        if self.on_scale and before != len(current):
            self.on_scale(spec.key, before, len(current), reason or "set")
        if count < before:
            while any(i.in_flight for i in leaving):  # drained: never cut a request in flight
                await asyncio.sleep(0.01)
            for inst in leaving:
                inst.stopped_with_in_flight = inst.in_flight
                inst.state = "stopped"
                self.stopped.append(inst)
        return current

    async def stop(self, key: str) -> None:
        self._instances.pop(key, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'events.db'}")
    db.upgrade()
    yield EventLog(db)
    db.close()


async def autoscaled(runtime: FakeRuntime, events: EventLog | None = None, *, instance_count: int = 1,
                     timeout_ms: int = 5000, queue_wait_ms: int = 60_000, **auto) -> Deployment:
    card = Catalog.load(Settings.from_env()).get("gemma-3-270m")
    spec = DeploymentSpec(name="blue", endpoint_name="chat", model=card.id, instance_count=instance_count,
                          autoscale=Autoscale(**auto),
                          request_settings={"request_timeout_ms": timeout_ms, "max_queue_wait_ms": queue_wait_ms})
    if events is not None:
        events.attach(runtime)
    dep = Deployment(spec, card, runtime)
    await dep.start()
    return dep


def scaler_for(dep: Deployment, clock: Clock) -> Scaler:
    endpoints = SimpleNamespace(all=lambda: [SimpleNamespace(name="chat", deployments={dep.name: dep})])
    return Scaler(endpoints, clock=clock)


async def run_for(scaler: Scaler, clock: Clock, seconds: float, step: float = 0.25) -> list:
    """Sample every `step` fake seconds for `seconds`; the decisions taken, each finished before the next sample."""
    decided = []
    end = clock.now + seconds
    while clock.now < end - 1e-9:
        clock.now += step
        decided += scaler.step()
        await scaler.wait_idle()
    return decided


async def hold(dep: Deployment, n: int) -> list:
    return [await dep._acquire() for _ in range(n)]


async def release(dep: Deployment, slots: list) -> None:
    for slot in slots:
        await dep._release(slot)


async def serve_in_turn(dep: Deployment, waiting: list) -> None:
    """Let each waiting request have a slot and finish, in arrival order."""
    for task in waiting:
        await dep._release(await asyncio.wait_for(task, 5))


# -- the rule -----------------------------------------------------------------


def test_wanted_instances_is_load_over_target_within_min_and_max():
    s = Autoscale(min_instances=1, max_instances=5, target_in_flight=4)
    assert [wanted_instances(load, s) for load in (0, 1, 4, 4.5, 8, 9, 100)] == [1, 1, 1, 2, 2, 3, 5]
    zero = Autoscale(min_instances=0, max_instances=2, target_in_flight=1)
    assert wanted_instances(0, zero) == 0
    assert wanted_instances(0, zero, background=True) == 1  # batch work waiting keeps one instance


def test_a_change_is_applied_only_once_it_has_held_for_its_delay():
    policy = AutoscalePolicy(Autoscale(min_instances=1, max_instances=4, target_in_flight=1,
                                       upscale_delay_s=2, downscale_delay_s=5), now=0.0)
    t, decisions = 0.0, []
    for load in [3] * 12:  # 3 s of load 3 on 1 instance
        t += 0.25
        decisions.append((t, policy.observe(t, load, current=1)))
    first = next((t, d) for t, d in decisions if d is not None)
    assert first[0] == 2.0 and first[1].count == 3  # not before the 2 s up-delay


def test_a_count_outside_min_and_max_is_corrected_at_once():
    policy = AutoscalePolicy(Autoscale(min_instances=2, max_instances=3, upscale_delay_s=60, downscale_delay_s=60),
                             now=0.0)
    assert policy.observe(0.25, 0, current=1).count == 2
    assert policy.observe(0.5, 0, current=5).count == 3


# -- through the deployment and the runtime ---------------------------------


async def test_a_burst_shorter_than_the_up_delay_adds_no_instance():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, max_instances=4, target_in_flight=1, upscale_delay_s=3, downscale_delay_s=10)
    scaler = scaler_for(dep, clock)
    slots = await hold(dep, 1)
    queued = [asyncio.create_task(dep._acquire()) for _ in range(3)]  # 1 in flight + 3 waiting: wants 4
    await asyncio.sleep(0)
    assert await run_for(scaler, clock, 2.5) == []
    assert len(dep.instances) == 1
    await release(dep, slots)
    await serve_in_turn(dep, queued)
    assert await run_for(scaler, clock, 5) == []  # the burst is over before it held for 3 s
    assert len(dep.instances) == 1


async def test_load_that_holds_for_the_up_delay_scales_up_and_the_event_says_why(events):
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, events, max_instances=8, target_in_flight=2, upscale_delay_s=3,
                           downscale_delay_s=30)
    scaler = scaler_for(dep, clock)
    slots = await hold(dep, 1)
    queued = [asyncio.create_task(dep._acquire()) for _ in range(5)]  # load 6 at 2 per instance: 3 instances
    await asyncio.sleep(0)
    decided = await run_for(scaler, clock, 4)
    assert [d.count for _, d in decided] == [3]
    assert len(dep.instances) == 3
    got = await asyncio.gather(*queued[:2])  # the new instances took waiting requests at once
    await release(dep, slots + list(got))
    await serve_in_turn(dep, queued[2:])
    rows = events.list("chat", "blue")
    assert [(r["kind"], r["from"], r["to"]) for r in rows] == [("scale_up", 0, 1), ("scale_up", 1, 3)]
    assert "target_in_flight=2" in rows[-1]["reason"] and "held for 3s" in rows[-1]["reason"]


async def test_scaling_up_never_goes_past_max_instances():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, max_instances=2, target_in_flight=1, upscale_delay_s=0, downscale_delay_s=30)
    scaler = scaler_for(dep, clock)
    slots = await hold(dep, 1)
    queued = [asyncio.create_task(dep._acquire()) for _ in range(9)]
    await asyncio.sleep(0)
    await run_for(scaler, clock, 3)
    assert len(dep.instances) == 2
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    await release(dep, slots)


async def test_one_busy_moment_within_the_down_delay_keeps_the_instances():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, instance_count=3, max_instances=3, target_in_flight=1, upscale_delay_s=0,
                           downscale_delay_s=4)
    scaler = scaler_for(dep, clock)
    assert await run_for(scaler, clock, 3) == []  # idle for 3 s of the 4
    slots = await hold(dep, 3)
    await run_for(scaler, clock, 1)
    await release(dep, slots)
    assert await run_for(scaler, clock, 3.5) == []  # the busy second is still within the last 4 s
    assert len(dep.instances) == 3
    decided = await run_for(scaler, clock, 10)
    counts = [d.count for _, d in decided]
    assert counts and counts == sorted(counts, reverse=True) and counts[-1] == 1
    assert len(dep.instances) == 1


async def test_scaling_down_drains_a_request_in_flight_instead_of_cutting_it():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, instance_count=2, max_instances=2, target_in_flight=1, downscale_delay_s=1)
    scaler = scaler_for(dep, clock)
    first, second = await hold(dep, 2)
    await dep._release(first)  # one request left, on the newest instance: the one scaling down removes
    for _ in range(8):  # 2 s with one request in flight: wants 1 instance, held past the 1 s down-delay
        clock.now += 0.25
        scaler.step()
        await asyncio.sleep(0.01)
    assert len(dep.instances) == 1 and second not in dep.instances  # out of rotation at once
    assert second.state == "ready" and second.in_flight == 1  # but still finishing its request
    await dep._release(second)
    await scaler.wait_idle()
    assert second.state == "stopped" and second.stopped_with_in_flight == 0


async def test_idle_scales_to_zero_and_the_next_request_waits_for_a_cold_start(events):
    runtime, clock = FakeRuntime(start_s=0.3), Clock()
    dep = await autoscaled(runtime, events, min_instances=0, max_instances=2, target_in_flight=1,
                           downscale_delay_s=5, queue_wait_ms=50)  # the cold start outlasts the queue wait
    scaler = scaler_for(dep, clock)
    assert len(dep.instances) == 1  # starts with one: a model that cannot load fails at creation
    await run_for(scaler, clock, 6)
    assert dep.instances == [] and dep.state == "ready"

    t0 = time.monotonic()
    slot = await dep._acquire()
    waited = time.monotonic() - t0
    assert slot in dep.instances and 0.25 <= waited < 2  # waited for the instance to start, past max_queue_wait_ms
    await dep._release(slot)
    rows = events.list("chat", "blue")
    assert [(r["kind"], r["from"], r["to"]) for r in rows][-2:] == [("scale_down", 1, 0), ("scale_up", 0, 1)]
    assert "no requests for 5s" in rows[-2]["reason"] and rows[-1]["reason"].startswith("cold start")


async def test_requests_arriving_during_a_cold_start_share_it():
    runtime, clock = FakeRuntime(start_s=0.2), Clock()
    dep = await autoscaled(runtime, min_instances=0, max_instances=1, downscale_delay_s=1)
    await run_for(scaler_for(dep, clock), clock, 2)
    assert dep.instances == []
    first = asyncio.create_task(dep._acquire())
    second = asyncio.create_task(dep._acquire())
    slot = await first
    await dep._release(slot)
    await dep._release(await second)
    assert len(dep.instances) == 1  # one instance started, not two


async def test_a_cold_start_that_fails_answers_503_with_the_reason_without_waiting_out_the_timeout():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, min_instances=0, max_instances=1, downscale_delay_s=1, timeout_ms=30_000)
    await run_for(scaler_for(dep, clock), clock, 2)
    runtime.fail = True
    t0 = time.monotonic()
    with pytest.raises(ModelyardError) as err:
        await dep._acquire()
    assert err.value.status == 503 and err.value.code == "deployment_unavailable"
    assert "scaled to zero" in err.value.message and "process exited with code 1" in err.value.message
    assert time.monotonic() - t0 < 5


async def test_a_cold_start_gives_up_after_the_request_timeout():
    runtime, clock = FakeRuntime(start_s=2.0), Clock()
    dep = await autoscaled(runtime, min_instances=0, max_instances=1, downscale_delay_s=1, timeout_ms=300,
                           queue_wait_ms=0)
    await run_for(scaler_for(dep, clock), clock, 2)
    with pytest.raises(ModelyardError) as err:
        await dep._acquire()
    assert err.value.status == 503 and "request_timeout_ms=300" in err.value.message


async def test_background_work_keeps_one_instance_of_a_deployment_that_may_scale_to_zero():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, min_instances=0, max_instances=2, target_in_flight=1, upscale_delay_s=1,
                           downscale_delay_s=1)
    scaler = scaler_for(dep, clock)
    await run_for(scaler, clock, 2)
    assert dep.instances == []

    async def batch_call():
        with background(0.5):
            return await dep._acquire(background=BACKGROUND.get())

    task = asyncio.create_task(batch_call())
    await asyncio.sleep(0.05)
    assert not task.done()  # batch work does not cold-start a deployment by itself …
    await run_for(scaler, clock, 1.5)
    assert len(dep.instances) == 1  # … but the scaler gives it one instance (not two: it adds no load)
    slot = await asyncio.wait_for(task, 2)
    await dep._release(slot, background=True)


async def test_changed_settings_take_effect_and_bring_the_count_within_the_new_bounds():
    runtime, clock = FakeRuntime(), Clock()
    dep = await autoscaled(runtime, instance_count=3, max_instances=4, downscale_delay_s=600)
    assert len(dep.instances) == 3
    await dep.reconfigure(dep.spec.model_copy(update={"autoscale": Autoscale(min_instances=1, max_instances=2)}))
    assert len(dep.instances) == 2
    await dep.reconfigure(dep.spec.model_copy(update={"autoscale": None, "instance_count": 1}))
    assert len(dep.instances) == 1
    scaler = scaler_for(dep, clock)
    assert await run_for(scaler, clock, 1) == []  # no longer autoscaled


# -- the instance-count series from the event log -----------------------------


def test_instance_series_is_the_peak_count_in_each_bucket(events):
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    rows = [(-30, 0, 1), (65, 1, 2), (70, 2, 3), (100, 3, 1), (250, 1, 0)]  # seconds after t0, from, to
    with events.db.session() as session:
        for s, a, b in rows:
            session.add(DeploymentEvent(created_at=t0 + timedelta(seconds=s), endpoint="chat", deployment="blue",
                                        kind="scale_up" if b > a else "scale_down", from_count=a, to_count=b,
                                        reason="test"))
    series = events.instance_series("chat", since=t0, until=t0 + timedelta(seconds=300), bucket_s=60,
                                    current={"blue": 0, "green": 2})
    assert series["blue"] == [1, 3, 1, 1, 1]  # 1 before; 3 at its peak in the second minute; 0 only after 4:10
    assert series["green"] == [2, 2, 2, 2, 2]  # no events: the count now, throughout
