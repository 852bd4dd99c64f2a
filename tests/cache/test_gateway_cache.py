"""The response cache through HTTP: a real gateway, the official `openai`
client, a hosted deployment on the echo stub (its answer names the question,
so a replayed answer is recognisable), usage rows read from the database."""

from __future__ import annotations

import sqlite3

import openai
import pytest

from tests.cache.cache_helpers import PRICE, ask, cached_endpoint, calls, metric, raw, stub_gateway, usage_rows

def test_an_exact_hit_is_replayed_as_json_and_as_a_stream_at_zero_cost(gw, stub):
    cached_endpoint(gw, "exact", {"mode": "exact"})
    client = gw.openai()
    before = calls(stub)
    first = raw(client, "exact", **ask("What is the capital of France?"))
    assert first.headers["x-modelyard-cache"] == "miss"
    answer = first.parse()
    assert answer.choices[0].message.content == "answer to: What is the capital of France?"

    again = raw(client, "exact", **ask("What is the capital of France?"))
    assert again.headers["x-modelyard-cache"] == "hit"
    assert again.headers["x-modelyard-cache-similarity"] == "1.0000"
    assert float(again.headers["x-modelyard-cost-usd"]) == 0
    hit = again.parse()
    assert hit.choices[0].message.content == answer.choices[0].message.content
    assert hit.choices[0].finish_reason == "stop" and hit.id != answer.id
    assert hit.usage.prompt_tokens == 0 and hit.usage.completion_tokens == 0

    # The same question streamed: a proper SSE stream of the cached text, with a zero usage chunk.
    with client.chat.completions.with_streaming_response.create(
            model="exact", stream=True, stream_options={"include_usage": True},
            **ask("What is the capital of France?")) as response:
        assert response.headers["x-modelyard-cache"] == "hit"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 0
    assert calls(stub) == before + 1  # one generation for three answers

    rows = usage_rows(gw, "exact")
    assert [r["cache"] for r in rows] == ["miss", "hit", "hit"]
    assert rows[0]["cost_usd"] == pytest.approx(PRICE) and rows[0]["saved_usd"] == 0
    for row in rows[1:]:
        assert row["cost_usd"] == 0 and row["prompt_tokens"] == 0 and row["completion_tokens"] == 0
        assert row["saved_tokens"] == 30 and row["saved_usd"] == pytest.approx(PRICE)
        assert row["status"] == 200 and row["route"] == "cache"
    assert rows[2]["stream"] == 1
    assert metric(gw, "modelyard_cache_lookups_total", endpoint="exact", result="hit") == 2
    assert metric(gw, "modelyard_cache_saved_tokens_total", endpoint="exact") == 60
    assert metric(gw, "modelyard_cache_saved_usd_total", endpoint="exact") == pytest.approx(2 * PRICE)
    assert metric(gw, "modelyard_cache_entries", endpoint="exact") == 1


def test_a_streamed_miss_is_stored_and_served_to_a_plain_request(gw, stub):
    cached_endpoint(gw, "streamed", {"mode": "exact"})
    client = gw.openai()
    with client.chat.completions.with_streaming_response.create(model="streamed", stream=True,
                                                                 **ask("Name a colour.")) as response:
        assert response.headers["x-modelyard-cache"] == "miss"
        streamed = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    hit = raw(client, "streamed", **ask("Name a colour."))
    assert hit.headers["x-modelyard-cache"] == "hit"
    assert hit.parse().choices[0].message.content == streamed == "answer to: Name a colour."
    # plain completions are cached too
    first = client.completions.with_raw_response.create(model="streamed", prompt="Once upon", temperature=0, max_tokens=9)
    second = client.completions.with_raw_response.create(model="streamed", prompt="Once upon", temperature=0, max_tokens=9)
    assert (first.headers["x-modelyard-cache"], second.headers["x-modelyard-cache"]) == ("miss", "hit")
    assert second.parse().choices[0].text == "answer to: Once upon"


def test_only_repeatable_requests_are_cached_unless_the_client_opts_in(gw, stub):
    cached_endpoint(gw, "repeat", {"mode": "exact"})
    client = gw.openai()
    sampled = ask("Tell me a joke.", temperature=0.8)
    assert raw(client, "repeat", **sampled).headers["x-modelyard-cache"] == "bypass"
    assert raw(client, "repeat", **sampled).headers["x-modelyard-cache"] == "bypass"
    assert raw(client, "repeat", **ask("Tell me a joke.", temperature=None)).headers["x-modelyard-cache"] == "bypass"
    seeded = ask("Tell me a joke.", temperature=0.8, seed=42)
    assert [raw(client, "repeat", **seeded).headers["x-modelyard-cache"] for _ in range(2)] == ["miss", "hit"]
    opted = ask("Tell me a joke.", temperature=0.8, extra_headers={"x-modelyard-cache": "allow"})
    assert [raw(client, "repeat", **opted).headers["x-modelyard-cache"] for _ in range(2)] == ["miss", "hit"]
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
    assert raw(client, "repeat", **ask("What time is it?", tools=tools)).headers["x-modelyard-cache"] == "bypass"


