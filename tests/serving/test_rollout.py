"""Rollouts with fakes at their edges: a fake `Endpoints`, scripted window stats and a
fake clock whose `sleep` only moves time forward, over a real `RolloutStore` on SQLite.

Each test runs a whole rollout — several steps of "60 s" — in milliseconds, and
checks what an operator would see: the splits the endpoint was given, the
rollout's state, its reason and its history.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from modelyard.cli.rollout import parse_interval, parse_steps
from modelyard.errors import ModelyardError, not_found
from modelyard.serving.rollout import RolloutController, split_at, validate_steps
from modelyard.serving.spec import EndpointSpec
from modelyard.store.db import MIGRATIONS_DIR, Database
from modelyard.store.models import Base
from modelyard.store.rollouts import RolloutRecord, RolloutStore

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
HEALTHY = {"requests": 40, "errors": 0, "error_rate": 0.0, "latency_ms": {"p50": 120.0, "p95": 400.0, "p99": 900.0}}
IDLE = {"requests": 0, "errors": 0, "error_rate": None, "latency_ms": {"p50": None, "p95": None, "p99": None}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- fakes -------------------------------------------------------------------------


class FakeEndpoints:
    """One endpoint `chat`; `update_endpoint` validates the new spec like the real one and records each split."""

    def __init__(self, traffic: dict[str, int], deployments: tuple[str, ...] = ("blue", "green"),
                 mirror: dict[str, int] | None = None) -> None:
        self.specs = {"chat": EndpointSpec(name="chat", traffic=traffic, mirror_traffic=mirror or {})}
        self.deps = {"chat": {name: SimpleNamespace(name=name, state="ready") for name in deployments}}
        self.splits: list[dict[str, int]] = []

    def get(self, name: str) -> Any:
        if name not in self.specs:
            raise not_found(f"no endpoint {name}", param="model")
        return SimpleNamespace(spec=self.specs[name], deployments=self.deps[name])

    def deployment(self, endpoint: str, name: str) -> Any:
        try:
            return self.get(endpoint).deployments[name]
        except KeyError:
            raise not_found(f"no deployment {name}", param="deployment") from None

    async def update_endpoint(self, name: str, **changes: Any) -> Any:
        data = self.get(name).spec.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        unknown = set(data["traffic"]) - set(self.deps[name])
        if unknown:
            raise ModelyardError(f"unknown deployment(s) {unknown}", param="traffic")
        self.specs[name] = EndpointSpec.model_validate(data)
        self.splits.append(dict(self.specs[name].traffic))
        return self.get(name)

    def traffic(self) -> dict[str, int]:
        return dict(self.specs["chat"].traffic)


class FakeTime:
    """Wall clock and sleep: sleeping moves the clock. `on_sleep` runs before each sleep returns;
    with `block_at=n` the n-th sleep never returns (a gateway stopped mid-step)."""

    def __init__(self, block_at: int | None = None) -> None:
        self.now = T0
        self.sleeps: list[float] = []
        self.block_at = block_at
        self.on_sleep: Any = None

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.block_at is not None and len(self.sleeps) >= self.block_at:
            await asyncio.Event().wait()
        self.now += timedelta(seconds=seconds)
        if self.on_sleep:
            self.on_sleep()
        await asyncio.sleep(0)


class FakeStats:
    """`window_stats` that answers from a script, one entry per judged step (then HEALTHY)."""

    def __init__(self, *script: dict[str, Any]) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, db: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self.script.pop(0) if self.script else HEALTHY


class FakeWriter:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> int:
        self.flushes += 1
        return 0


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'modelyard.db'}")
    database.upgrade()
    yield database
    database.close()


@pytest.fixture
def store(db) -> RolloutStore:
    return RolloutStore(db)


def controller(endpoints, store, time_: FakeTime, stats: FakeStats, writer: FakeWriter | None = None):
    return RolloutController(endpoints, store, store.db, writer or FakeWriter(), clock=time_.clock,
                             sleep=time_.sleep, stats=stats)


def events(record: RolloutRecord) -> list[str]:
    return [entry["event"] for entry in record.history]


# --- the plan ----------------------------------------------------------------------


def test_split_from_one_deployment_gives_it_the_rest():
    assert [split_at({"blue": 100}, "green", p) for p in (10, 25, 50, 100)] == [
        {"blue": 90, "green": 10}, {"blue": 75, "green": 25}, {"blue": 50, "green": 50}, {"blue": 0, "green": 100}]


def test_split_from_two_deployments_keeps_their_proportions_and_sums_to_exactly_100():
    assert split_at({"blue": 70, "old": 30}, "green", 10) == {"blue": 63, "old": 27, "green": 10}
    assert split_at({"blue": 70, "old": 30}, "green", 25) == {"blue": 53, "old": 22, "green": 25}
    assert split_at({"blue": 70, "old": 30}, "green", 100) == {"blue": 0, "old": 0, "green": 100}
    befores = ({"blue": 70, "old": 30}, {"a": 33, "b": 33, "c": 34}, {"a": 1, "b": 99}, {"a": 50, "green": 0, "b": 50})
    for before in befores:
        for pct in range(1, 101):
            split = split_at(before, "green", pct)
            assert sum(split.values()) == 100 and split["green"] == pct
            for name, weight in before.items():
                if name != "green":
                    assert abs(split[name] - (100 - pct) * weight / 100) < 1


@pytest.mark.parametrize("steps", [[], [50, 20], [0, 100], [10, 101], "10,20", [10, 10], [10.5, 20], [True]])
def test_bad_steps_are_a_400_naming_steps(steps):
    with pytest.raises(ModelyardError) as info:
        validate_steps(steps)
    assert info.value.status == 400 and info.value.param == "steps"


# --- a rollout from start to end ------------------------------------------------------------


async def test_a_healthy_rollout_walks_every_step_and_succeeds(store):
    endpoints, clock, stats, writer = FakeEndpoints({"blue": 100}), FakeTime(), FakeStats(), FakeWriter()
    rollouts = controller(endpoints, store, clock, stats, writer)

    started = await rollouts.start("chat", "green", [10, 25, 50, 100], interval_s=60,
                                   max_error_rate=0.02, max_p95_ms=3000)
    assert started.current_step == 0 and endpoints.traffic() == {"blue": 90, "green": 10}, "step 1 is set at once"
    done = await rollouts.wait(started.id)

    assert endpoints.splits == [{"blue": 90, "green": 10}, {"blue": 75, "green": 25},
                                {"blue": 50, "green": 50}, {"blue": 0, "green": 100}]
    assert done.state == "succeeded" and done.current_step == 3 and "green holds 100%" in done.reason
    assert endpoints.traffic() == {"blue": 0, "green": 100}
    assert clock.sleeps == [60, 60, 60, 60]
    # Each step is judged on green's own numbers, from the moment its split took effect, after a flush.
    assert [c["deployment"] for c in stats.calls] == ["green"] * 4
    assert [c["since"] for c in stats.calls] == [T0 + timedelta(seconds=60 * i) for i in range(4)]
    assert writer.flushes == 4
    assert events(done) == ["started", "step", "passed", "step", "passed", "step", "passed", "step", "passed",
                            "succeeded"]
    assert store.get(started.id).state == "succeeded" and store.active("chat") is None


async def test_a_rollout_from_two_deployments_keeps_their_ratio_at_every_step(store):
    endpoints = FakeEndpoints({"blue": 70, "old": 30}, deployments=("blue", "old", "green"))
    rollouts = controller(endpoints, store, FakeTime(), FakeStats())
    done = await rollouts.wait((await rollouts.start("chat", "green", [10, 25, 50, 100], 60)).id)
    assert endpoints.splits == [{"blue": 63, "old": 27, "green": 10}, {"blue": 53, "old": 22, "green": 25},
                                {"blue": 35, "old": 15, "green": 50}, {"blue": 0, "old": 0, "green": 100}]
    assert all(sum(s.values()) == 100 for s in endpoints.splits) and done.state == "succeeded"


async def test_a_canary_ends_at_its_last_step(store):
    endpoints = FakeEndpoints({"blue": 100})
    rollouts = controller(endpoints, store, FakeTime(), FakeStats())
    done = await rollouts.wait((await rollouts.start("chat", "green", [5, 10], 60)).id)
    assert done.state == "succeeded" and endpoints.traffic() == {"blue": 90, "green": 10}


async def test_an_error_rate_breach_rolls_back_to_the_exact_previous_split(store):
    endpoints = FakeEndpoints({"blue": 70, "old": 30}, deployments=("blue", "old", "green"))
    bad = {"requests": 50, "errors": 5, "error_rate": 0.1, "latency_ms": {"p50": 100.0, "p95": 200.0, "p99": 300.0}}
    rollouts = controller(endpoints, store, FakeTime(), FakeStats(HEALTHY, bad))

    done = await rollouts.wait((await rollouts.start("chat", "green", [10, 25, 50, 100], 60,
                                                     max_error_rate=0.02)).id)

    assert done.state == "rolled_back"
    assert endpoints.traffic() == {"blue": 70, "old": 30}, "exactly the split before the rollout"
    assert endpoints.splits[-1] == {"blue": 70, "old": 30} and len(endpoints.splits) == 3
    assert "error rate 10.0% (5 of 50 requests) is above the limit of 2.0%" in done.reason
    assert "step 2/4" in done.reason and "restored to blue=70, old=30" in done.reason
    assert events(done)[-2:] == ["breach", "rolled_back"]
    assert done.history[-2]["stats"] == {"requests": 50, "errors": 5, "error_rate": 0.1, "p95_ms": 200.0}


async def test_a_p95_breach_rolls_back_and_names_p95(store):
    endpoints = FakeEndpoints({"blue": 100})
    slow = {"requests": 9, "errors": 0, "error_rate": 0.0, "latency_ms": {"p50": 2000.0, "p95": 4210.0, "p99": 5000.0}}
    rollouts = controller(endpoints, store, FakeTime(), FakeStats(slow))

    done = await rollouts.wait((await rollouts.start("chat", "green", [10, 100], 60, max_p95_ms=3000)).id)

    assert done.state == "rolled_back" and endpoints.traffic() == {"blue": 100}
    assert "p95 latency 4210 ms is above the limit of 3000 ms" in done.reason and "step 1/2" in done.reason


async def test_a_step_without_traffic_is_recorded_and_the_rollout_moves_on(store):
    endpoints = FakeEndpoints({"blue": 100})
    rollouts = controller(endpoints, store, FakeTime(), FakeStats(IDLE))
    done = await rollouts.wait((await rollouts.start("chat", "green", [10, 100], 60)).id)
    assert done.state == "succeeded"
    idle = [e for e in done.history if e["event"] == "no_traffic"]
    assert len(idle) == 1 and "no traffic observed" in idle[0]["message"] and idle[0]["step"] == 0


async def test_min_requests_leaves_a_thin_step_unjudged(store):
    endpoints = FakeEndpoints({"blue": 100})
    thin = {"requests": 2, "errors": 2, "error_rate": 1.0, "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0}}
    rollouts = controller(endpoints, store, FakeTime(), FakeStats(thin))
    done = await rollouts.wait((await rollouts.start("chat", "green", [10, 100], 60, min_requests=5)).id)
    assert done.state == "succeeded"
    assert "only 2 request(s)" in done.history[events(done).index("no_traffic")]["message"]


async def test_cancel_restores_the_previous_split(store):
    endpoints = FakeEndpoints({"blue": 100})
    rollouts = controller(endpoints, store, FakeTime(block_at=2), FakeStats())
    record = await rollouts.start("chat", "green", [10, 50, 100], 60)
    for _ in range(20):  # let step 1 pass and step 2 start
        await asyncio.sleep(0.01)
    assert endpoints.traffic() == {"blue": 50, "green": 50}

    cancelled = await rollouts.cancel(record.id)

    assert cancelled.state == "cancelled" and endpoints.traffic() == {"blue": 100}
    assert "cancelled at step 2/3" in cancelled.reason and "restored to blue=100" in cancelled.reason
    assert store.get(record.id).state == "cancelled"
    with pytest.raises(ModelyardError) as info:
        await rollouts.cancel(record.id)
    assert info.value.status == 409


async def test_a_split_changed_by_hand_during_a_step_stops_the_rollout_and_is_left_alone(store):
    endpoints, clock = FakeEndpoints({"blue": 100}), FakeTime()
    clock.on_sleep = lambda: endpoints.specs.update(chat=EndpointSpec(name="chat", traffic={"blue": 60, "green": 40}))
    rollouts = controller(endpoints, store, clock, FakeStats())
    done = await rollouts.wait((await rollouts.start("chat", "green", [10, 100], 60)).id)
    assert done.state == "cancelled" and endpoints.traffic() == {"blue": 60, "green": 40}
    assert "changed outside the rollout" in done.reason and "blue=60, green=40" in done.reason


async def test_the_mirror_target_stops_being_mirrored_and_a_rollback_brings_the_mirror_back(store):
    endpoints = FakeEndpoints({"blue": 100}, mirror={"green": 10})
    slow = {"requests": 9, "errors": 0, "error_rate": 0.0, "latency_ms": {"p50": 1.0, "p95": 9999.0, "p99": 1.0}}
    rollouts = controller(endpoints, store, FakeTime(), FakeStats(HEALTHY, slow))
    record = await rollouts.start("chat", "green", [10, 50, 100], 60)
    assert endpoints.specs["chat"].mirror_traffic == {} and "mirror_stopped" in events(record)
    done = await rollouts.wait(record.id)
    assert done.state == "rolled_back"
    assert endpoints.traffic() == {"blue": 100} and endpoints.specs["chat"].mirror_traffic == {"green": 10}


# --- what start() refuses ---------------------------------------------------------------


async def test_one_running_rollout_per_endpoint(store):
    endpoints = FakeEndpoints({"blue": 100}, deployments=("blue", "green", "teal"))
    rollouts = controller(endpoints, store, FakeTime(block_at=1), FakeStats())
    first = await rollouts.start("chat", "green", [10, 100], 60)
    with pytest.raises(ModelyardError) as info:
        await rollouts.start("chat", "teal", [10, 100], 60)
    assert info.value.status == 409 and info.value.code == "rollout_in_progress"
    assert f"rollout {first.id}" in info.value.message
    await rollouts.close()


@pytest.mark.parametrize(("kwargs", "status", "param"), [
    ({"deployment": "purple"}, 404, "deployment"),
    ({"interval_s": 0}, 400, "interval_s"),
    ({"max_error_rate": 2}, 400, "max_error_rate"),
    ({"max_p95_ms": -1}, 400, "max_p95_ms"),
    ({"min_requests": 0}, 400, "min_requests"),
    ({"deployment": "blue"}, 409, "traffic"),  # blue already has everything: nothing to shift
])
async def test_bad_rollouts_are_refused_naming_the_field(store, kwargs, status, param):
    endpoints = FakeEndpoints({"blue": 100})
    rollouts = controller(endpoints, store, FakeTime(), FakeStats())
    args = {"deployment": "green", "steps": [10, 100], "interval_s": 60, **kwargs}
    with pytest.raises(ModelyardError) as info:
        await rollouts.start("chat", args.pop("deployment"), args.pop("steps"), **args)
    assert (info.value.status, info.value.param) == (status, param)
    assert endpoints.splits == [] and store.list("chat") == []


async def test_steps_must_be_above_the_share_the_deployment_already_has(store):
    rollouts = controller(FakeEndpoints({"blue": 70, "green": 30}), store, FakeTime(), FakeStats())
    with pytest.raises(ModelyardError) as info:
        await rollouts.start("chat", "green", [20, 100], 60)
    assert info.value.param == "steps" and "already receives 30%" in info.value.message


# --- restarts ------------------------------------------------------------------------


async def test_close_keeps_the_rollout_running_and_the_split_in_place(store):
    endpoints = FakeEndpoints({"blue": 100})
    rollouts = controller(endpoints, store, FakeTime(block_at=1), FakeStats())
    record = await rollouts.start("chat", "green", [10, 100], 60)
    await rollouts.close()
    assert store.get(record.id).state == "running" and endpoints.traffic() == {"blue": 90, "green": 10}


async def test_a_restart_with_the_split_in_place_resumes_the_step_and_finishes(store):
    endpoints, stats = FakeEndpoints({"blue": 100}), FakeStats()
    before = FakeTime(block_at=2)
    first = controller(endpoints, store, before, stats)
    record = await first.start("chat", "green", [10, 50, 100], 60)
    for _ in range(20):
        await asyncio.sleep(0.01)
    await first.close()  # the gateway stops 0 s into step 2
    assert store.get(record.id).current_step == 1 and endpoints.traffic() == {"blue": 50, "green": 50}

    after = FakeTime()
    after.now = before.now + timedelta(seconds=25)  # back 25 s later
    second = controller(endpoints, store, after, stats)
    resumed = await second.resume_all()
    assert [r.id for r in resumed] == [record.id]
    done = await second.wait(record.id)

    assert done.state == "succeeded" and endpoints.traffic() == {"blue": 0, "green": 100}
    assert after.sleeps[0] == pytest.approx(35), "only the rest of the interrupted step is waited out"
    step2_start = T0 + timedelta(seconds=60)
    assert stats.calls[1]["since"] == step2_start, "the resumed step is judged from when it began"
    assert "35 s of the step left" in done.history[events(done).index("resumed")]["message"]


async def test_a_restart_after_the_split_was_changed_reverts_with_a_reason(store):
    endpoints = FakeEndpoints({"blue": 100})
    first = controller(endpoints, store, FakeTime(block_at=1), FakeStats())
    record = await first.start("chat", "green", [10, 100], 60)
    await first.close()
    endpoints.specs["chat"] = EndpointSpec(name="chat", traffic={"blue": 50, "green": 50})  # not the rollout's split

    second = controller(endpoints, store, FakeTime(), FakeStats())
    await second.resume_all()

    done = store.get(record.id)
    assert done.state == "reverted" and endpoints.traffic() == {"blue": 100}
    assert "restarted during step 1/2" in done.reason
    assert "blue=50, green=50" in done.reason and "blue=90, green=10" in done.reason
    assert "restored to blue=100" in done.reason
    assert record.id not in second._tasks


async def test_a_restart_long_after_the_step_ended_judges_it_at_once(store):
    endpoints = FakeEndpoints({"blue": 100})
    first = controller(endpoints, store, FakeTime(block_at=1), FakeStats())
    record = await first.start("chat", "green", [10], 60)
    await first.close()
    later = FakeTime()
    later.now = T0 + timedelta(hours=1)
    slow = {"requests": 9, "errors": 0, "error_rate": 0.0, "latency_ms": {"p50": 1.0, "p95": 9999.0, "p99": 1.0}}
    second = controller(endpoints, store, later, FakeStats(slow))
    await second.resume_all()
    done = await second.wait(record.id)
    assert later.sleeps == [] and done.state == "rolled_back" and endpoints.traffic() == {"blue": 100}


async def test_a_restart_after_the_endpoint_was_deleted_ends_the_rollout(store):
    endpoints = FakeEndpoints({"blue": 100})
    first = controller(endpoints, store, FakeTime(block_at=1), FakeStats())
    record = await first.start("chat", "green", [10, 100], 60)
    await first.close()
    del endpoints.specs["chat"]
    await controller(endpoints, store, FakeTime(), FakeStats()).resume_all()
    done = store.get(record.id)
    assert done.state == "cancelled" and "no longer exists" in done.reason


# --- the store -----------------------------------------------------------------------


def test_migrations_create_the_rollouts_table_and_match_the_models(db):
    assert "rollouts" in db.table_names()
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert db.current_revision() == head and head >= "0002"  # 0002 added the rollouts table
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_the_store_lists_newest_first_and_knows_the_running_one(store):
    def new(deployment: str, state: str) -> RolloutRecord:
        return store.create(RolloutRecord(endpoint="chat", deployment=deployment, steps=[10, 100], interval_s=60,
                                          max_error_rate=0.02, max_p95_ms=3000, from_traffic={"blue": 100},
                                          state=state, history=[{"event": "started"}]))

    old, running = new("green", "rolled_back"), new("teal", "running")
    new_other = store.create(RolloutRecord(endpoint="other", deployment="x", steps=[100], interval_s=1,
                                           max_error_rate=0, max_p95_ms=1, from_traffic={"y": 100}))
    assert [r.id for r in store.list("chat")] == [running.id, old.id]
    assert store.active("chat").id == running.id and store.active("nobody") is None
    assert {r.id for r in store.running()} == {running.id, new_other.id}
    running.history.append({"event": "step"})
    running.current_step = 0
    store.save(running)
    again = store.get(running.id)
    assert again.history == [{"event": "started"}, {"event": "step"}] and again.current_step == 0
    assert again.created_at.tzinfo is not None and again.describe()["percent"] == 10


# --- the command line's arguments ---------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1h", 3600), ("90", 90), ("1.5m", 90),
                                               ("500ms", 0.5)])
def test_intervals_read_like_durations(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["abc", "0s", "-5s", "10d", ""])
def test_bad_intervals_name_the_option(text):
    with pytest.raises(typer.BadParameter) as info:
        parse_interval(text)
    assert info.value.param_hint == "--interval"


def test_steps_option_is_checked_like_the_server_does():
    assert parse_steps("10, 25,50,100") == [10, 25, 50, 100]
    for bad in ("10,x", "50,20", "0,100"):
        with pytest.raises(typer.BadParameter) as info:
            parse_steps(bad)
        assert info.value.param_hint == "--steps"


# --- the HTTP routes, over the same fakes ----------------------------------------------------


def test_routes_start_list_get_and_cancel_a_rollout(store):
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from modelyard.server import rollout_routes
    from modelyard.server.http import error_response

    endpoints = FakeEndpoints({"blue": 100})
    admin = SimpleNamespace(is_admin=True)
    gateway = SimpleNamespace(keys=SimpleNamespace(verify=lambda key: admin if key == "admin" else None),
                              settings=SimpleNamespace(max_body_bytes=1 << 20),
                              rollouts=controller(endpoints, store, FakeTime(block_at=1), FakeStats()))
    app = FastAPI()
    app.state.gateway = gateway
    app.include_router(rollout_routes.router)
    app.add_exception_handler(ModelyardError, lambda request, exc: error_response(exc))
    auth = {"Authorization": "Bearer admin"}

    with TestClient(app) as client:
        assert client.post("/api/endpoints/chat/deployments/green/rollout", json={"steps": [10]}).status_code == 401
        bad = client.post("/api/endpoints/chat/deployments/green/rollout", json={"steps": [50, 20]}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "steps"
        r = client.post("/api/endpoints/chat/deployments/green/rollout", headers=auth,
                        json={"steps": [10, 50, 100], "interval_s": 30, "max_error_rate": 0.05, "max_p95_ms": 2500})
        assert r.status_code == 201, r.text
        started = r.json()
        assert started["state"] == "running" and started["step_label"] == "1/3" and started["percent"] == 10
        assert started["traffic_now"] == {"blue": 90, "green": 10} and started["next_check_at"]
        again = client.post("/api/endpoints/chat/deployments/green/rollout", json={"steps": [10]}, headers=auth)
        assert again.status_code == 409

        listed = client.get("/api/endpoints/chat/rollouts", headers=auth).json()["data"]
        assert [x["id"] for x in listed] == [started["id"]]
        assert client.get(f"/api/rollouts/{started['id']}", headers=auth).json()["history"][0]["event"] == "started"
        assert client.get("/api/rollouts/9999", headers=auth).status_code == 404
        assert client.get("/api/endpoints/nope/rollouts", headers=auth).status_code == 404

        cancelled = client.post(f"/api/rollouts/{started['id']}/cancel", headers=auth)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["traffic_now"] == {"blue": 100}
        assert client.post(f"/api/rollouts/{started['id']}/cancel", headers=auth).status_code == 409
