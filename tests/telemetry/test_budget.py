"""Budgets: what an endpoint and its keys spent this UTC day and month, and the 429 once a limit is spent.

The tracker is tested alone with a clock the test moves (day and month
roll-over, per key against per endpoint, the tightest limit, a restart that
reads the spend back from the database — on SQLite and on Postgres where one
is available). Then through HTTP with the `openai` client against a real
gateway: a hosted deployment on the local OpenAI stub spends a small budget
and gets 429 with the reset in ``Retry-After``; a restarted gateway still
refuses; a bad budget is a 400 through ``/api/apply`` that changes nothing;
and (with the real model) a local deployment keeps answering, at a cost that
follows its configured instance-hour price.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

from modelyard.catalog.card import ModelCard
from modelyard.errors import ModelyardError
from modelyard.gateway import Call, build_pipeline
from modelyard.telemetry import budget as budgets
from modelyard.telemetry.budget import BudgetTracker
from modelyard.telemetry.budget import BudgetSpec
from modelyard.serving.endpoints import Endpoint, TrafficSplit
from modelyard.serving.spec import EndpointSpec
from modelyard.store import UsageWriter
from modelyard.telemetry.metrics import GatewayMetrics
from modelyard.wire import ChatCompletionRequest

from tests.gateway import test_pipeline as fakes  # keys, endpoints, a scripted deployment, a keeping writer
from tests.cards import hosted_card
from tests.live_gateway import start_server, write_catalog
from tests.openai_stub import COMPLETION_TOKENS, PROMPT_TOKENS
# the store tests' database fixtures: SQLite, and Postgres when MODELYARD_TEST_POSTGRES_URL names one
from tests.store.conftest import any_db, postgres_url, sqlite_url  # noqa: F401 - fixtures

UTC = timezone.utc


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def card(fmt: str = "hosted", **price) -> ModelCard:
    source = {"type": "hosted", "base_url": "http://upstream.invalid/v1"} if fmt == "hosted" else {"type": "local", "path": "/x"}
    return ModelCard(id=f"card-{fmt}", family="t", task="chat", format=fmt, license="none", context_length=4096,
                     source=source, price=price)


def deployment(name: str, c: ModelCard) -> SimpleNamespace:
    return SimpleNamespace(name=name, card=c)


# --- the tracker ------------------------------------------------------------------------


def test_day_spend_starts_again_at_utc_midnight_and_month_spend_carries_on():
    clock = Clock(datetime(2025, 3, 10, 23, 59, 30, tzinfo=UTC))
    tracker = BudgetTracker(clock=clock)
    spec = BudgetSpec(usd_per_day=2.0, usd_per_month=10.0)
    tracker.add("chat", None, 1.5)
    state = tracker.state("chat", None, spec)
    assert (state.period, state.spent_usd, state.remaining_usd, state.share) == ("day", 1.5, 0.5, 0.25)
    assert state.resets_at == datetime(2025, 3, 11, tzinfo=UTC)

    clock.now = datetime(2025, 3, 11, 0, 0, 1, tzinfo=UTC)
    assert tracker.spent("chat", period="day") == 0.0
    assert tracker.spent("chat", period="month") == 1.5
    tracker.add("chat", None, 0.25)
    assert tracker.spent("chat", period="day") == 0.25
    assert tracker.spent("chat", period="month") == 1.75
    # day: 1.75 of 2 left (87.5%); month: 8.25 of 10 left (82.5%): the month is now the tighter limit
    state = tracker.state("chat", None, spec)
    assert (state.period, state.limit_name, state.remaining_usd) == ("month", "usd_per_month", 8.25)
    assert state.resets_at == datetime(2025, 4, 1, tzinfo=UTC)


def test_month_spend_starts_again_on_the_first_and_december_rolls_into_january():
    clock = Clock(datetime(2025, 12, 31, 23, 0, tzinfo=UTC))
    tracker = BudgetTracker(clock=clock)
    tracker.add("chat", 7, 3.0)
    state = tracker.state("chat", 7, BudgetSpec(usd_per_month=3.0))
    assert state.exhausted and state.resets_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert state.retry_after_s() == 3600

    clock.now = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert tracker.spent("chat", period="month") == 0.0
    assert tracker.spent("chat", 7, period="month") == 0.0
    assert not tracker.state("chat", 7, BudgetSpec(usd_per_month=3.0)).exhausted


def test_per_key_limits_count_each_key_while_the_endpoint_limit_counts_them_all():
    tracker = BudgetTracker(clock=Clock(datetime(2025, 5, 5, 12, tzinfo=UTC)))
    spec = BudgetSpec(usd_per_day=10.0, per_key={"usd_per_day": 1.0})
    tracker.add("chat", 1, 1.0)
    tracker.add("chat", 2, 0.25)
    tracker.add("other", 1, 5.0)  # another endpoint's spend is not this endpoint's

    first = tracker.state("chat", 1, spec)
    assert (first.scope, first.limit_name, first.exhausted) == ("key", "per_key.usd_per_day", True)
    second = tracker.state("chat", 2, spec)
    assert (second.scope, second.remaining_usd, second.exhausted, second.low) == ("key", 0.75, False, False)
    # No key (or no per-key limits): the endpoint's own limit, 1.25 of 10 spent.
    whole = tracker.state("chat", None, spec)
    assert (whole.scope, whole.spent_usd, whole.remaining_usd) == ("endpoint", 1.25, 8.75)
    assert tracker.state("chat", 1, BudgetSpec(usd_per_day=10.0)).scope == "endpoint"
    assert tracker.state("chat", 1, None) is None
    assert tracker.state("chat", 1, BudgetSpec()) is None  # a budget with no limits limits nothing


def test_low_means_under_low_share_left_and_a_zero_limit_is_spent_at_once():
    tracker = BudgetTracker(clock=Clock(datetime(2025, 5, 5, tzinfo=UTC)))
    tracker.add("chat", None, 8.5)
    assert tracker.state("chat", None, BudgetSpec(usd_per_day=10.0, low_share=0.2)).low  # 15% left
    assert not tracker.state("chat", None, BudgetSpec(usd_per_day=10.0, low_share=0.1)).low
    zero = tracker.state("other", None, BudgetSpec(usd_per_day=0))
    assert zero.exhausted and zero.low and zero.share == 0.0


def test_costs_that_are_zero_or_not_numbers_change_nothing():
    tracker = BudgetTracker(clock=Clock(datetime(2025, 5, 5, tzinfo=UTC)))
    for cost in (0.0, -1.0, float("nan")):
        tracker.add("chat", 1, cost)
    assert tracker.spent("chat") == 0.0 and tracker.spent("chat", 1) == 0.0
    assert tracker._day == {}  # failed calls for made-up names grow nothing


def test_a_restart_reads_this_day_and_month_spend_back_from_the_usage_records(any_db):
    now = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
    writer = UsageWriter(any_db)
    records = [
        ("chat", 1, 0.10, now - timedelta(hours=1)),              # today, key 1
        ("chat", 2, 0.20, now - timedelta(hours=12)),             # today (00:00 exactly), key 2
        ("chat", 1, 0.40, now - timedelta(hours=12, seconds=1)),  # yesterday 23:59:59: this month only
        ("chat", None, 0.80, datetime(2025, 6, 1, tzinfo=UTC)),   # the first of the month, no key
        ("chat", 1, 1.60, datetime(2025, 5, 31, 23, 59, 59, tzinfo=UTC)),  # last month: not counted
        ("other", 1, 3.20, now - timedelta(minutes=5)),           # another endpoint
        ("chat", 1, 0.0, now),                                    # free (a refused call)
    ]
    for endpoint, key_id, cost, at in records:
        writer.submit({"endpoint": endpoint, "kind": "chat", "key_id": key_id, "cost_usd": cost, "created_at": at})
    asyncio.run(writer.flush())

    tracker = BudgetTracker(clock=Clock(now))
    tracker.load(any_db)
    assert tracker.spent("chat", period="day") == pytest.approx(0.30)
    assert tracker.spent("chat", period="month") == pytest.approx(1.50)
    assert tracker.spent("chat", 1, period="day") == pytest.approx(0.10)
    assert tracker.spent("chat", 1, period="month") == pytest.approx(0.50)
    assert tracker.spent("chat", 2, period="month") == pytest.approx(0.20)
    assert tracker.spent("other", period="day") == pytest.approx(3.20)
    # and it counts on from there
    tracker.add("chat", 1, 0.05)
    assert tracker.spent("chat", period="day") == pytest.approx(0.35)
    assert tracker.spent("chat", 1, period="month") == pytest.approx(0.55)


# --- the allow-check --------------------------------------------------------------------


def spent_call(limit: float, spent: float, clock: Clock) -> SimpleNamespace:
    tracker = BudgetTracker(clock=clock)
    tracker.add("chat", 3, spent)
    return SimpleNamespace(budget=tracker.state("chat", 3, BudgetSpec(usd_per_day=limit)), endpoint_name="chat")


def test_a_spent_budget_refuses_paid_hosted_deployments_only():
    clock = Clock(datetime(2025, 7, 1, 21, 30, tzinfo=UTC))
    call = spent_call(1.0, 1.0, clock)
    paid = deployment("big", card("hosted", input_per_1m=2.5, output_per_1m=10))
    free_hosted = deployment("vllm", card("hosted"))  # a self-hosted API priced at zero
    local = deployment("small", card("gguf", per_instance_hour=0.05))
    assert not budgets.allows(call, paid)
    assert budgets.allows(call, free_hosted) and budgets.allows(call, local)
    budgets.check(call, local)
    with pytest.raises(ModelyardError) as exc:
        budgets.check(call, paid)
    err = exc.value
    assert (err.status, err.code, err.type) == (429, "budget_exhausted", "insufficient_quota")
    assert err.headers == {"retry-after": str(int(2.5 * 3600)), "x-should-retry": "false"}
    for words in ("endpoint 'chat'", "usd_per_day", "$1.0000", "'big'", "2025-07-02T00:00:00Z", "2h 30m"):
        assert words in err.message, err.message
    assert budgets.refusal(call, paid).code == "budget_exhausted"


def test_the_check_reads_the_spend_now_not_when_the_call_began():
    clock = Clock(datetime(2025, 7, 1, 12, tzinfo=UTC))
    call = spent_call(1.0, 0.5, clock)
    paid = deployment("big", card("hosted", input_per_1m=1))
    assert budgets.allows(call, paid)
    call.budget._tracker.add("chat", 3, 0.5)  # another call finished meanwhile
    assert not budgets.allows(call, paid)
    assert budgets.allows(SimpleNamespace(budget=None), paid)  # no budget, no limit


def test_the_pipeline_counts_each_call_and_refuses_a_paid_deployment_once_the_budget_is_spent():
    tracker = BudgetTracker()
    paid = fakes.FakeDeployment("blue")  # hosted, $1 / $2 per 1M tokens: 12 + 3 tokens a call
    spec = EndpointSpec(name="chat", traffic={"blue": 100}, budget={"usd_per_day": 2 * fakes.EXPECTED_COST})
    writer = fakes.FakeWriter()
    pipeline = build_pipeline(keys=fakes.FakeKeys(), endpoints=fakes.FakeEndpoints(Endpoint(spec, {"blue": paid})),
                              split=TrafficSplit(), writer=writer, metrics=GatewayMetrics(), budget=tracker)

    def call(**body) -> Call:
        return Call(kind="chat", request=ChatCompletionRequest(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                               **body), api_key=fakes.GOOD_KEY)

    async def run() -> list[ModelyardError]:
        first = await pipeline(call())
        assert first.budget.remaining_usd == pytest.approx(2 * fakes.EXPECTED_COST)
        assert first.headers["x-modelyard-budget-remaining-usd"] == f"{2 * fakes.EXPECTED_COST:.6f}"
        second = await pipeline(call(stream=True))
        async for _ in second.stream:
            pass
        refused = []
        for body in ({}, {"stream": True}):
            with pytest.raises(ModelyardError) as exc:
                await pipeline(call(**body))
            refused.append(exc.value)
        return refused

    refused = asyncio.run(run())
    assert [e.code for e in refused] == ["budget_exhausted"] * 2
    assert [r["status"] for r in writer.records] == [200, 200, 429, 429]
    assert len(paid.requests) == 2  # the refused calls never reached the deployment
    assert tracker.spent("chat") == pytest.approx(2 * fakes.EXPECTED_COST)
    assert tracker.spent("chat", 7, "month") == pytest.approx(2 * fakes.EXPECTED_COST)


# --- through HTTP ---------------------------------------------------------------------------

PRICE_IN, PRICE_OUT = 1000.0, 2000.0  # USD per 1M tokens: the stub's 10 + 20 tokens cost $0.05 a call
CALL_COST = (PROMPT_TOKENS * PRICE_IN + COMPLETION_TOKENS * PRICE_OUT) / 1e6
ASK = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def paid_catalog(home: Path, stub_root: str) -> None:
    """``stub-paid``, priced per token, and ``stub-free``, a hosted API priced at zero (a self-hosted vLLM)."""
    write_catalog(home, hosted_card("stub-paid", f"{stub_root}/v1", price=(PRICE_IN, PRICE_OUT)),
                  hosted_card("stub-free", f"{stub_root}/v1"), name="paid.yaml")


@pytest.fixture(scope="module")
def gw(tmp_path_factory, stub):
    home = tmp_path_factory.mktemp("budget") / "home"
    paid_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults")
    yield srv
    srv.stop()


def apply(gw, kind: str, spec: dict):
    return gw.api("POST", "/api/apply", json={"kind": kind, "spec": spec})


def budgeted_endpoint(gw, name: str, budget: dict, *deployments: tuple[str, str, dict]) -> dict:
    """An endpoint with a budget and its deployments (name, model, extra spec); returns its keys."""
    r = apply(gw, "endpoint", {"name": name, "budget": budget})
    assert r.status_code == 201, r.text
    keys = r.json()["keys"]
    for dep, model, extra in deployments:
        r = apply(gw, "deployment", {"name": dep, "endpoint_name": name, "model": model, **extra})
        assert r.status_code == 201, r.text
    return keys


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    return (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1) - now).total_seconds()


def rows(gw, endpoint: str) -> list[dict]:
    gw.api("GET", "/api/usage")  # flushes the usage writer
    with sqlite3.connect(gw.home / "modelyard.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from usage_records where endpoint = ? order by id", (endpoint,))]


def test_a_hosted_deployment_answers_until_the_day_budget_is_spent_then_429_until_midnight(gw):
    budgeted_endpoint(gw, "capped", {"usd_per_day": 2 * CALL_COST}, ("paid", "stub-paid", {}))
    client = gw.openai()
    first = client.chat.completions.with_raw_response.create(model="capped", **ASK)
    assert first.headers["x-modelyard-cost-usd"] == f"{CALL_COST:.8f}"
    assert float(first.headers["x-modelyard-budget-remaining-usd"]) == pytest.approx(2 * CALL_COST)
    second = client.chat.completions.with_raw_response.create(model="capped", **ASK)
    assert float(second.headers["x-modelyard-budget-remaining-usd"]) == pytest.approx(CALL_COST)

    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="capped", stream=stream, **ASK)
        err = exc.value
        assert err.status_code == 429 and err.code == "budget_exhausted" and err.type == "insufficient_quota"
        assert "usd_per_day" in err.message and f"${2 * CALL_COST:.4f}" in err.message and "'paid'" in err.message
        assert "locally keep answering" in err.message
        assert abs(int(err.response.headers["retry-after"]) - seconds_to_utc_midnight()) < 30
        assert err.response.headers["x-should-retry"] == "false"

    records = rows(gw, "capped")
    assert [r["status"] for r in records] == [200, 200, 429, 429]
    assert [r["error_code"] for r in records[2:]] == ["budget_exhausted"] * 2
    assert sum(r["cost_usd"] for r in records) == pytest.approx(2 * CALL_COST)
    r = gw.api("GET", "/api/endpoints/capped/router/budget").json()
    assert r["state"]["exhausted"] and r["spent_today_usd"] == pytest.approx(2 * CALL_COST)


def test_raising_the_limit_with_apply_lets_requests_through_at_once(gw):
    budgeted_endpoint(gw, "raised", {"usd_per_day": CALL_COST}, ("paid", "stub-paid", {}))
    client = gw.openai()
    client.chat.completions.create(model="raised", **ASK)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="raised", **ASK)
    r = apply(gw, "endpoint", {"name": "raised", "budget": {"usd_per_day": 3 * CALL_COST}})
    assert r.status_code == 200 and r.json()["action"] == "updated"
    assert client.chat.completions.create(model="raised", **ASK).choices[0].message.content


def test_a_per_key_limit_stops_one_key_while_the_other_key_goes_on(gw):
    keys = budgeted_endpoint(gw, "perkey", {"usd_per_month": 100, "per_key": {"usd_per_day": CALL_COST}},
                             ("paid", "stub-paid", {}))
    primary, secondary = gw.openai(keys["primary"]), gw.openai(keys["secondary"])
    primary.chat.completions.create(model="perkey", **ASK)
    with pytest.raises(openai.RateLimitError) as exc:
        primary.chat.completions.create(model="perkey", **ASK)
    assert "per_key.usd_per_day" in exc.value.message and "key " in exc.value.message
    assert secondary.chat.completions.create(model="perkey", **ASK).choices[0].message.content


def test_a_router_refuses_a_paid_tier_once_the_budget_is_spent_and_keeps_answering_from_a_free_one(gw):
    budgeted_endpoint(gw, "routed", {"usd_per_day": CALL_COST}, ("free", "stub-free", {}), ("paid", "stub-paid", {}))
    spec = {"name": "routed", "policy": "router", "tiers": ["free", "paid"], "budget": {"usd_per_day": CALL_COST},
            "router": {"strategy": "rules", "rules": [{"name": "hard", "when": {"keywords": ["hard"]}, "tier": "paid"}]}}
    r = apply(gw, "endpoint", spec)
    assert r.status_code == 200, r.text
    client = gw.openai()
    hard = {"model": "routed", "messages": [{"role": "user", "content": "a hard question"}], "max_tokens": 20}
    easy = {"model": "routed", "messages": [{"role": "user", "content": "an easy one"}], "max_tokens": 20}
    assert client.chat.completions.with_raw_response.create(**hard).headers["x-modelyard-deployment"] == "paid"
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(**hard)
    assert exc.value.code == "budget_exhausted" and "'paid'" in exc.value.message
    assert client.chat.completions.with_raw_response.create(**easy).headers["x-modelyard-deployment"] == "free"


def test_a_restarted_gateway_still_knows_what_was_spent_today(tmp_path, stub):
    home = tmp_path / "home"
    paid_catalog(home, stub.root)
    srv = start_server(home, "--no-defaults")
    try:
        budgeted_endpoint(srv, "capped", {"usd_per_day": CALL_COST}, ("paid", "stub-paid", {}))
        srv.openai().chat.completions.create(model="capped", **ASK)
    finally:
        srv.stop()  # flushes the usage records
    srv = start_server(home, "--no-defaults")
    try:
        with pytest.raises(openai.RateLimitError) as exc:
            srv.openai().chat.completions.create(model="capped", **ASK)
        assert exc.value.code == "budget_exhausted"
    finally:
        srv.stop()


@pytest.mark.parametrize("budget, param, words", [
    ({"usd_per_week": 5}, "spec.budget.usd_per_week", "Unrecognized"),
    ({"usd_per_day": -1}, "spec.budget.usd_per_day", "greater than or equal to 0"),
    ({"usd_per_day": "5 EUR"}, "spec.budget.usd_per_day", "5 EUR"),
    ({"per_key": {"usd_per_hour": 1}}, "spec.budget.per_key.usd_per_hour", "Unrecognized"),
    ({"usd_per_day": 5, "low_share": 1.5}, "spec.budget.low_share", "less than or equal to 1"),
])
def test_a_budget_in_a_bad_unit_is_a_400_naming_the_field_and_changes_nothing(gw, budget, param, words):
    name = "badbudget"
    if gw.api("GET", f"/api/endpoints/{name}").status_code == 404:
        assert apply(gw, "endpoint", {"name": name, "budget": {"usd_per_day": 1}}).status_code == 201
    r = apply(gw, "endpoint", {"name": name, "budget": budget})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert gw.api("GET", f"/api/endpoints/{name}").json()["budget"]["usd_per_day"] == 1
    # a new endpoint with the bad budget is not created either
    r = apply(gw, "endpoint", {"name": "neverbudget", "budget": budget})
    assert r.status_code == 400 and gw.api("GET", "/api/endpoints/neverbudget").status_code == 404


@pytest.mark.parametrize("cost, param", [
    ({"usd_per_instance_hour": -0.5}, "spec.cost.usd_per_instance_hour"),
    ({"usd_per_hour": 0.5}, "spec.cost.usd_per_instance_hour"),  # "missing": the message names the right field
    ({"usd_per_instance_hour": "cheap"}, "spec.cost.usd_per_instance_hour"),
])
def test_a_bad_local_cost_is_a_400_naming_the_field(gw, cost, param):
    if gw.api("GET", "/api/endpoints/costly").status_code == 404:
        assert apply(gw, "endpoint", {"name": "costly"}).status_code == 201
    r = apply(gw, "deployment", {"name": "local", "endpoint_name": "costly", "model": "gemma-3-270m", "cost": cost})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert gw.api("GET", "/api/endpoints/costly").json()["deployments"] == []


@pytest.mark.model
def test_a_spent_budget_leaves_the_local_deployment_answering_at_its_configured_cost(gw):
    rate = 36.0  # USD per instance-hour: a centi-cent per second, so the cost is easy to see
    budgeted_endpoint(gw, "mixed", {"usd_per_day": CALL_COST},
                      ("paid", "stub-paid", {}),
                      ("local", "gemma-3-270m", {"cost": {"usd_per_instance_hour": rate}}))
    r = gw.api("PATCH", "/api/endpoints/mixed", json={"traffic": {"paid": 100}})
    assert r.status_code == 200, r.text
    client = gw.openai()
    client.chat.completions.create(model="mixed", **ASK)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="mixed", **ASK)
    local = {"extra_headers": {"modelyard-deployment": "local"}, "model": "mixed",
             "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16,
             "temperature": 0}
    raw = client.chat.completions.with_raw_response.create(**local)
    assert raw.headers["x-modelyard-deployment"] == "local"
    assert raw.parse().choices[0].message.content
    overhead_ms = float(raw.headers["x-modelyard-overhead-ms"])
    time.sleep(0.1)
    record = rows(gw, "mixed")[-1]
    assert record["deployment"] == "local" and record["status"] == 200
    # busy seconds (the call's latency less the gateway's own time) at the configured hourly price
    busy_s = (record["latency_ms"] - overhead_ms) / 1000
    assert record["cost_usd"] > 0
    assert record["cost_usd"] == pytest.approx(rate * busy_s / 3600, rel=0.05, abs=rate * 0.005 / 3600)
    assert float(raw.headers["x-modelyard-cost-usd"]) == pytest.approx(record["cost_usd"], abs=1e-8)


def test_a_down_rating_does_not_buy_a_paid_answer_once_the_budget_is_spent(gw):
    budgeted_endpoint(gw, "rated", {"usd_per_day": CALL_COST}, ("free", "stub-free", {}), ("paid", "stub-paid", {}))
    spec = {"name": "rated", "policy": "router", "tiers": ["free", "paid"], "budget": {"usd_per_day": CALL_COST},
            "router": {"strategy": "rules", "rules": [{"name": "hard", "when": {"keywords": ["hard"]}, "tier": "paid"}]}}
    assert apply(gw, "endpoint", spec).status_code == 200
    client = gw.openai()
    easy = client.chat.completions.with_raw_response.create(
        model="rated", messages=[{"role": "user", "content": "an easy one"}], max_tokens=20)
    assert easy.headers["x-modelyard-deployment"] == "free"
    client.chat.completions.create(model="rated", messages=[{"role": "user", "content": "a hard one"}], max_tokens=20)

    r = gw.api("POST", "/v1/feedback", json={"response_id": easy.parse().id, "rating": -1})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["escalated_to"] is None and body["status"] == "answered"
    assert body["escalation_refused"]["code"] == "budget_exhausted" and "'paid'" in body["escalation_refused"]["message"]
    time.sleep(0.5)
    assert not [row for row in rows(gw, "rated") if row["route"].startswith("feedback:")]
    assert gw.api("GET", f"/v1/responses/{easy.parse().id}").json()["status"] == "answered"