def test_cache_control_no_cache_and_no_store(gw, stub):
    cached_endpoint(gw, "control", {"mode": "exact"})
    client = gw.openai()
    no_store = ask("Is water wet?", extra_headers={"cache-control": "no-store"})
    assert raw(client, "control", **no_store).headers["x-modelyard-cache"] == "miss"
    assert raw(client, "control", **ask("Is water wet?")).headers["x-modelyard-cache"] == "miss"  # nothing was stored
    assert raw(client, "control", **ask("Is water wet?")).headers["x-modelyard-cache"] == "hit"
    before = calls(stub)
    fresh = raw(client, "control", **ask("Is water wet?", extra_headers={"cache-control": "no-cache"}))
    assert fresh.headers["x-modelyard-cache"] == "miss" and calls(stub) == before + 1
    # A request aimed at one deployment wants that deployment's answer.
    aimed = raw(client, "control", **ask("Is water wet?", extra_headers={"modelyard-deployment": "main"}))
    assert aimed.headers["x-modelyard-cache"] == "bypass"


def test_failed_and_cut_answers_are_not_stored(gw, stub):
    cached_endpoint(gw, "failing", {"mode": "exact"})
    client = gw.openai()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="failing", **ask("Will this fail?", user="stub:status=500"))
    assert raw(client, "failing", **ask("Will this fail?")).headers["x-modelyard-cache"] == "miss"
    cut = raw(client, "failing", **ask("Will this be cut?", user="stub:finish=length"))
    assert cut.parse().choices[0].finish_reason == "length"
    assert raw(client, "failing", **ask("Will this be cut?")).headers["x-modelyard-cache"] == "miss"
    with client.chat.completions.with_streaming_response.create(model="failing", stream=True,
                                                                 **ask("Stream and cut?", user="stub:finish=length")) as response:
        list(response.parse())
    assert raw(client, "failing", **ask("Stream and cut?")).headers["x-modelyard-cache"] == "miss"


def test_scope_key_keeps_answers_to_each_key(gw, stub):
    cached_endpoint(gw, "perkey", {"mode": "exact", "scope": "key"})
    created = gw.api("POST", "/api/keys", json={"name": "other", "endpoint": "perkey"}).json()
    mine, theirs = gw.openai(), gw.openai(created["key"])
    assert raw(mine, "perkey", **ask("Secret?")).headers["x-modelyard-cache"] == "miss"
    assert raw(theirs, "perkey", **ask("Secret?")).headers["x-modelyard-cache"] == "miss"
    assert raw(theirs, "perkey", **ask("Secret?")).headers["x-modelyard-cache"] == "hit"


