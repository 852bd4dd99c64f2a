"""The router report: usage records with known costs go in through the store, exact numbers come out.

Then the same report through ``GET /api/endpoints/{name}/router/report``
and ``modelyard router report`` (table, ``--json`` and ``--plot``) against a
real gateway whose deployments are hosted cards on the local OpenAI stub.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from modelyard.catalog.card import ModelCard
from modelyard.errors import ModelyardError
from modelyard.telemetry.router_report import parse_window, router_report
from modelyard.serving.spec import EndpointSpec
from modelyard.store import UsageWriter

from tests.cards import hosted_model_card
from tests.cards import hosted_card
from tests.live_gateway import start_server, write_catalog
from tests.openai_stub import COMPLETION_TOKENS, PROMPT_TOKENS, start_stub_in_thread
from tests.store.conftest import any_db, db, postgres_url, sqlite_url  # noqa: F401 - fixtures

UTC = timezone.utc
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
LARGE_IN, LARGE_OUT = 2.5, 10.0
MINI_IN, MINI_OUT = 0.15, 0.6


def hosted(card_id: str, input_per_1m: float, output_per_1m: float) -> ModelCard:
    return hosted_model_card(card_id, price=(input_per_1m, output_per_1m))


def local(card_id: str, per_hour: float) -> ModelCard:
    return ModelCard(id=card_id, family="t", task="chat", format="gguf", license="none", context_length=8192,
                     source={"type": "local", "path": "/models/x.gguf"}, price={"per_instance_hour": per_hour})


CARDS = {"small": local("tiny-local", 0.02), "mini": hosted("mini-model", MINI_IN, MINI_OUT),
         "large": hosted("large-model", LARGE_IN, LARGE_OUT)}
ROUTER = EndpointSpec(name="assistant", policy="router", tiers=["small", "mini", "large"],
                      router={"strategy": "cascade", "threshold": -1.0})


def large(p: int, c: int) -> float:
    return (p * LARGE_IN + c * LARGE_OUT) / 1e6


def step(dep: str, p: int, c: int, cost: float, outcome: str) -> dict:
    return {"deployment": dep, "model": CARDS[dep].id, "prompt_tokens": p, "completion_tokens": c, "cost_usd": cost,
            "outcome": outcome}


def write(db, records: list[dict]) -> None:
    async def run() -> None:
        writer = UsageWriter(db)
        for r in records:
            writer.submit({"kind": "chat", **r})
        await writer.flush()
    asyncio.run(run())


def record(at: datetime, deployment: str | None, cost: float, p: int = 0, c: int = 0, tiers=None, **extra) -> dict:
    return {"endpoint": "assistant", "created_at": at, "deployment": deployment, "cost_usd": cost,
            "prompt_tokens": p, "completion_tokens": c, "tiers": tiers, **extra}


ESCALATED_COST = 0.0001 + large(110, 60)
SPECULATIVE_COST = 0.00005 + large(60, 30)
MINI_COST = (200 * MINI_IN + 100 * MINI_OUT) / 1e6


def router_records() -> list[dict]:
    h = lambda hours: NOW - timedelta(hours=hours)  # noqa: E731
    return [
        # the small tier answered
        record(h(1), "small", 0.0001, 100, 50, [step("small", 100, 50, 0.0001, "answered")], route="cascade:small"),
        # small was not good enough: large answered
        record(h(2), "large", ESCALATED_COST, 210, 100,
               [step("small", 100, 40, 0.0001, "escalated"), step("large", 110, 60, large(110, 60), "answered")],
               route="cascade:small>large"),
        # mini answered
        record(h(3), "mini", MINI_COST, 200, 100, [step("mini", 200, 100, MINI_COST, "answered")], route="rules:x>mini"),
        # a cache hit: no cost, the original's cost saved
        record(h(3.5), "small", 0.0, 100, 50, cache="hit", saved_usd=0.002, saved_tokens=150),
        # mini failed
        record(h(4), "mini", 0.0, tiers=[step("mini", 0, 0, 0.0, "error")], status=502, error_code="upstream_error"),
        # speculative: small streamed, large corrected it
        record(h(5), "small", SPECULATIVE_COST, 110, 50,
               [step("small", 50, 20, 0.00005, "corrected"), step("large", 60, 30, large(60, 30), "checked")],
               route="speculative:small+large"),
        # a mirrored copy and a feedback escalation: spend, not requests
        record(h(6), "large", 0.0005, 100, 50, route="mirror:large"),
        record(h(6), "large", 0.0003, 40, 20, [step("large", 40, 20, 0.0003, "answered")], route="feedback:large"),
        # outside the window, and another endpoint
        record(NOW - timedelta(hours=25), "large", 1.0, 1000, 1000),
        {**record(h(1), "large", 2.0, 1000, 1000), "endpoint": "other"},
    ]


def test_report_counts_spend_tier_mix_escalations_cache_and_savings_exactly(any_db):
    write(any_db, router_records())
    r = router_report(any_db, ROUTER, CARDS, parse_window("24h"), now=NOW, window_text="24h")

    assert (r["requests"], r["answered"], r["errors"]) == (6, 5, 1)
    spend = 0.0001 + ESCALATED_COST + MINI_COST + SPECULATIVE_COST + 0.0005 + 0.0003
    assert r["spend_usd"] == pytest.approx(spend, abs=1e-12)
    assert (r["mirror_spend_usd"], r["follow_up_spend_usd"]) == (pytest.approx(0.0005), pytest.approx(0.0003))
    assert [(t["deployment"], t["answers"], t["share"]) for t in r["tier_mix"]] == [
        ("small", 2, 0.4), ("mini", 1, 0.2), ("large", 1, 0.2), ("(cache)", 1, 0.2)]
    assert r["tier_mix"][0]["model"] == "tiny-local"
    assert r["tier_mix"][0]["spend_usd"] == pytest.approx(0.0001 + SPECULATIVE_COST, abs=1e-12)
    # two of the five requests the tiers answered went further than their first answer
    assert (r["escalations"], r["escalation_rate"]) == (2, 0.4)
    assert (r["cache_hits"], r["cache_saved_usd"]) == (1, pytest.approx(0.002))

    # everything to `large`: the answering step's tokens at large's card price
    assert r["top_tier"] == {"deployment": "large", "model": "large-model", "input_per_1m": LARGE_IN,
                             "output_per_1m": LARGE_OUT, "price_from": "card"}
    counterfactual = large(100 + 110 + 200 + 0 + 50, 50 + 60 + 100 + 0 + 20)
    assert counterfactual == pytest.approx(0.00345)
    compared = 0.0001 + ESCALATED_COST + MINI_COST + SPECULATIVE_COST + 0.0003  # not the mirror, not the cache hit
    assert r["counterfactual_usd"] == pytest.approx(counterfactual, abs=1e-12)
    assert r["savings_usd"] == pytest.approx(counterfactual - compared, abs=1e-12)
    assert r["savings_pct"] == pytest.approx((counterfactual - compared) / counterfactual * 100)

    # hourly series over the day: the same totals, each record in its hour
    assert r["bucket_s"] == 3600 and len(r["series"]) == 24
    assert sum(p["requests"] for p in r["series"]) == 6
    assert sum(p["spend_usd"] for p in r["series"]) == pytest.approx(spend, abs=1e-12)
    assert sum(p["counterfactual_usd"] for p in r["series"]) == pytest.approx(counterfactual, abs=1e-12)
    an_hour_ago = next(p for p in r["series"] if p["t"] == (NOW - timedelta(hours=1)).isoformat())
    assert an_hour_ago["tiers"] == {"small": 1} and an_hour_ago["spend_usd"] == pytest.approx(0.0001)


def test_a_shorter_window_sees_only_its_records(db):
    write(db, router_records())
    r = router_report(db, ROUTER, CARDS, parse_window("90m"), now=NOW)
    assert (r["requests"], r["spend_usd"]) == (1, pytest.approx(0.0001))
    assert [(t["deployment"], t["share"]) for t in r["tier_mix"]] == [("small", 1.0)]
    assert r["bucket_s"] == 300 and len(r["series"]) == 18


def test_a_split_endpoints_top_tier_is_its_priciest_deployment(db):
    spec = EndpointSpec(name="assistant", traffic={"blue": 100})
    cards = {"blue": hosted("cheap", 1.0, 2.0), "green": hosted("dear", 3.0, 6.0)}
    write(db, [record(NOW - timedelta(minutes=m), "blue", (10 + 40) / 1e6, 10, 20, route="split:blue") for m in (1, 2)])
    r = router_report(db, spec, cards, parse_window("15m"), now=NOW)
    assert r["top_tier"]["deployment"] == "green" and r["tiers"] == ["blue", "green"]
    assert r["counterfactual_usd"] == pytest.approx(2 * (10 * 3 + 20 * 6) / 1e6)
    assert r["savings_usd"] == pytest.approx(2e-4)
    assert r["savings_pct"] == pytest.approx(200 / 3)
    assert (r["escalations"], r["escalation_rate"]) == (0, 0.0)
    assert r["bucket_s"] == 300 and len(r["series"]) == 3


def test_a_local_top_tier_is_priced_at_its_observed_cost_per_token_or_left_unknown(db):
    spec = EndpointSpec(name="assistant", policy="router", tiers=["small", "big"],
                        router={"strategy": "cascade", "threshold": -1.0})
    cards = {"small": local("tiny", 0.02), "big": local("bigger", 0.2)}
    at = NOW - timedelta(minutes=10)
    write(db, [record(at, "small", 0.0001, 100, 100, [step("small", 100, 100, 0.0001, "answered")])])
    r = router_report(db, spec, cards, parse_window("1h"), now=NOW)
    assert r["top_tier"] is None and r["counterfactual_usd"] is None and r["savings_usd"] is None
    assert all(p["counterfactual_usd"] is None for p in r["series"])

    # big's own step: $0.001 for 200 tokens = $5 per 1M tokens, in or out
    big = {"deployment": "big", "model": "bigger", "prompt_tokens": 150, "completion_tokens": 50, "cost_usd": 0.001,
           "outcome": "answered"}
    write(db, [record(at, "big", 0.0011, 250, 150, [step("small", 100, 100, 0.0001, "escalated"), big])])
    r = router_report(db, spec, cards, parse_window("1h"), now=NOW)
    assert r["top_tier"] == {"deployment": "big", "model": "bigger", "input_per_1m": pytest.approx(5.0),
                             "output_per_1m": pytest.approx(5.0), "price_from": "observed"}
    assert r["counterfactual_usd"] == pytest.approx((200 + 200) * 5 / 1e6)
    assert r["savings_usd"] == pytest.approx(0.002 - 0.0012)


def test_feedback_ratings_per_tier_are_in_the_report(db):
    models = pytest.importorskip("modelyard.store.models")
    if not hasattr(models, "Feedback"):
        pytest.skip("no feedback table in this version")
    rows = [("small", 1), ("small", 1), ("small", -1), ("large", 1)]
    with db.engine.begin() as conn:
        conn.execute(insert(models.Feedback.__table__), [
            {"response_id": f"resp-{i}", "endpoint": "assistant", "tier": tier, "rating": rating,
             "created_at": NOW - timedelta(minutes=5)} for i, (tier, rating) in enumerate(rows)])
    r = router_report(db, ROUTER, CARDS, parse_window("1h"), now=NOW)
    assert r["feedback"] == [
        {"tier": "large", "ratings": 1, "positive": 1, "negative": 0, "positive_share": 1.0},
        {"tier": "small", "ratings": 3, "positive": 2, "negative": 1, "positive_share": pytest.approx(2 / 3)}]
    assert router_report(db, ROUTER, CARDS, parse_window("1h"), now=NOW + timedelta(hours=2))["feedback"] is None


def test_an_empty_window_is_zeros_not_errors(db):
    r = router_report(db, ROUTER, CARDS, parse_window("7d"), now=NOW)
    assert (r["requests"], r["spend_usd"], r["tier_mix"], r["escalation_rate"]) == (0, 0.0, [], 0.0)
    assert (r["counterfactual_usd"], r["savings_usd"], r["savings_pct"]) == (0.0, 0.0, None)
    assert r["bucket_s"] == 86400 and len(r["series"]) == 8  # June 8 (from noon) to June 15 (to noon)


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800),
                                           ("30d", 2592000), ("2w", 1209600), (" 6H ", 21600)])
def test_windows_are_a_number_and_a_unit(text, seconds):
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["7x", "d7", "0d", "", "1.5h", "-1d", "7 days", "400d", "15s"])
def test_a_window_in_a_bad_unit_is_a_clear_400(text):
    with pytest.raises(ModelyardError) as exc:
        parse_window(text)
    assert (exc.value.status, exc.value.param, exc.value.code) == (400, "window", "invalid_window")
    assert "e.g. 15m" in exc.value.message or "366 days" in exc.value.message


# --- through the API and the CLI ---------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    root, stop = start_stub_in_thread()
    home = tmp_path_factory.mktemp("report") / "home"
    write_catalog(home, hosted_card("stub-cheap", f"{root}/v1", price=(100.0, 200.0)),
                  hosted_card("stub-dear", f"{root}/v1", price=(1000.0, 4000.0)))
    srv = start_server(home, "--no-defaults")
    r = srv.api("POST", "/api/endpoints", json={"name": "shop"})
    assert r.status_code == 201, r.text
    for name, model in (("cheap", "stub-cheap"), ("dear", "stub-dear")):
        r = srv.api("POST", "/api/endpoints/shop/deployments", json={"name": name, "model": model})
        assert r.status_code == 201, r.text
    assert srv.api("PATCH", "/api/endpoints/shop", json={"traffic": {"cheap": 100}}).status_code == 200
    client = srv.openai()
    for _ in range(3):
        client.chat.completions.create(model="shop", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    yield srv
    srv.stop()
    stop()


CHEAP_CALL = (PROMPT_TOKENS * 100.0 + COMPLETION_TOKENS * 200.0) / 1e6  # $0.005
DEAR_CALL = (PROMPT_TOKENS * 1000.0 + COMPLETION_TOKENS * 4000.0) / 1e6  # $0.09


def test_the_report_route_answers_with_the_numbers_and_refuses_bad_windows(gw):
    r = gw.api("GET", "/api/endpoints/shop/router/report", params={"window": "1h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["endpoint"], body["window"], body["requests"]) == ("shop", "1h", 3)
    assert body["spend_usd"] == pytest.approx(3 * CHEAP_CALL)
    assert body["tier_mix"][0]["deployment"] == "cheap" and body["tier_mix"][0]["share"] == 1.0
    assert body["top_tier"]["deployment"] == "dear"
    assert body["counterfactual_usd"] == pytest.approx(3 * DEAR_CALL)
    assert body["savings_pct"] == pytest.approx((DEAR_CALL - CHEAP_CALL) / DEAR_CALL * 100)

    bad = gw.api("GET", "/api/endpoints/shop/router/report", params={"window": "7y"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "window"
    assert gw.api("GET", "/api/endpoints/nope/router/report").status_code == 404
    import httpx
    anonymous = httpx.get(gw.url + "/api/endpoints/shop/router/report")
    assert anonymous.status_code == 401


def cli(srv, *args: str):
    from modelyard.cli import app

    return CliRunner().invoke(app, list(args), env={**srv.env(), "COLUMNS": "200"})


def test_router_report_prints_a_table_json_and_a_png(gw, tmp_path):
    result = cli(gw, "router", "report", "shop", "--window", "1h")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "shop (split), last 1h" in out and "tier mix" in out
    assert f"${3 * CHEAP_CALL:,.4f}" in out  # spend
    assert f"${3 * DEAR_CALL:,.4f}" in out  # everything to `dear`
    assert f"({(DEAR_CALL - CHEAP_CALL) / DEAR_CALL * 100:.1f}%)" in out
    assert "cheap" in out and "100.0%" in out

    result = cli(gw, "router", "report", "shop", "--window", "1h", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["requests"] == 3

    png = tmp_path / "report.png"
    result = cli(gw, "router", "report", "shop", "--window", "24h", "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    bad = cli(gw, "router", "report", "shop", "--window", "1 fortnight")
    assert bad.exit_code == 1 and "window" in bad.output