def test_bad_cache_settings_are_refused_naming_the_field(gw):
    r = gw.api("POST", "/api/endpoints", json={"name": "badcache", "cache": {"mode": "semantic", "similarity": 1.5}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache.similarity"
    r = gw.api("POST", "/api/apply", json={"kind": "endpoint", "spec": {"name": "badcache", "cache": {"mode": "fuzzy"}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "spec.cache.mode"
    r = gw.api("POST", "/api/endpoints", json={"name": "badcache", "cache": {"backend": "memcached://x"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache.backend"
    r = gw.api("POST", "/api/endpoints", json={"name": "badcache", "cache": {"ttl": "2 fortnights"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache.ttl"
    assert gw.api("GET", "/api/endpoints/badcache").status_code == 404

    cached_endpoint(gw, "patched", {"mode": "exact"})
    r = gw.api("PATCH", "/api/endpoints/patched", json={"cache": {"similarity": 0}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache.similarity"
    r = gw.api("PATCH", "/api/endpoints/patched", json={"cache": {"ttl": "1h"}})
    assert r.status_code == 200 and r.json()["cache"]["mode"] == "exact" and r.json()["cache"]["ttl"] == "1h"
    r = gw.api("GET", "/api/endpoints/patched/cache", params={"window": "3y"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "window"


def test_stats_and_clear_from_the_command_line(gw, stub):
    from typer.testing import CliRunner

    from modelyard.cli import app

    def cli(*args):
        result = CliRunner().invoke(app, list(args), env={**gw.env(), "COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.output

    cached_endpoint(gw, "stats", {"mode": "exact"})
    client = gw.openai()
    for question in ("One?", "Two?", "One?", "One?"):
        raw(client, "stats", **ask(question))
    body = gw.api("GET", "/api/endpoints/stats/cache").json()
    assert body["entries"] == 2 and body["hits"] == 2 and body["misses"] == 2 and body["hit_rate"] == 0.5
    assert body["saved_tokens"] == 60 and body["saved_usd"] == pytest.approx(2 * PRICE)
    assert body["memory_bytes"] > 0
    out = cli("cache", "stats", "stats")
    assert "50.0%" in out and "60 tokens" in out and "2 of 100,000" in out
    assert "deleted 2 cached answers" in cli("cache", "clear", "stats")
    assert gw.api("GET", "/api/endpoints/stats/cache").json()["entries"] == 0
    assert raw(client, "stats", **ask("One?")).headers["x-modelyard-cache"] == "miss"
    assert "deleted 0 cached answers" in cli("cache", "clear", "stats", "--older-than", "1h")
    r = gw.api("DELETE", "/api/endpoints/stats/cache", params={"older_than": "1 century"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "older_than"


def test_the_cache_survives_a_restart_and_drops_corrupt_entries(tmp_path, stub):
    home = tmp_path / "home"
    srv = stub_gateway(home, stub)
    try:
        cached_endpoint(srv, "durable", {"mode": "exact"})
        for q in ("Kept?", "Broken?"):
            assert raw(srv.openai(), "durable", **ask(q)).headers["x-modelyard-cache"] == "miss"
    finally:
        srv.stop()
    with sqlite3.connect(home / "cache" / "durable.db") as db:
        assert db.execute("select count(*) from entries").fetchone()[0] == 2
        db.execute("update entries set body = ? where query = 'Broken?'", (b"\x00garbage",))
    srv = stub_gateway(home, stub)
    try:
        client = srv.openai()
        kept = raw(client, "durable", **ask("Kept?"))
        assert kept.headers["x-modelyard-cache"] == "hit"
        assert kept.parse().choices[0].message.content == "answer to: Kept?"
        broken = raw(client, "durable", **ask("Broken?"))
        assert broken.headers["x-modelyard-cache"] == "miss"  # dropped, not served
        assert broken.parse().choices[0].message.content == "answer to: Broken?"
        assert metric(srv, "modelyard_cache_corrupt_entries_total", endpoint="durable") == 1
        assert raw(client, "durable", **ask("Broken?")).headers["x-modelyard-cache"] == "hit"  # stored afresh
    finally:
        srv.stop()


def test_an_unreachable_redis_never_fails_a_request(gw, stub):
    from tests.live_gateway import free_port

    cached_endpoint(gw, "noredis", {"mode": "exact", "backend": f"redis://127.0.0.1:{free_port()}/0"})
    client = gw.openai()
    for _ in range(3):
        r = raw(client, "noredis", **ask("Still there?"))
        assert r.headers["x-modelyard-cache"] == "unavailable"
        assert r.parse().choices[0].message.content == "answer to: Still there?"
    assert metric(gw, "modelyard_cache_backend_up", endpoint="noredis") == 0
    assert metric(gw, "modelyard_cache_errors_total", endpoint="noredis") >= 1
    assert metric(gw, "modelyard_cache_lookups_total", endpoint="noredis", result="unavailable") == 3
    assert "cache of endpoint noredis unavailable" in gw.log.read_text()
    body = gw.api("GET", "/api/endpoints/noredis/cache").json()
    assert body["available"] is False and body["unavailable"] == 3
    r = gw.api("DELETE", "/api/endpoints/noredis/cache")
    assert r.status_code == 503 and r.json()["error"]["code"] == "cache_unavailable"


def test_the_cache_block_in_a_spec_file(gw, tmp_path):
    from typer.testing import CliRunner

    from modelyard.cli import app

    def cli(*args):
        return CliRunner().invoke(app, list(args), env={**gw.env(), "COLUMNS": "200"})

    spec = tmp_path / "assistant.yml"
    spec.write_text("name: assistant\ncache:\n  mode: semantic\n  similarity: 0.9\n  ttl: 1h\n  max_entries: 500\n"
                    "  scope: key\n  backend: local\n")
    result = cli("apply", "-f", str(spec))
    assert result.exit_code == 0, result.output
    cache = gw.api("GET", "/api/endpoints/assistant").json()["cache"]
    assert cache == {"mode": "semantic", "similarity": 0.9, "ttl": "1h", "max_entries": 500, "scope": "key",
                     "backend": "local", "verify": "guards", "judge": None}  # verification is on by default
    shown = cli("get", "endpoint", "assistant", "-o", "yaml")
    assert shown.exit_code == 0 and "similarity: 0.9" in shown.output and "mode: semantic" in shown.output
    assert "unchanged" in cli("apply", "-f", str(spec)).output
    spec.write_text("name: assistant\ncache:\n  mode: semantic\n  similarity: 1.2\n")
    refused = cli("apply", "-f", str(spec))
    assert refused.exit_code != 0 and "cache.similarity" in refused.output and "(0, 1]" in refused.output
